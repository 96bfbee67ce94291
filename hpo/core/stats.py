"""Small statistics for honest numbers: a paired bootstrap interval of a mean difference."""

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
