"""The interface every objective kind implements, and the values it hands back."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

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
    """What scoring a split returns: the objective value plus what explains it."""

    value: float
    per_item: list[float]
    per_letter: dict[str, float] = field(default_factory=dict)
    # Kind-specific detail: generated texts, fluency measures, constraint values.
    extras: dict[str, Any] = field(default_factory=dict)
    # Named side metrics (`tokens`, `kl`, `perplexity`, ...), each a mean over its own items;
    # `metric_items` holds those items where they exist (for bootstrap intervals).
    metrics: dict[str, float] = field(default_factory=dict)
    metric_items: dict[str, list[float]] = field(default_factory=dict)

    @property
    def n(self) -> int:
        """Number of scored items."""
        return len(self.per_item)


class Objective(Protocol):
    """Turns a (steered) model and a split into a number with a declared direction.

    Capabilities the trial loop reads:
        forward_only: scoring only calls the model forward on whole batches (no `generate`, no
            KV cache of its own), so a stand-in that re-runs only the blocks above the steered
            layer can replace the model (`hpo.steering.residual`).
        constrained: the objective judges its own outputs (e.g. fluency) and turns that into
            Optuna constraints; it then implements `ConstrainedObjective` too.
    """

    kind: str
    direction: str
    required_columns: tuple[str, ...]

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

    def prepare(self, rows: Sequence[Row]) -> Any:
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
