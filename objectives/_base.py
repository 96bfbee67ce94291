"""The interface every objective kind implements, and the values it hands back."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from hpo.core.config import TaskConfig

Row = dict[str, Any]


class Reporter(Protocol):
    """Called after each scored batch; may raise optuna.TrialPruned.

    `step` is the batch index and `value` the running mean so far; `items` maps a stable id of
    every unit scored in this batch (the same ids in every trial) to its value, for pruners that
    compare trials item by item (Wilcoxon). Kinds that cannot name items leave it `None`.
    """

    def __call__(
        self, step: int, value: float, items: Mapping[int, float] | None = None
    ) -> None: ...


@dataclass(frozen=True)
class ContrastivePair:
    """One training pair: the same prompt with the behaviour's positive and negative completion."""

    prompt: str
    positive: str
    negative: str


@dataclass
class ScoreResult:
    """What scoring a split returns: the objective value plus what explains it.

    The optional fields are kind-specific (None where a kind does not measure them).
    """

    value: float
    per_item: list[float]
    per_letter: dict[str, float] = field(default_factory=dict)
    # Named side metrics (`tokens`, `kl`, `perplexity`, ...), each a mean over its own items;
    # `metric_items` holds those items where they exist (for bootstrap intervals).
    metrics: dict[str, float] = field(default_factory=dict)
    metric_items: dict[str, list[float]] = field(default_factory=dict)
    # Choice kinds: the score of uniform answers (1 / n options), mean and per item; a baseline
    # below it is a format bias.
    chance: float | None = None
    chance_items: list[float] | None = None
    # Choice kinds: an item's own noise, the spread of its score over its option orders.
    item_noise: list[float] | None = None
    # Multiple choice: the share of items whose correct option scores highest, mean and per item.
    accuracy: float | None = None
    per_item_accuracy: list[float] | None = None
    # Generation: each prompt's continuation (token ids, text), the answer the scorer read in
    # it, its gold reference, and counted events (`n_unparsed`: answers that could not be read).
    continuations: list[list[int]] | None = None
    texts: list[str] | None = None
    extracted: list[str] | None = None
    references: list[str | None] | None = None
    counts: dict[str, int] | None = None
    # Set by the worker: the outputs' fluency measures (constrained kinds) and the constraint
    # values, feasible when every one is <= 0 (None: unconstrained).
    fluency: dict[str, float] | None = None
    constraints: dict[str, float] | None = None

    @property
    def n(self) -> int:
        """Number of scored items."""
        return len(self.per_item)


class PreparedSplit(Protocol):
    """A split as `Objective.prepare` returns it: tokenized once, reused by every trial.

    The fields every kind's split has, which the worker and export read:
        token_ids: each scored prompt's token ids (one per prompt, or per option order).
        prefix: per batch, the unsteered KV cache of its prompts but their last token (None:
            not built; the worker reuses it where the positions leave the prompt unsteered).
        reference: the unsteered outputs' fluency measures the constraints compare with
            (empty: the kind has no fluency guard).
        baseline: the unsteered result, when preparing already scored it (None: not scored).
    """

    @property
    def token_ids(self) -> list[list[int]]: ...

    @property
    def prefix(self) -> list[Any] | None: ...

    reference: dict[str, float]

    @property
    def baseline(self) -> ScoreResult | None: ...


