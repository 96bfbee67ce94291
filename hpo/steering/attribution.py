"""Attribution patching: each layer's first-order effect of adding its steering vector.

Steering layer `L` by `alpha` adds `alpha * v_L` to block `L`'s output at the steered positions.
To first order the objective's quantity `Q` then changes by `alpha * sum_t grad_t(Q) . v_L`, the
gradient taken in the unsteered model with respect to block `L`'s output at position `t`. One
forward and one backward pass per batch give that number for every layer at once: each block's
output gets `eps[L, row] * mask * v_L` added with `eps = 0` (the forward pass is the unsteered
one) and `dQ/d eps` is the effect, per layer and per sequence.

The quantity is the train pairs' log-odds of the positive over the negative completion, the
objective's own quantity read on the pairs the vectors are built from:

- `letter` (choice tasks): `log p(positive letter) - log p(negative letter)` at the answer
  position, the answer-letter log-odds a choice score is a monotone function of.
- `loglik` (multiple choice, generation): `log p(positive completion) - log p(negative one)`,
  teacher-forced over the completion tokens (`mean` per token or `sum`). Generation scores
  (sentiment of a greedy continuation) have no gradient and the KL from the unsteered model has
  zero gradient at `alpha = 0`; the pairs' log-odds is the differentiable quantity steering
  towards the positive continuations moves, and it cancels what moves every text alike.

Attribution patching is Nanda's linear approximation of activation patching ("Attribution
Patching: Activation Patching At Industrial Scale", 2023); ranking candidate steering layers by
it follows Venhoff et al., "Understanding Reasoning in Thinking Language Models via Steering
Vectors" (2025, github.com/FlyingPumba/steering-thinking-models), section 2.1.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hpo.core.errors import UserError
from hpo.core.positions import Positions, positions_named
from hpo.core.progress import progress
from hpo.model.batching import length_sorted_batches, pad_left
from hpo.model.decoding import keep_logits
from hpo.model.loading import LoadedModel
from objectives import ContrastivePair

QUANTITIES = ("letter", "loglik")


@dataclass(frozen=True)
class LayerEffect:
    """One layer's estimated effect of steering it.

    Attributes:
        layer: the steered block.
        effect: d(quantity)/d(alpha) at alpha = 0, mean over the train pairs (log-odds per unit
            alpha; positive = towards the positive completions).
        stderr: standard error of that mean over the pairs.
        abs_effect: mean over pairs of the absolute per-pair effect (Venhoff et al.'s
            ranking number).
    """

    layer: int
    effect: float
    stderr: float
    abs_effect: float


@dataclass(frozen=True)
class _Row:
    ids: list[int]
    prompt_len: int
    # Token positions (in `ids`) whose log-probability counts, each with its sign.
    targets: list[tuple[int, int, float]]  # (position predicting it, token id, weight)
    pair: int


def _rows(
    tokenizer: Any, pairs: Sequence[ContrastivePair], quantity: str, reduce: str
) -> list[_Row]:
    rows: list[_Row] = []
    for index, pair in enumerate(pairs):
        prompt = tokenizer.encode(pair.prompt)
        sides = {
            1.0: tokenizer.encode(pair.positive, add_special_tokens=False),
            -1.0: tokenizer.encode(pair.negative, add_special_tokens=False),
        }
        if not prompt or not all(sides.values()):
            raise UserError(f"train pair {index} has an empty prompt or completion")
        if quantity == "letter":
            # Both letters are read from the same logits: one sequence, the prompt alone.
            last = len(prompt) - 1
            targets = [(last, ids[0], sign) for sign, ids in sides.items()]
            rows.append(_Row(prompt, len(prompt), targets, index))
            continue
        for sign, ids in sides.items():
            weight = sign / len(ids) if reduce == "mean" else sign
            targets = [(len(prompt) - 1 + k, tok, weight) for k, tok in enumerate(ids)]
            rows.append(_Row(prompt + ids, len(prompt), targets, index))
    return rows


def _steered_mask(rows: Sequence[_Row], width: int, positions: Positions) -> torch.Tensor:
    """`[rows, width]` 1.0 where the trial's hooks would add the vector (left padding)."""
    mask = torch.zeros(len(rows), width)
    for r, row in enumerate(rows):
        offset = width - len(row.ids)
        mask[r, offset + positions.first(row.prompt_len) :] = 1.0
    return mask


@contextmanager
def _probes(
    blocks: nn.ModuleList,
    vectors: Mapping[int, torch.Tensor],
    eps: Mapping[int, torch.Tensor],
    mask: torch.Tensor,
) -> Iterator[None]:
    """Add `eps[L][row] * mask * v_L` to block `L`'s output; hooks removed in `finally`."""

    def make_hook(layer: int):  # type: ignore[no-untyped-def]
        def hook(_m: nn.Module, _args: tuple[Any, ...], output: Any) -> Any:
            hidden = output[0] if isinstance(output, tuple) else output
            vector = vectors[layer].to(device=hidden.device, dtype=hidden.dtype)
            scale = (eps[layer][:, None] * mask).to(hidden.dtype)
            steered = hidden + scale[:, :, None] * vector
            return (steered, *output[1:]) if isinstance(output, tuple) else steered

        return hook

    handles = [blocks[layer].register_forward_hook(make_hook(layer)) for layer in vectors]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _check(
    loaded: LoadedModel, pairs: Sequence[ContrastivePair], quantity: str, reduce: str
) -> None:
    if quantity not in QUANTITIES:
        raise UserError(f"quantity must be one of {list(QUANTITIES)}, got {quantity!r}")
    if reduce not in ("sum", "mean"):
        raise UserError(f"reduce must be one of ['sum', 'mean'], got {reduce!r}")
    if not pairs:
        raise UserError("attribution needs train pairs, got none")


