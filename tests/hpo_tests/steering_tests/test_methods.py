"""The vector builder: every method's vectors from synthetic activation caches, and its errors.
The direction formulas themselves are pinned in core_tests/test_directions.py, the probe in
test_probe.py."""

from __future__ import annotations

import pytest
import torch

from hpo import UserError
from hpo.steering.activations import ActivationCache
from hpo.steering.methods import VectorBuilder
from tests.hpo_tests.core_tests.test_directions import H, _cos, _unit


def _cache(pos: torch.Tensor, neg: torch.Tensor) -> ActivationCache:
    """A one-layer cache holding the same activations under every aggregation."""
    tensors = {
        f"{side}.{agg}": x[:, None, :]
        for side, x in (("positive", pos), ("negative", neg))
        for agg in ("last", "mean", "choice")
    }
    return ActivationCache(tensors, "synthetic")


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
