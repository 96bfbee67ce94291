"""Direction formulas against closed forms on synthetic activations: caa, pca, model_diff."""

from __future__ import annotations

import pytest
import torch

from hpo import TrialFailure
from hpo.core.directions import caa, model_diff, pca

H = 16


def _unit(seed: int) -> torch.Tensor:
    v = torch.randn(H, generator=torch.Generator().manual_seed(seed))
    return v / v.norm()


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


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


def test_model_diff_is_the_mean_of_finetuned_minus_the_mean_of_base() -> None:
    g = torch.Generator().manual_seed(8)
    base = (torch.randn(6, H, generator=g), torch.randn(6, H, generator=g))
    tuned = (base[0] + 0.5, base[1] + 0.5)
    assert torch.allclose(model_diff(base, tuned), torch.full((H,), 0.5), atol=1e-6)
