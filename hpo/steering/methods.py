"""The vector builder: a trial's vectors from the activation cache(s), through the method
registry (`hpo.core.directions.METHODS`), remembering fitted probes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hpo.core.directions import along, caa, method_named, model_diff, pca
from hpo.core.errors import TrialFailure, UserError
from hpo.core.record import PROBE_ACCURACY_ATTR
from hpo.steering.activations import ActivationCache
from hpo.steering.probe import train_probe

__all__ = ["VectorBuilder", "along", "build_vector", "caa", "model_diff", "pca"]


@dataclass
class VectorBuilder:
    """Builds a trial's vectors from the activation cache(s), remembering fitted probes.

    Attributes:
        cache: the steered model's activations.
        finetuned: the finetuned model's activations (method `model_diff` only).
        seed: seeds the probe's held-out split.
        info: scalars about the last build (e.g. `probe_accuracy`), for trial user attrs.
    """

    cache: ActivationCache
    finetuned: ActivationCache | None = None
    seed: int = 0
    info: dict[str, float] = field(default_factory=dict)
    _probes: dict[tuple[str, int], tuple[torch.Tensor, float | None]] = field(
        default_factory=dict, repr=False
    )
    _accuracies: list[float] = field(default_factory=list, repr=False)

    def direction(self, method: str, aggregation: str, layer: int) -> torch.Tensor:
        """The raw method vector at one layer (the `absolute` scale)."""
        build = method_named(method)
        pos, neg = self.cache.pair(aggregation, layer)
        return build(pos, neg, _LayerContext(self, aggregation, layer))

    def vector(self, method: str, aggregation: str, layer: int, alpha_scale: str) -> torch.Tensor:
        """The vector added at alpha = 1 for one layer.

        `relative`: the unit direction sized to the layer's mean activation norm, so one alpha
        range means the same on every layer; `absolute`: the raw method vector.
        """
        direction = self.direction(method, aggregation, layer)
        if alpha_scale == "absolute":
            return direction
        norm = direction.norm()
        if not torch.isfinite(norm) or norm == 0:
            raise TrialFailure(f"{method} direction at layer {layer} has norm {float(norm)}")
        return direction / norm * self.cache.mean_norm(aggregation, layer)

    def vectors(
        self, method: str, aggregation: str, layers: list[int], alpha_scale: str
    ) -> dict[int, torch.Tensor]:
        """One vector per steered layer; `info` describes this build."""
        self.info, self._accuracies = {}, []
        out = {layer: self.vector(method, aggregation, layer, alpha_scale) for layer in layers}
        if self._accuracies:
            # Mean held-out accuracy over the steered layers' probes.
            self.info[PROBE_ACCURACY_ATTR] = sum(self._accuracies) / len(self._accuracies)
        return out


@dataclass
class _LayerContext:
    """`hpo.core.directions.DirectionContext` at one layer and aggregation of a builder."""

    builder: VectorBuilder
    aggregation: str
    layer: int

    def probe(self, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
        b, key = self.builder, (self.aggregation, self.layer)
        if key not in b._probes:
            fit = train_probe(positive, negative, b.seed)
            b._probes[key] = (along(fit.direction, caa(positive, negative)), fit.accuracy)
        vector, accuracy = b._probes[key]
        if accuracy is not None:
            b._accuracies.append(accuracy)
        return vector

    def finetuned(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.builder.finetuned is None:
            raise UserError(
                "method model_diff needs the finetuned model's activations: set "
                "model_diff.name_or_path, got none"
            )
        return self.builder.finetuned.pair(self.aggregation, self.layer)


def build_vector(
    cache: ActivationCache,
    method: str,
    aggregation: str,
    layer: int,
    alpha_scale: str,
    finetuned: ActivationCache | None = None,
) -> torch.Tensor:
    """The vector added at alpha = 1 for one layer (see `VectorBuilder.vector`)."""
    return VectorBuilder(cache, finetuned).vector(method, aggregation, layer, alpha_scale)
