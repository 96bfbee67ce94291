"""Per-head directions and probes from the activation cache (CREST's "cognitive heads").

For every head of every layer: the CAA direction (mean difference of its slice of the attention
output projection's input), its mean activation norm (the unit of relative alpha), and a
logistic-regression probe with its held-out accuracy. All heads' probes of one aggregation are
fitted in one batched fit (`train_probes`), once per worker; a trial then only ranks heads and
slices vectors, which takes milliseconds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from hpo.core.errors import TrialFailure, UserError
from hpo.steering.activations import ActivationCache
from hpo.steering.probe import ProbeBank, train_probes


@dataclass(frozen=True)
class HeadFits:
    """Every head's statistics at one aggregation (`[layers, heads, ...]`)."""

    caa: torch.Tensor
    norm: torch.Tensor
    probes: ProbeBank

    @property
    def accuracy(self) -> torch.Tensor:
        """`[layers, heads]` held-out probe accuracy."""
        return self.probes.accuracy.view(self.norm.shape)


@dataclass
class HeadBank:
    """Builds head-site vectors, head selections and gate probes from the activation cache.

    Attributes:
        cache: activations recorded with heads.
        n_heads: attention heads per layer.
        head_dim: width of one head's slice.
        seed: seeds the probes' held-out split.
    """

    cache: ActivationCache
    n_heads: int
    head_dim: int
    seed: int = 0
    _fits: dict[str, HeadFits] = field(default_factory=dict, repr=False)

    def fits(self, aggregation: str) -> HeadFits:
        """Every head's CAA direction, norm and probe at one aggregation (fitted once)."""
        if aggregation not in self._fits:
            pos, neg = self.cache.head_pair(aggregation)  # [pairs, layers, width]
            shape = (pos.shape[0], pos.shape[1], self.n_heads, self.head_dim)
            pos, neg = pos.reshape(shape), neg.reshape(shape)
            caa = (pos - neg).mean(dim=0)  # [layers, heads, head_dim]
            norm = torch.cat([pos, neg]).norm(dim=-1).mean(dim=0)  # [layers, heads]
            units = (shape[1] * shape[2], shape[0], shape[3])
            probes = train_probes(
                pos.permute(1, 2, 0, 3).reshape(units),
                neg.permute(1, 2, 0, 3).reshape(units),
                self.seed,
            )
            self._fits[aggregation] = HeadFits(caa, norm, probes)
        return self._fits[aggregation]

    def select(
        self, aggregation: str, ratio: float | None = None, top_k: int | None = None
    ) -> dict[int, tuple[int, ...]]:
        """The top heads of all layers by probe accuracy: `top_k` of them, else the top
        `ratio` (at least one). Ties go to the earlier layer and head.

        Raises:
            UserError: neither or a bad `ratio` / `top_k`.
        """
        accuracy = self.fits(aggregation).accuracy
        total = accuracy.numel()
        if top_k is not None:
            if not 1 <= top_k <= total:
                raise UserError(f"heads_top_k must lie in [1, {total}], got {top_k}")
            k = top_k
        elif ratio is not None and 0.0 < ratio <= 1.0:
            k = max(1, round(ratio * total))
        else:
            raise UserError(f"head_ratio must lie in (0, 1], got {ratio}")
        score = torch.nan_to_num(accuracy.flatten(), nan=-1.0)
        order = torch.sort(-score, stable=True).indices[:k].tolist()
        chosen: dict[int, list[int]] = {}
        for flat in sorted(order):
            chosen.setdefault(flat // self.n_heads, []).append(flat % self.n_heads)
        return {layer: tuple(heads) for layer, heads in chosen.items()}

    def vectors(
        self, aggregation: str, heads: dict[int, tuple[int, ...]], alpha_scale: str
    ) -> dict[int, torch.Tensor]:
        """Per layer, the head-space vector `[heads * head_dim]` added at alpha = 1: each chosen
        head's CAA direction (`relative`: unit length times the head's mean activation norm),
        zero elsewhere.

        Raises:
            TrialFailure: a chosen head's direction is zero or not finite.
        """
        fits = self.fits(aggregation)
        out = {}
        for layer, chosen in heads.items():
            vector = torch.zeros(self.n_heads, self.head_dim)
            for h in chosen:
                direction = fits.caa[layer, h]
                if alpha_scale == "relative":
                    norm = float(direction.norm())
                    if not math.isfinite(norm) or norm == 0:
                        raise TrialFailure(f"caa direction of head {h} at layer {layer} is {norm}")
                    direction = direction / norm * fits.norm[layer, h]
                vector[h] = direction
            out[layer] = vector.flatten()
        return out

    def head_probes(
        self, aggregation: str, heads: dict[int, tuple[int, ...]]
    ) -> dict[tuple[int, int], tuple[torch.Tensor, float]]:
        """The probe gate's `(weight, bias)` of every chosen head."""
        probes = self.fits(aggregation).probes
        return {
            (layer, h): (
                probes.weight[layer * self.n_heads + h],
                float(probes.bias[layer * self.n_heads + h]),
            )
            for layer, chosen in heads.items()
            for h in chosen
        }

    def accuracies(self, aggregation: str, heads: dict[int, tuple[int, ...]]) -> list[float]:
        """Held-out probe accuracy of every chosen head."""
        accuracy = self.fits(aggregation).accuracy
        return [float(accuracy[layer, h]) for layer, chosen in heads.items() for h in chosen]


def layer_probes(cache: ActivationCache, aggregation: str, seed: int = 0) -> ProbeBank:
    """A probe per layer's block output at one aggregation (the residual site's probe gate)."""
    pos = cache.tensors[f"positive.{aggregation}"].transpose(0, 1)
    neg = cache.tensors[f"negative.{aggregation}"].transpose(0, 1)
    return train_probes(pos, neg, seed)
