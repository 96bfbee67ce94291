"""Steering methods: contrastive activations in, one direction per layer out (the `method`
registry).

Every method reads the activation cache (`[pairs, H]` per layer and aggregation), so building a
trial's vector takes milliseconds and never re-runs the model:

- `caa`: mean(positive) - mean(negative) (contrastive activation addition: Rimsky et al.,
  "Steering Llama 2 via Contrastive Activation Addition", ACL 2024).
- `pca`: first principal component of the centred paired differences, sign-aligned with the
  mean difference; its raw size is the mean difference's component along it.
- `probe`: the weight of a logistic regression separating positive from negative activations
  (`hpo.steering.probe`, fitted by the context); its raw size is likewise the mean
  difference's component along it.
- `model_diff`: mean(finetuned) - mean(base) over the same texts (model diffing), from a
  second cache of the finetuned model.

The math uses tensor methods (torch itself only inside `pca`), so the config and the search
space validate method names without loading torch. Adding a method is one entry in `METHODS`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from hpo.core.errors import TrialFailure, named

if TYPE_CHECKING:
    from torch import Tensor


class DirectionContext(Protocol):
    """What some methods need beyond one layer's `(positive, negative)` activations; the
    vector builder (`hpo.steering.methods.VectorBuilder`) implements it per layer."""

    def probe(self, positive: Tensor, negative: Tensor) -> Tensor:
        """The layer's probe direction (fitted once, then cached), sized along `caa`."""
        ...

    def finetuned(self) -> tuple[Tensor, Tensor]:
        """The finetuned model's `(positive, negative)` activations at the same layer."""
        ...


@dataclass(frozen=True)
class Method:
    """One steering method.

    Attributes:
        name: the name in configs, params and steering.json.
        build: `(positive [pairs, H], negative [pairs, H], context) -> direction [H]`.
    """

    name: str
    build: Callable[[Tensor, Tensor, DirectionContext], Tensor]

    def __call__(self, positive: Tensor, negative: Tensor, context: DirectionContext) -> Tensor:
        """The raw direction at one layer (the `absolute` scale)."""
        return self.build(positive, negative, context)


def caa(positive: Tensor, negative: Tensor) -> Tensor:
    """Contrastive activation addition: mean(positive) - mean(negative), `[pairs, H]` -> `[H]`."""
    return (positive - negative).mean(dim=0)


def along(direction: Tensor, reference: Tensor) -> Tensor:
    """`direction` (any length) sized to `reference`'s component along it, sign kept."""
    unit = direction / direction.norm()
    return unit * (reference @ unit).abs()


def pca(positive: Tensor, negative: Tensor) -> Tensor:
    """First principal component of the centred paired differences, sign-aligned to their mean.

    Raises:
        TrialFailure: the differences do not vary (no principal direction).
    """
    import torch

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


def model_diff(base: tuple[Tensor, Tensor], finetuned: tuple[Tensor, Tensor]) -> Tensor:
    """mean(finetuned) - mean(base) over the same texts (both completions of every pair)."""
    import torch

    return torch.cat(finetuned).mean(dim=0) - torch.cat(base).mean(dim=0)


METHODS: dict[str, Method] = {
    "caa": Method("caa", lambda pos, neg, _ctx: caa(pos, neg)),
    "pca": Method("pca", lambda pos, neg, _ctx: pca(pos, neg)),
    "probe": Method("probe", lambda pos, neg, ctx: ctx.probe(pos, neg)),
    "model_diff": Method(
        "model_diff", lambda pos, neg, ctx: model_diff((pos, neg), ctx.finetuned())
    ),
}


def method_named(name: str) -> Method:
    """The method `name`.

    Raises:
        UserError: an unknown name (the message lists the known ones).
    """
    return named("method", METHODS, name)
