"""The paired bootstrap interval on cases with known answers."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from hpo.core.stats import bootstrap_diff_ci, shows_gain


def test_a_constant_difference_has_a_zero_width_interval() -> None:
    lo, hi = bootstrap_diff_ci([1.5, 2.5, 3.5], [1.0, 2.0, 3.0])
    assert lo == pytest.approx(0.5)
    assert hi == pytest.approx(0.5)


def test_the_interval_covers_the_mean_difference_and_excludes_zero_for_a_clear_gain() -> None:
    steered = [0.9, 0.8, 0.85, 0.95, 0.7, 0.9, 0.8, 0.75]
    baseline = [0.2, 0.3, 0.1, 0.4, 0.25, 0.2, 0.3, 0.35]
    lo, hi = bootstrap_diff_ci(steered, baseline)
    mean = sum(s - b for s, b in zip(steered, baseline, strict=True)) / len(steered)
    assert lo < mean < hi
    assert lo > 0


def test_a_noisy_zero_effect_straddles_zero() -> None:
    diffs = [0.3, -0.3, 0.2, -0.2, 0.1, -0.1, 0.25, -0.25]
    lo, hi = bootstrap_diff_ci(diffs, [0.0] * len(diffs))
    assert lo < 0 < hi


def test_unpaired_samples_are_refused() -> None:
    with pytest.raises(ValueError, match="same non-zero length"):
        bootstrap_diff_ci([1.0], [1.0, 2.0])


def test_the_interval_covers_a_known_mean_difference_about_95_percent_of_the_time() -> None:
    rng = random.Random(1)
    true_diff, covered, runs = 0.3, 0, 100
    for run in range(runs):
        baseline = [rng.gauss(0.0, 1.0) for _ in range(40)]
        steered = [b + true_diff + rng.gauss(0.0, 1.0) for b in baseline]
        lo, hi = bootstrap_diff_ci(steered, baseline, n_resamples=500, seed=run)
        covered += lo <= true_diff <= hi
    assert 88 <= covered <= 99, covered


def test_for_large_n_the_interval_matches_the_normal_interval() -> None:
    rng = random.Random(2)
    diffs = [rng.gauss(0.5, 2.0) for _ in range(400)]
    lo, hi = bootstrap_diff_ci(diffs, [0.0] * len(diffs), n_resamples=2000, seed=3)
    mean = statistics.fmean(diffs)
    half = 1.96 * statistics.stdev(diffs) / math.sqrt(len(diffs))
    assert lo == pytest.approx(mean - half, abs=0.1 * half)
    assert hi == pytest.approx(mean + half, abs=0.1 * half)


def test_a_gain_is_shown_only_by_an_interval_wholly_on_the_better_side_of_zero() -> None:
    assert shows_gain((0.0944, 0.3440), "maximize")  # the demo's held-out test interval
    assert not shows_gain((-0.008, 0.005), "maximize")  # sycophancy at 135M: noise
    assert not shows_gain((0.0, 0.2), "maximize")  # touching 0 is not distinguishable
    assert not shows_gain((-0.3, -0.1), "maximize")  # a real loss
    assert shows_gain((-0.3, -0.1), "minimize")
    assert not shows_gain((-0.1, 0.0), "minimize")
    with pytest.raises(ValueError, match="direction must be 'maximize' or 'minimize'"):
        shows_gain((0.1, 0.2), "up")