def _row_values(
    model: Any, chunk: Sequence[_Row], inputs: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Each row's signed, weighted sum of its counted tokens' log-probabilities, `[rows]`."""
    width = inputs["input_ids"].shape[1]
    device = inputs["input_ids"].device
    picks = [
        (r, width - len(row.ids) + position, token, weight)
        for r, row in enumerate(chunk)
        for position, token, weight in row.targets
    ]
    first = min(p[1] for p in picks)
    # Only the positions that predict a counted token go through the LM head.
    keep = keep_logits(model, width - first)
    start = first if keep else 0
    index = torch.tensor([(r, pos - start) for r, pos, _, _ in picks], device=device)
    tokens = torch.tensor([t for _, _, t, _ in picks], device=device)
    weights = torch.tensor([w for _, _, _, w in picks], device=device)
    logits = model(**inputs, use_cache=False, **keep).logits
    chosen = torch.log_softmax(logits[index[:, 0], index[:, 1]].float(), dim=-1)
    terms = chosen.gather(1, tokens[:, None])[:, 0] * weights
    return torch.zeros(len(chunk), device=device).index_add(0, index[:, 0], terms)


def log_odds(
    loaded: LoadedModel,
    pairs: Sequence[ContrastivePair],
    quantity: str = "loglik",
    reduce: str = "sum",
    batch_size: int = 8,
) -> list[float]:
    """The quantity itself per pair, with whatever steering is active on the model (the real,
    not linearised, change is `log_odds` steered minus unsteered)."""
    _check(loaded, pairs, quantity, reduce)
    rows = _rows(loaded.tokenizer, pairs, quantity, reduce)
    out = [0.0] * len(pairs)
    pad = loaded.tokenizer.pad_token_id
    for batch in length_sorted_batches([len(r.ids) for r in rows], batch_size):
        chunk = [rows[i] for i in batch]
        inputs = pad_left([r.ids for r in chunk], pad, loaded.device)
        with torch.inference_mode():
            values = _row_values(loaded.model, chunk, inputs)
        for row, value in zip(chunk, values.tolist(), strict=True):
            out[row.pair] += value
    return out


def attribute_layers(
    loaded: LoadedModel,
    pairs: Sequence[ContrastivePair],
    vectors: Mapping[int, torch.Tensor],
    positions: str = "all",
    quantity: str = "loglik",
    reduce: str = "sum",
    batch_size: int = 8,
) -> list[LayerEffect]:
    """Every layer's first-order effect of adding its vector (see the module docstring).

    Args:
        loaded: the model (any dtype; the effect is accumulated in float32).
        pairs: contrastive train pairs; the quantity is their positive-vs-negative log-odds.
        vectors: the vector added at alpha = 1, per layer to attribute.
        positions: the steered positions (`all`, `prompt_end_onward`, `generated`).
        quantity: `letter` (first completion token, one sequence per pair) or `loglik`.
        reduce: `sum` or `mean` of the completion tokens' log-probabilities (`loglik`).
        batch_size: sequences per forward + backward pass.

    Raises:
        UserError: an unknown positions / quantity / reduce, no pairs or no vectors, a layer
            outside the model.
    """
    rule = positions_named(positions)
    _check(loaded, pairs, quantity, reduce)
    if not vectors:
        raise UserError("attribution needs at least one layer's vector, got none")
    bad = [layer for layer in vectors if not 0 <= layer < len(loaded.blocks)]
    if bad:
        raise UserError(f"layer must lie in [0, {len(loaded.blocks) - 1}], got {bad[0]}")
    rows = _rows(loaded.tokenizer, pairs, quantity, reduce)
    layers = sorted(vectors)
    per_pair = torch.zeros(len(pairs), len(layers), dtype=torch.float64)
    device, pad = loaded.device, loaded.tokenizer.pad_token_id
    batches = length_sorted_batches([len(r.ids) for r in rows], batch_size)
    for batch in progress(batches, "attributing layers"):
        chunk = [rows[i] for i in batch]
        inputs = pad_left([r.ids for r in chunk], pad, device)
        mask = _steered_mask(chunk, inputs["input_ids"].shape[1], rule).to(device)
        eps = {
            layer: torch.zeros(len(chunk), device=device, requires_grad=True) for layer in layers
        }
        with torch.enable_grad(), _probes(loaded.blocks, vectors, eps, mask):
            total = _row_values(loaded.model, chunk, inputs).sum()
            grads = torch.autograd.grad(total, [eps[layer] for layer in layers])
        for r, row in enumerate(chunk):
            for j, grad in enumerate(grads):
                per_pair[row.pair, j] += float(grad[r])
    out = []
    n = len(pairs)
    for j, layer in enumerate(layers):
        column = per_pair[:, j]
        std = float(column.std()) if n > 1 else 0.0
        out.append(
            LayerEffect(
                layer,
                float(column.mean()),
                std / math.sqrt(n) if n > 1 else 0.0,
                float(column.abs().mean()),
            )
        )
    return out
