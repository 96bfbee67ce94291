"""Steering methods: contrastive activations in, one direction per layer out.

Every method reads the activation cache (`[pairs, H]` per layer and aggregation), so building a
trial's vector takes milliseconds and never re-runs the model:

- `caa`: mean(positive) - mean(negative).
- `pca`: first principal component of the centred paired differences, sign-aligned with the
  mean difference; its raw size is the mean difference's component along it.
- `probe`: the weight of a logistic regression separating positive from negative activations
  (`hpo.steering.probe`); its raw size is likewise the mean difference's component along it.
- `model_diff`: mean(finetuned) - mean(base) over the same texts (seed 001), from a second
  cache of the finetuned model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from hpo.core.errors import TrialFailure, UserError
from hpo.core.vocabulary import METHODS
from hpo.steering.activations import ActivationCache
from hpo.steering.probe import train_probe


def caa(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Contrastive activation addition: mean(positive) - mean(negative), `[pairs, H]` -> `[H]`."""
    return (positive - negative).mean(dim=0)


def along(direction: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """`direction` (any length) sized to `reference`'s component along it, sign kept."""
    unit = direction / direction.norm()
    return unit * (reference @ unit).abs()


def pca(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """First principal component of the centred paired differences, sign-aligned to their mean.

    Raises:
        TrialFailure: the differences do not vary (no principal direction).
    """
    diffs = (positive - negative).double()
    mean = diffs.mean(dim=0)
    _, s, vh = torch.linalg.svd(diffs - mean, full_matrices=False)
    # Below float32 rounding of the differences themselves: no direction to find.
    if s.numel() == 0 or s[0] <= 1e-5 * float(diffs.norm(dim=1).max()):
        raise TrialFailure("pca: the paired differences have no variance (too few pairs?)")
    pc = vh[0]
    if pc @ mean < 0:
        pc = -pc
    return along(pc, mean).float()


def model_diff(
    base: tuple[torch.Tensor, torch.Tensor], finetuned: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """mean(finetuned) - mean(base) over the same texts (both completions of every pair)."""
    return torch.cat(finetuned).mean(dim=0) - torch.cat(base).mean(dim=0)


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
        if method not in METHODS:
            raise UserError(f"method must be one of {list(METHODS)}, got {method!r}")
        pos, neg = self.cache.pair(aggregation, layer)
        if method == "caa":
            return caa(pos, neg)
        if method == "pca":
            return pca(pos, neg)
        if method == "probe":
            key = (aggregation, layer)
            if key not in self._probes:
                fit = train_probe(pos, neg, self.seed)
                self._probes[key] = (along(fit.direction, caa(pos, neg)), fit.accuracy)
            vector, accuracy = self._probes[key]
            if accuracy is not None:
                self._accuracies.append(accuracy)
            return vector
        if self.finetuned is None:
            raise UserError(
                "method model_diff needs the finetuned model's activations: set "
                "model_diff.name_or_path, got none"
            )
        return model_diff((pos, neg), self.finetuned.pair(aggregation, layer))

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
            self.info["probe_accuracy"] = sum(self._accuracies) / len(self._accuracies)
        return out


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
