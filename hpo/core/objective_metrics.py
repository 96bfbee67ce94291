"""Named metrics of a trial: the objective's score plus side metrics, each with a direction.

`task.objective.metrics` lists what the study optimizes: empty means the score alone; two or more
names make a multi-objective study (the first is the main value shown and compared to the
baseline). A name is `score`, a side metric with a known direction (`kl`, `tokens`, ...) or
`name:direction` for a metric an objective kind reports under its own name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hpo.core.config import DIRECTIONS, ObjectiveConfig
from hpo.core.errors import UserError

SCORE = "score"
# Side metrics and the direction in which each one is better.
KNOWN_DIRECTIONS = {
    "kl": "minimize",
    "tokens": "minimize",
    "perplexity": "minimize",
    "distinct2": "maximize",
    "text_quality": "maximize",
    "accuracy": "maximize",
}


@dataclass(frozen=True)
class Metric:
    """One optimized metric: its name and whether higher or lower is better."""

    name: str
    direction: str

    @property
    def sign(self) -> int:
        """+1 when higher is better, -1 when lower is better."""
        return 1 if self.direction == "maximize" else -1


def direction_of(name: str, objective: ObjectiveConfig) -> str | None:
    """The declared direction of a metric name (None when unknown)."""
    if name == SCORE:
        return objective.direction
    return KNOWN_DIRECTIONS.get(name)


def study_metrics(objective: ObjectiveConfig) -> list[Metric]:
    """The metrics a study optimizes, in order (the first is the main value).

    Raises:
        UserError: an unknown name without a direction, a bad direction, a duplicate, or `kl`
            while the KL measurement is disabled.
    """
    out: list[Metric] = []
    for entry in objective.metrics or [SCORE]:
        name, _, declared = str(entry).partition(":")
        name = name.strip()
        direction = declared.strip() or direction_of(name, objective)
        if direction is None:
            raise UserError(
                f"task.objective.metrics: {name!r} has no known direction; write "
                f"'{name}:maximize' or '{name}:minimize' (known: {[SCORE, *KNOWN_DIRECTIONS]})"
            )
        if direction not in DIRECTIONS:
            raise UserError(
                f"task.objective.metrics: direction of {name!r} must be one of "
                f"{list(DIRECTIONS)}, got {direction!r}"
            )
        if any(m.name == name for m in out):
            raise UserError(f"task.objective.metrics must not repeat a name, got {name!r} twice")
        if name == "kl" and not objective.kl.enabled:
            raise UserError(
                "task.objective.metrics names kl but task.objective.kl.enabled is false"
            )
        out.append(Metric(name, direction))
    return out


def is_multi(objective: ObjectiveConfig) -> bool:
    """Whether the study has more than one objective."""
    return len(study_metrics(objective)) > 1


def metric_values(value: float, metrics: dict[str, float]) -> dict[str, float]:
    """Every named metric of a scored split: `score` first, then the side metrics."""
    return {SCORE: value, **metrics}


def pick_values(values: dict[str, float], metrics: list[Metric], kind: str) -> list[float]:
    """The study's objective values, in the order of `metrics`.

    Raises:
        UserError: a metric the objective kind did not report.
    """
    missing = [m.name for m in metrics if m.name not in values]
    if missing:
        raise UserError(
            f"task.objective.metrics names {missing[0]!r}, which objective kind {kind!r} does "
            f"not report; it reports {sorted(values)}"
        )
    return [float(values[m.name]) for m in metrics]


def trial_metrics(attrs: dict[str, Any]) -> dict[str, float]:
    """The named metrics a trial recorded (user attribute `metrics`)."""
    recorded = attrs.get("metrics")
    return dict(recorded) if isinstance(recorded, dict) else {}
