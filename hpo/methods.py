"""Steering methods: contrastive activations in, one direction per layer out."""

from __future__ import annotations

from collections.abc import Callable

import torch

from hpo.activations import ActivationCache
from hpo.errors import TrialFailure, UserError

Method = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def caa(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Contrastive activation addition: mean(positive) - mean(negative), `[pairs, H]` -> `[H]`."""
    return (positive - negative).mean(dim=0)


METHODS: dict[str, Method] = {"caa": caa}


def build_vector(
    cache: ActivationCache, method: str, aggregation: str, layer: int, alpha_scale: str
) -> torch.Tensor:
    """The vector added at alpha = 1 for one layer.

    `relative`: the unit direction sized to the layer's mean activation norm, so one alpha range
    means the same on every layer; `absolute`: the raw method vector (CAA's convention).
    """
    if method not in METHODS:
        raise UserError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    direction = METHODS[method](*cache.pair(aggregation, layer))
    if alpha_scale == "absolute":
        return direction
    norm = direction.norm()
    if not torch.isfinite(norm) or norm == 0:
        raise TrialFailure(f"{method} direction at layer {layer} has norm {float(norm)}")
    return direction / norm * cache.mean_norm(aggregation, layer)
