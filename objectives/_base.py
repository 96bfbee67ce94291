"""The interface every objective kind implements, and the values it hands back."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

Row = dict[str, Any]
# Called after each scored batch with (step, running value); may raise optuna.TrialPruned.
Reporter = Callable[[int, float], None]


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

    @property
    def n(self) -> int:
        """Number of scored items."""
        return len(self.per_item)


class Objective(Protocol):
    """Turns a (steered) model and a split into a number with a declared direction."""

    kind: str
    direction: str
    required_columns: tuple[str, ...]

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
