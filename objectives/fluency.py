"""Fluency of generated text: perplexity under the unsteered model and a repetition measure."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import torch

from hpo.model.batching import pad_left


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
        with torch.inference_mode():
            logits = model(**inputs, use_cache=False).logits.float()
        logprobs = torch.log_softmax(logits[:, :-1], dim=-1)
        targets = inputs["input_ids"][:, 1:]
        token_lp = logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        width = inputs["input_ids"].shape[1]
        for row, i in enumerate(chunk):
            n = len(continuations[i])
            if n == 0:
                out.append(1.0)
                continue
            # logits at position t predict token t + 1: the continuation's last n targets
            nll = -token_lp[row, width - 1 - n :].mean().item()
            out.append(math.exp(nll))
    return out