class Objective(Protocol):
    """Turns a (steered) model and a split into a number with a declared direction.

    Capabilities the trial loop reads:
        forward_only: scoring only calls the model forward on whole batches (no `generate`, no
            KV cache of its own), so a stand-in that re-runs only the blocks above the steered
            layer can replace the model (`hpo.steering.residual`).
        constrained: the objective judges its own outputs (e.g. fluency) and turns that into
            Optuna constraints; it then implements `ConstrainedObjective` too.

    What else differs by kind is asked of the objective (`BaseObjective` has the defaults):
    `attribution` (layer selection), `bias_cause` (chance checks), `bundle_record` (export).
    """

    kind: str
    direction: str
    required_columns: tuple[str, ...]

    @property
    def attribution(self) -> tuple[str, str]:
        """What layer attribution differentiates (`hpo.steering.attribution`): the quantity
        (`letter` or `loglik` log-odds) and how a completion's tokens reduce (`sum`, `mean`)."""
        ...

    def bias_cause(self) -> str:
        """The likely cause of a baseline below chance and the task keys that change it."""
        ...

    def bundle_record(self) -> dict[str, Any] | None:
        """The kind's own section of an exported bundle's `steering.json` (None: none)."""
        ...

    @property
    def forward_only(self) -> bool:
        """Whether scoring only runs whole-batch forward passes (see the class docstring)."""
        ...

    @property
    def constrained(self) -> bool:
        """Whether trials carry the objective's own constraints (`ConstrainedObjective`)."""
        ...

    def train_pairs(self, rows: Sequence[Row]) -> list[ContrastivePair]:
        """Contrastive pairs used to build steering vectors."""
        ...

    def prepare(self, rows: Sequence[Row]) -> PreparedSplit:
        """Tokenize a split once, in length-sorted batches, for repeated scoring."""
        ...

    def precompute(self, model: Any, prepared: Any, prefix: bool) -> None:
        """Compute once, unsteered, what every trial reuses (`prefix`: the prompt-prefix cache)."""
        ...

    def score(
        self,
        model: Any,
        prepared: Any,
        report: Reporter | None = None,
        reuse_prefix: bool = False,
    ) -> ScoreResult:
        """Score a prepared split with whatever steering is active on `model`."""
        ...

    def score_groups(
        self,
        model: Any,
        prepared: Any,
        reports: Sequence[Reporter | None],
        reuse_prefix: bool = False,
    ) -> list[ScoreResult]:
        """`score` for `len(reports)` trials in one batched pass: every batch holds each row
        once per trial, interleaved (row `r` is row `r // k` under trial `r % k`), each group
        steered by its own context (`hpo.steering.hooks.steer_groups`); `reports[g]` hears
        trial `g`'s batches. `score` is this with one trial."""
        ...


@runtime_checkable
class ConstrainedObjective(Protocol):
    """An objective whose trials carry its own constraints (feasible when every value <= 0)."""

    def fluency(self, model: Any, prepared: Any, result: ScoreResult) -> dict[str, float]:
        """Measures of the steered outputs in `result`, taken with `model` as it is now."""
        ...

    def constraints(self, prepared: Any, measured: dict[str, float]) -> dict[str, float]:
        """Optuna constraint values from the measures (feasible when every value <= 0)."""
        ...


class BaseObjective(ABC):
    """What every objective kind shares, and the defaults of what a kind may own.

    A kind subclasses it (one module per kind), implements the scoring and overrides what
    differs: the class attributes and class methods below are read before any model loads.
    """

    kind: str = ""
    required_columns: tuple[str, ...] = ()
    forward_only: bool = False
    # Fields the kind fills into the prompt template besides the row's own (e.g. `options`).
    prompt_fields: frozenset[str] = frozenset()
    # Whether a column role may list several columns (multiple choice's `choices`).
    lists_columns: bool = False

    def __init__(self, cfg: TaskConfig, tokenizer: Any) -> None:
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.direction = cfg.objective.direction

    @classmethod
    def check_task(cls, cfg: TaskConfig) -> None:
        """The kind's own checks of a task before any model loads (none by default).

        Raises:
            UserError: a setting the kind cannot score with.
        """
        return None

    @classmethod
    def check_rows(cls, cfg: TaskConfig, rows: Sequence[Row]) -> None:
        """The kind's own checks of a split's rows before any model loads (none by default).

        Raises:
            UserError: a row the kind cannot read.
        """
        return None

    @property
    def constrained(self) -> bool:
        """Whether trials carry the objective's own constraints (none by default)."""
        return False

    @property
    def attribution(self) -> tuple[str, str]:
        """`loglik` log-odds of the completions, summed over their tokens, by default."""
        return ("loglik", "sum")

    def bias_cause(self) -> str:
        """Empty by default: a kind without a chance level has no format bias to explain."""
        return ""

    def bundle_record(self) -> dict[str, Any] | None:
        """None by default: the bundle's common sections say all."""
        return None

    @abstractmethod
    def train_pairs(self, rows: Sequence[Row]) -> list[ContrastivePair]:
        """Contrastive pairs used to build steering vectors."""

    @abstractmethod
    def prepare(self, rows: Sequence[Row]) -> PreparedSplit:
        """Tokenize a split once, in length-sorted batches, for repeated scoring."""

    @abstractmethod
    def precompute(self, model: Any, prepared: Any, prefix: bool) -> None:
        """Compute once, unsteered, what every trial reuses (`prefix`: the prompt-prefix cache)."""

    @abstractmethod
    def score(
        self,
        model: Any,
        prepared: Any,
        report: Reporter | None = None,
        reuse_prefix: bool = False,
    ) -> ScoreResult:
        """Score a prepared split with whatever steering is active on `model`."""

    @abstractmethod
    def score_groups(
        self,
        model: Any,
        prepared: Any,
        reports: Sequence[Reporter | None],
        reuse_prefix: bool = False,
    ) -> list[ScoreResult]:
        """`score` for `len(reports)` trials in one batched pass (see `Objective.score_groups`)."""
