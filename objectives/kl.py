"""KL divergence of the steered model's next-token distributions from the unsteered model's.

A side metric of every trial and a fluency guard for any objective kind: a direction that changes
what the model predicts on neutral text far more than needed shows up here even when the task's
score looks fine. The unsteered side is computed once per worker and split (`build_reference`):
each neutral prompt's greedy unsteered continuation is fixed, and the unsteered log-probabilities
at every continuation position (the prompt's last token up to the EOS prediction) are kept. A
trial then runs one teacher-forced forward pass per batch under its steering.

Value: KL(steered || unsteered) in nats per position, averaged over the positions of a prompt,
then over prompts (so the per-prompt values average to the metric and can be bootstrapped).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from hpo.model.batching import pad_left


@dataclass
class KLBatch:
    """One batch: teacher-forced inputs, the padded prompt width, and the unsteered side."""

    inputs: dict[str, torch.Tensor]
    prompt_width: int
    counted: torch.Tensor  # bool [batch, positions]: continuation positions that count
    reference: torch.Tensor  # float32 [counted positions, vocab]: unsteered log-probs


@dataclass
class KLReference:
    """Every batch of one split's neutral prompts, ready for repeated trials."""

    batches: list[KLBatch]
    n_prompts: int


def _keep(model: Any, n: int) -> dict[str, int]:
    return (
        {"logits_to_keep": n}
        if "logits_to_keep" in inspect.signature(model.forward).parameters
        else {}
    )


def _continuation_logprobs(model: Any, batch: KLBatch, handle: Any = None) -> torch.Tensor:
    """Log-probs at the counted continuation positions, under `model` as it is now."""
    width = batch.counted.shape[1]
    if handle is not None:
        # Positions `prompt_end_onward` / `generated` mean the same as during generation.
        handle.prompt_length = batch.prompt_width
    try:
        with torch.inference_mode():
            logits = model(**batch.inputs, use_cache=False, **_keep(model, width)).logits
    finally:
        if handle is not None:
            handle.prompt_length = None
    # The last `width` positions predict continuation tokens 0 .. width - 1.
    logprobs = torch.log_softmax(logits[:, -width:].float(), dim=-1)
    return logprobs[batch.counted]


def build_reference(
    model: Any,
    tokenizer: Any,
    prompts_ids: Sequence[Sequence[int]],
    max_new_tokens: int,
    batch_size: int = 16,
) -> KLReference:
    """Generate each prompt's unsteered greedy continuation and keep its log-probs. Unsteered."""
    from hpo.model.decoding import generate_ids

    device = next(model.parameters()).device
    eos = tokenizer.eos_token_id
    batches: list[KLBatch] = []
    for start in range(0, len(prompts_ids), batch_size):
        chunk = [list(p) for p in prompts_ids[start : start + batch_size]]
        generated = generate_ids(model, tokenizer, chunk, max_new_tokens)
        steps = max(len(g) for g in generated)
        conts = [g + [tokenizer.pad_token_id] * (steps - len(g)) for g in generated]
        # Count up to and including the EOS prediction; positions after it predict padding.
        counts = [g.index(eos) + 1 if eos in g else len(g) for g in generated]
        prompt = pad_left(chunk, tokenizer.pad_token_id, device)
        width = prompt["input_ids"].shape[1]
        tail = torch.tensor([c[: steps - 1] for c in conts], dtype=torch.long, device=device)
        last_pos = prompt["position_ids"][:, -1:]
        offsets = torch.arange(1, steps, device=device).unsqueeze(0)
        inputs = {
            "input_ids": torch.cat([prompt["input_ids"], tail], dim=1),
            "attention_mask": torch.cat([prompt["attention_mask"], torch.ones_like(tail)], dim=1),
            "position_ids": torch.cat([prompt["position_ids"], last_pos + offsets], dim=1),
        }
        counted = torch.arange(steps, device=device).unsqueeze(0) < torch.tensor(
            counts, device=device
        ).unsqueeze(1)
        batch = KLBatch(inputs, width, counted, torch.empty(0))
        batch.reference = _continuation_logprobs(model, batch)
        batches.append(batch)
    return KLReference(batches, len(prompts_ids))


def kl_per_prompt(model: Any, reference: KLReference, handle: Any = None) -> list[float]:
    """KL(steered || unsteered) of each prompt, with whatever steering is active on `model`.

    Pass the active `SteeringHandle` so position-restricted steering starts where the prompt
    ends, as it does during generation.
    """
    out: list[float] = []
    for batch in reference.batches:
        steered = _continuation_logprobs(model, batch, handle)
        p = steered.exp()
        terms = torch.where(p > 0, p * (steered - batch.reference), torch.zeros_like(p))
        per_position = terms.sum(dim=-1).clamp(min=0.0)  # rounding can leave -1e-9
        counts = batch.counted.sum(dim=1).tolist()
        for chunk in torch.split(per_position, counts):
            out.append(float(chunk.mean()) if len(chunk) else 0.0)
    return out
