"""The `probe` method: a logistic-regression direction trained in torch on cached activations.

Positive completions are class 1, negative ones class 0. A seeded share of the *pairs* is held
out (both sides of a pair stay together) so the recorded accuracy is measured on pairs the probe
never saw. Features are standardised for the fit; the direction is mapped back to activation
space (`w / std`), so adding it moves activations towards the positive class.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

HOLDOUT = 0.25
L2 = 1e-2
MAX_ITER = 100


@dataclass(frozen=True)
class ProbeFit:
    """A trained probe: its direction in activation space and its held-out accuracy."""

    direction: torch.Tensor
    accuracy: float | None
    n_train: int
    n_heldout: int


def split_pairs(n: int, seed: int, holdout: float = HOLDOUT) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded pair indices `(train, heldout)`; nothing is held out below 4 pairs."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_held = math.ceil(n * holdout) if n >= 4 else 0
    return order[n_held:], order[:n_held]


def train_probe(
    positive: torch.Tensor, negative: torch.Tensor, seed: int = 0, holdout: float = HOLDOUT
) -> ProbeFit:
    """Fit an L2-regularised logistic regression with L-BFGS (deterministic on CPU).

    Args:
        positive: `[pairs, H]` activations of the positive completions.
        negative: `[pairs, H]` activations of the negative completions, same pair order.
        seed: seeds the held-out pair split.
        holdout: share of pairs held out to measure accuracy.
    """
    train, held = split_pairs(positive.shape[0], seed, holdout)
    x = torch.cat([positive[train], negative[train]]).double()
    y = torch.cat([torch.ones(len(train)), torch.zeros(len(train))]).double()
    mean, std = x.mean(dim=0), x.std(dim=0).clamp_min(1e-6)
    z = (x - mean) / std
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=MAX_ITER, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = z @ w + b
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
        loss = loss + 0.5 * L2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    w_raw, b_raw = w.detach() / std, b.detach()
    accuracy = None
    if len(held):
        xh = torch.cat([positive[held], negative[held]]).double()
        yh = torch.cat([torch.ones(len(held)), torch.zeros(len(held))])
        predicted = ((xh - mean) @ w_raw + b_raw > 0).float()
        accuracy = float((predicted == yh).float().mean())
    return ProbeFit(w_raw.float(), accuracy, len(train), len(held))


@dataclass(frozen=True)
class ProbeBank:
    """Many probes fitted at once, one per unit (a layer's residual stream, or one head).

    Attributes:
        weight: `[units, D]` directions in activation space (`logit = x @ w + bias`).
        bias: `[units]` intercepts in activation space.
        accuracy: `[units]` held-out accuracies (NaN when nothing was held out).
    """

    weight: torch.Tensor
    bias: torch.Tensor
    accuracy: torch.Tensor


def train_probes(
    positive: torch.Tensor, negative: torch.Tensor, seed: int = 0, holdout: float = HOLDOUT
) -> ProbeBank:
    """`train_probe` for `units` independent probes in one batched L-BFGS fit.

    The same model (standardised features, L2-regularised logistic regression, the same seeded
    held-out pairs) for every unit; the summed loss separates by unit, so its optimum is every
    unit's own. One fit of all 270 heads of a 30-layer model takes about a second where fitting
    them one by one takes minutes.

    Args:
        positive: `[units, pairs, D]` activations of the positive completions.
        negative: `[units, pairs, D]`, same pair order.
        seed: seeds the held-out pair split.
        holdout: share of pairs held out to measure accuracy.
    """
    train, held = split_pairs(positive.shape[1], seed, holdout)
    x = torch.cat([positive[:, train], negative[:, train]], dim=1).double()
    y = torch.cat([torch.ones(len(train)), torch.zeros(len(train))]).double()
    mean, std = x.mean(dim=1, keepdim=True), x.std(dim=1, keepdim=True).clamp_min(1e-6)
    z = (x - mean) / std
    units, dim = x.shape[0], x.shape[2]
    w = torch.zeros(units, dim, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(units, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=MAX_ITER, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = torch.einsum("und,ud->un", z, w) + b[:, None]
        bce = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, y.expand_as(logits), reduction="none"
        )
        loss = (bce.mean(dim=1) + 0.5 * L2 * (w * w).sum(dim=1)).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    w_raw = w.detach() / std[:, 0]
    b_raw = b.detach() - (mean[:, 0] * w_raw).sum(dim=1)
    accuracy = torch.full((units,), float("nan"))
    if len(held):
        xh = torch.cat([positive[:, held], negative[:, held]], dim=1).double()
        yh = torch.cat([torch.ones(len(held)), torch.zeros(len(held))])
        predicted = (torch.einsum("und,ud->un", xh, w_raw) + b_raw[:, None] > 0).float()
        accuracy = (predicted == yh).float().mean(dim=1)
    return ProbeBank(w_raw.float(), b_raw.float(), accuracy)
