"""The task schema: where a task's items are, which columns mean what, how to prompt and score."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from hpo.core.columns import check_columns
from hpo.core.config_rules import (
    BALANCES,
    DEFAULT_KL_MAX,
    DIRECTIONS,
    LOGLIKS,
    MAX_NEW_TOKENS,
    _at_least,
    _at_most,
    _check_choice,
)
from hpo.core.errors import UserError
from hpo.core.names import check_name
from hpo.core.prompting import INSTRUCTION, NONE, PLACEMENTS, PROMPTINGS, Instruction


@dataclass
class SplitConfig:
    """Sizes of the disjoint train / validation / test splits, drawn with `seed`."""

    train: int = 70
    validation: int = 40
    test: int = 40
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("train", "validation", "test"):
            _at_least(f"task.splits.{name}", getattr(self, name))


@dataclass
class FluencyConfig:
    """Feasibility of generated text, as Optuna constraints relative to the unsteered baseline.

    A trial is infeasible when its continuations' perplexity under the unsteered model exceeds
    `max_perplexity_ratio` x the baseline's, or their distinct-2 ratio falls below
    `min_distinct2_ratio` x the baseline's (repetitive text such as "wonderful wonderful ...").
    The absolute rules hold whatever the baseline: perplexity at most `max_perplexity`, distinct-2
    at least `min_distinct2`, and a text quality (share of dictionary-like words, markup such as
    `<strong>` counted against it) at least `min_text_quality`. An absolute bound the unsteered
    baseline itself breaks is left out (the ratios still hold), so the baseline is feasible.
    """

    enabled: bool = True
    max_perplexity_ratio: float = 3.0
    min_distinct2_ratio: float = 0.8
    max_perplexity: float = 20.0
    min_distinct2: float = 0.5
    min_text_quality: float = 0.8

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_perplexity_ratio) and self.max_perplexity_ratio > 1.0):
            raise UserError(
                "task.objective.fluency.max_perplexity_ratio must be a finite number > 1, "
                f"got {self.max_perplexity_ratio}"
            )
        if not 0.0 < self.min_distinct2_ratio <= 1.0:
            raise UserError(
                "task.objective.fluency.min_distinct2_ratio must lie in (0, 1], "
                f"got {self.min_distinct2_ratio}"
            )
        if not (math.isfinite(self.max_perplexity) and self.max_perplexity > 1.0):
            raise UserError(
                f"task.objective.fluency.max_perplexity must be > 1, got {self.max_perplexity}"
            )
        for name in ("min_distinct2", "min_text_quality"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise UserError(f"task.objective.fluency.{name} must lie in [0, 1], got {value}")


@dataclass
class KLConfig:
    """KL divergence of the steered model's next-token distributions from the unsteered model's.

    Measured on `n_prompts` neutral prompts from `source` (validation: the first `n_prompts`
    rows, held-out test: the next `n_prompts`), teacher-forced on the unsteered model's greedy
    `max_new_tokens`-token continuation; the value is KL(steered || unsteered) in nats, averaged
    over every continuation position (up to and including EOS) of every prompt. `max` (tau) makes
    `kl <= tau` an Optuna constraint: trials above it are infeasible and never exported. It is on
    by default (the damage guard of every objective kind); `max: null` or `enabled: false` turns
    it off.
    """

    enabled: bool = True
    source: str = "pkg://conf/data/neutral_prompts.jsonl"
    column: str = "prompt"
    n_prompts: int = 12
    max_new_tokens: int = 16
    max: float | None = DEFAULT_KL_MAX

    def __post_init__(self) -> None:
        _at_least("task.objective.kl.n_prompts", self.n_prompts)
        _at_least("task.objective.kl.max_new_tokens", self.max_new_tokens)
        if self.max is not None and not (math.isfinite(self.max) and self.max > 0):
            raise UserError(f"task.objective.kl.max must be a number > 0 or null, got {self.max}")


@dataclass
class ObjectiveConfig:
    """How a steered model is scored on the validation split."""

    kind: str = "choice_probability"
    direction: str = "maximize"
    balance: str = "swap"
    batch_size: int = 16
    scorer: str | None = None
    max_new_tokens: int = 32
    # Generation: cut each continuation at the first of these (and stop once every row has one).
    stop: list[str] = field(default_factory=list)
    # Scorer `regex`: the pattern to find (its first group, if any, is the extracted answer).
    pattern: str | None = None
    # multiple_choice: an option's log-likelihood summed over its tokens or averaged per token.
    loglik: str = "mean"
    fluency: FluencyConfig = field(default_factory=FluencyConfig)
    kl: KLConfig = field(default_factory=KLConfig)
    # What the study optimizes: `[]` = the objective's score alone; two or more names
    # (`[score, kl]`, `[accuracy, tokens:minimize]`) make a multi-objective study whose first
    # metric is the main value. Checked against the known metrics in `hpo.core.objective_metrics`.
    metrics: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        _check_choice("task.objective.direction", self.direction, DIRECTIONS)
        _check_choice("task.objective.balance", self.balance, BALANCES)
        _check_choice("task.objective.loglik", self.loglik, LOGLIKS)
        if any(not s for s in self.stop):
            raise UserError(f"task.objective.stop must not hold empty strings, got {self.stop}")
        _at_least("task.objective.batch_size", self.batch_size)
        _at_least("task.objective.max_new_tokens", self.max_new_tokens)
        _at_most("task.objective.max_new_tokens", self.max_new_tokens, MAX_NEW_TOKENS)


@dataclass
class TaskConfig:
    """A task is data: where the items are, which columns mean what, how to prompt and score."""

    name: str = "???"
    description: str = ""
    source: str = "???"
    # role -> column; `choices` may list columns, `answer` / `negative` may be a constant option
    # (an index or a letter): see `hpo.core.columns`.
    columns: dict[str, Any] = field(default_factory=dict)
    # Contrastive pairs from their own file (e.g. sentiment sentences) while `source` holds the
    # items to score; `null` = train pairs are a split of `source`.
    train_source: str | None = None
    train_columns: dict[str, str] = field(
        default_factory=lambda: {k: k for k in ("prompt", "positive", "negative")}
    )
    # Train pairs' prompts go through `prompt_template` (every field from the train row), the chat
    # template and the answer prefix, like the validation prompts; false = the raw prompt column.
    train_template: bool = True
    prompt_template: str = "{prompt}"
    chat_template: bool = False
    answer_prefix: str = " ("
    limit: int | None = None
    # Longer prompts are refused, not truncated (a cut prompt asks another question).
    max_prompt_tokens: int = 2048
    splits: SplitConfig = field(default_factory=SplitConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    # One sentence asking for the behaviour in words (`hpo.core.prompting`): every study then
    # scores a prompted baseline, and export compares steering with it. `system` = the chat
    # template's system message; `user` = before the user's text (also without a chat template).
    instruction: Any = None
    instruction_placement: str = "user"
    # Which prompt the objective renders: the study sets it per trial from
    # `search_space.prompting` (a task itself keeps `none`).
    prompting: str = NONE

    def __post_init__(self) -> None:
        # The name becomes a folder of the bundle (vectors/<name>/): a plain name only.
        if self.name != MISSING:  # the schema's own default, before a task fills it
            check_name("task.name", self.name)
        # Other fields ({question}, {options}) are checked against the data in `load_task`.
        if "{prompt}" not in self.prompt_template:
            raise UserError(
                f"task.prompt_template must contain {{prompt}}, got {self.prompt_template!r}"
            )
        _at_least("task.limit", self.limit)
        _at_least("task.max_prompt_tokens", self.max_prompt_tokens)
        check_columns(self.name, "columns", self.columns)
        check_columns(self.name, "train_columns", self.train_columns, plain=True)
        if self.instruction is not None and (
            not isinstance(self.instruction, str) or not self.instruction.strip()
        ):
            raise UserError(
                "task.instruction must be a non-empty string (one sentence) or null, got "
                f"{self.instruction!r}"
            )
        _check_choice("task.instruction_placement", self.instruction_placement, PLACEMENTS)
        _check_choice("task.prompting", self.prompting, PROMPTINGS)
        if self.prompting == INSTRUCTION and self.instruction is None:
            raise UserError("task.prompting=instruction needs a task.instruction, got null")

    @property
    def instructed(self) -> Instruction | None:
        """The task's instruction (None when it has none)."""
        if self.instruction is None:
            return None
        return Instruction(str(self.instruction).strip(), self.instruction_placement)

    def under(self, prompting: str) -> TaskConfig:
        """This task rendering its prompts under `prompting` (`none` or `instruction`)."""
        return dataclasses.replace(self, prompting=prompting)
