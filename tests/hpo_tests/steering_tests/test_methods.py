"""Steering methods against closed forms on synthetic activations, and the vector builder."""

from __future__ import annotations

import pytest
import torch

from hpo import TrialFailure, UserError
from hpo.steering.activations import ActivationCache
from hpo.steering.methods import VectorBuilder, caa, model_diff, pca
from hpo.steering.probe import split_pairs, train_probe

H = 16


def _unit(seed: int) -> torch.Tensor:
    v = torch.randn(H, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def _cache(pos: torch.Tensor, neg: torch.Tensor) -> ActivationCache:
    """A one-layer cache holding the same activations under every aggregation."""
    tensors = {
        f"{side}.{agg}": x[:, None, :]
        for side, x in (("positive", pos), ("negative", neg))
        for agg in ("last", "mean", "choice")
    }
    return ActivationCache(tensors, "synthetic")


def test_caa_equals_the_mean_difference() -> None:
    g = torch.Generator().manual_seed(0)
    pos, neg = torch.randn(30, H, generator=g), torch.randn(30, H, generator=g)
    assert torch.allclose(caa(pos, neg), pos.mean(0) - neg.mean(0), atol=1e-6)


def test_pca_recovers_a_planted_direction_sign_aligned_with_the_mean_difference() -> None:
    g = torch.Generator().manual_seed(1)
    planted = _unit(2)
    # Paired differences vary a lot along `planted` and a little elsewhere; their mean is
    # along +planted, so the principal component must point that way.
    size = 1.0 + 3.0 * torch.randn(200, 1, generator=g)
    neg = torch.randn(200, H, generator=g) * 2.0
    pos = neg + size * planted + 0.05 * torch.randn(200, H, generator=g)
    vector = pca(pos, neg)
    assert _cos(vector, planted) > 0.999
    # Raw size: the mean difference's component along the direction.
    mean = (pos - neg).mean(0)
    assert vector.norm().item() == pytest.approx(float(mean @ (vector / vector.norm())), rel=1e-5)
    flipped = pca(neg + (-size).abs() * planted, neg)  # all differences along +planted
    assert _cos(flipped, planted) > 0.99


def test_pca_refuses_differences_without_variance() -> None:
    neg = torch.randn(10, H, generator=torch.Generator().manual_seed(3))
    with pytest.raises(TrialFailure, match="no variance"):
        pca(neg + _unit(4), neg)


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


def test_model_diff_is_the_mean_of_finetuned_minus_the_mean_of_base() -> None:
    g = torch.Generator().manual_seed(8)
    base = (torch.randn(6, H, generator=g), torch.randn(6, H, generator=g))
    tuned = (base[0] + 0.5, base[1] + 0.5)
    assert torch.allclose(model_diff(base, tuned), torch.full((H,), 0.5), atol=1e-6)


@pytest.mark.parametrize("method", ["caa", "pca", "probe", "model_diff"])
def test_relative_vectors_have_the_layer_mean_norm_and_the_method_direction(method: str) -> None:
    g = torch.Generator().manual_seed(9)
    planted = _unit(10)
    neg = torch.randn(24, H, generator=g)
    pos = neg + (1.0 + torch.rand(24, 1, generator=g)) * planted
    cache = _cache(pos, neg)
    finetuned = _cache(pos + planted, neg + planted)
    builder = VectorBuilder(cache, finetuned)
    vectors = builder.vectors(method, "last", [0], "relative")
    assert vectors[0].norm().item() == pytest.approx(cache.mean_norm("last", 0), rel=1e-5)
    assert _cos(vectors[0], builder.direction(method, "last", 0)) == pytest.approx(1.0, abs=1e-5)
    assert _cos(vectors[0], planted) > 0.8
    assert ("probe_accuracy" in builder.info) == (method == "probe")


def test_model_diff_without_a_finetuned_cache_is_a_user_error() -> None:
    neg = torch.randn(4, H)
    with pytest.raises(UserError, match=r"model_diff\.name_or_path"):
        VectorBuilder(_cache(neg + 1, neg)).direction("model_diff", "last", 0)


def test_unknown_method_lists_the_known_ones() -> None:
    neg = torch.randn(4, H)
    with pytest.raises(UserError, match=r"method must be one of \['caa', 'pca'"):
        VectorBuilder(_cache(neg + 1, neg)).direction("magic", "last", 0)
