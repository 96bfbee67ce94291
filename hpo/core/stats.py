"""Small statistics for honest numbers: a paired bootstrap interval of a mean difference, and
whether such an interval shows a gain."""

from __future__ import annotations

import random
from collections.abc import Sequence


def bootstrap_diff_ci(
    steered: Sequence[float],
    baseline: Sequence[float],
    n_resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(steered - baseline) over paired items."""
    if len(steered) != len(baseline) or not steered:
        raise ValueError(
            f"paired samples must have the same non-zero length, got {len(steered)} "
            f"and {len(baseline)}"
        )
    diffs = [s - b for s, b in zip(steered, baseline, strict=True)]
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_resamples))
    tail = (1 - level) / 2
    lo = means[int(tail * n_resamples)]
    hi = means[min(int((1 - tail) * n_resamples), n_resamples - 1)]
    return lo, hi


def shows_gain(interval: Sequence[float], direction: str) -> bool:
    """Whether a 95% interval of (steered - baseline) lies wholly on the better side of 0.

    `direction` is the score's (`maximize` or `minimize`). An interval touching 0 shows no gain:
    the winner is not distinguishable from the unsteered model.
    """
    lo, hi = interval
    if direction == "maximize":
        return lo > 0.0
    if direction == "minimize":
        return hi < 0.0
    raise ValueError(f"direction must be 'maximize' or 'minimize', got {direction!r}")


def spread(values: Sequence[float]) -> float:
    """Population standard deviation of one item's repeated measurements (0 for one value)."""
    if not values:
        raise ValueError("spread needs at least one value, got none")
    mean = sum(values) / len(values)
    return (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
