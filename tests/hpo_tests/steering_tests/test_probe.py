"""The `probe` method: a seeded, deterministic probe on synthetic activations, its held-out
accuracy, and the held-out pairs."""

from __future__ import annotations

import torch

from hpo.steering.probe import split_pairs, train_probe
from tests.hpo_tests.core_tests.test_directions import H, _cos, _unit


def test_probe_separates_separable_data_and_reports_held_out_accuracy() -> None:
    g = torch.Generator().manual_seed(5)
    planted = _unit(6)
    base = torch.randn(40, H, generator=g)
    base -= (base @ planted)[:, None] * planted  # separable: every pair differs along planted
    pos, neg = base + 1.5 * planted, base - 1.5 * planted
    fit = train_probe(pos, neg, seed=0)
    assert fit.n_heldout == 10 and fit.n_train == 30
    assert fit.accuracy == 1.0
    assert _cos(fit.direction, planted) > 0.9
    again = train_probe(pos, neg, seed=0)
    assert torch.equal(fit.direction, again.direction), "a probe must be deterministic"


def test_probe_is_at_chance_on_labels_unrelated_to_the_activations() -> None:
    g = torch.Generator().manual_seed(7)
    pos, neg = torch.randn(80, H, generator=g), torch.randn(80, H, generator=g)
    fit = train_probe(pos, neg, seed=0)
    assert fit.accuracy is not None and fit.accuracy < 0.75


def test_probe_holds_out_whole_pairs_and_none_below_four_pairs() -> None:
    train, held = split_pairs(10, seed=0)
    assert sorted(torch.cat([train, held]).tolist()) == list(range(10))
    assert len(held) == 3
    assert len(split_pairs(3, seed=0)[1]) == 0
