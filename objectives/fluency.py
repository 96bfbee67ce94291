"""Fluency of generated text: perplexity under the unsteered model and a repetition measure."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch

from hpo.model.batching import pad_left
from hpo.model.decoding import keep_logits
from hpo.model.kv import scratch_cache, with_cache


def distinct2(ids: Sequence[int]) -> float:
    """Unique bigrams / bigrams of a token sequence (1.0 = no repeated bigram)."""
    bigrams = list(itertools.pairwise(ids))
    return len(set(bigrams)) / len(bigrams) if bigrams else 1.0


def perplexities(
    model: Any,
    pad_id: int,
    prompts: Sequence[Sequence[int]],
    continuations: Sequence[Sequence[int]],
    batch_size: int = 16,
) -> list[float]:
    """Per-item perplexity of each continuation given its prompt, under `model` as it is now.

    Call it outside any steering context to measure the unsteered model's surprise.
    """
    device = next(model.parameters()).device
    out: list[float] = []
    for start in range(0, len(prompts), batch_size):
        chunk = range(start, min(start + batch_size, len(prompts)))
        seqs = [list(prompts[i]) + list(continuations[i]) for i in chunk]
        inputs = pad_left(seqs, pad_id, device)
        longest = max(len(continuations[i]) for i in chunk)
        # Only the positions that predict a continuation token make logits.
        keep = keep_logits(model, longest + 1) if longest else {}
        with torch.inference_mode():
            logits = model(**inputs, use_cache=False, **keep).logits.float()
        logprobs = torch.log_softmax(logits[:, -(longest + 1) : -1], dim=-1)
        targets = inputs["input_ids"][:, -longest:] if longest else inputs["input_ids"][:, :0]
        token_lp = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        for row, i in enumerate(chunk):
            n = len(continuations[i])
            if n == 0:
                out.append(1.0)
                continue
            # the last `longest` targets; this row's continuation is the last n of them
            nll = -token_lp[row, longest - n :].mean().item()
            out.append(math.exp(nll))
    return out


def perplexities_from_prefix(
    model: Any,
    pad_id: int,
    prompts: Sequence[Sequence[int]],
    batches: Sequence[Sequence[int]],
    prefixes: Sequence[Any],
    continuations: Sequence[Sequence[int]],
) -> list[float]:
    """`perplexities` from each batch's unsteered prompt-prefix KV cache (`prefixes[b]`: the
    cache of batch `batches[b]`'s left-padded prompts without their last column, as
    `hpo.model.decoding.prompt_prefix` builds it; None for a batch of one-token prompts).

    The fluency pass is unsteered, so the prompts' states are exactly the cached ones: only
    each prompt's last token and its continuation run, and only their logits are made. Equal to
    `perplexities` up to float rounding. Call it outside any steering context.
    """
    device = next(model.parameters()).device
    out = [1.0] * len(prompts)
    for batch, prefix in zip(batches, prefixes, strict=True):
        conts = [list(continuations[i]) for i in batch]
        n = max(len(c) for c in conts)
        if n == 0:
            continue
        if prefix is None:
            full = perplexities(model, pad_id, [prompts[i] for i in batch], conts, len(batch))
            for i, value in zip(batch, full, strict=True):
                out[i] = value
            continue
        prompt = pad_left([prompts[i] for i in batch], pad_id, device)
        tail = torch.tensor([c + [pad_id] * (n - len(c)) for c in conts], device=device)
        real = torch.tensor([[1] * len(c) + [0] * (n - len(c)) for c in conts], device=device)
        # Column j (0 = the prompt's last token) predicts continuation token j.
        ids = torch.cat([prompt["input_ids"][:, -1:], tail[:, : n - 1]], dim=1)
        mask = torch.cat([prompt["attention_mask"], real[:, : n - 1]], dim=1)
        positions = prompt["position_ids"][:, -1:] + torch.arange(n, device=device)
        with torch.inference_mode(), scratch_cache(prefix) as cache:
            logits = model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=positions,
                **with_cache(model, cache),
                use_cache=True,
            ).logits.float()
        token_lp = torch.log_softmax(logits, dim=-1).gather(-1, tail.unsqueeze(-1)).squeeze(-1)
        for row, i in enumerate(batch):
            k = len(conts[row])
            if k:
                out[i] = math.exp(-token_lp[row, :k].mean().item())
    return out
