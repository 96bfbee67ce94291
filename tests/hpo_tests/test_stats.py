"""The paired bootstrap interval on cases with known answers."""

from __future__ import annotations

import pytest

from hpo.stats import bootstrap_diff_ci


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
