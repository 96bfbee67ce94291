"""KL divergence of the steered model's next-token distributions from the unsteered model's.

A side metric of every trial and a fluency guard for any objective kind: a direction that changes
what the model predicts on neutral text far more than needed shows up here even when the task's
score looks fine. The unsteered side is computed once per worker and split (`build_reference`):
each neutral prompt's greedy unsteered continuation is fixed, and the unsteered log-probabilities
at every continuation position (the prompt's last token up to the EOS prediction) are kept. A
trial then runs one teacher-forced forward pass per batch under its steering; when its steering
starts at the prompt's end (`prompt_end_onward`, `generated`) and no trigger gate reads the
prompt, that pass starts from each batch's unsteered prompt-prefix KV cache (built once with
`build_reference(..., prefix=True)`) and runs only the prompt's last token and the continuation.

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
from hpo.model.kv import scratch_cache, with_cache


@dataclass
class KLBatch:
    """One batch: teacher-forced inputs, the padded prompt width, and the unsteered side."""

    inputs: dict[str, torch.Tensor]
    prompt_width: int
    counted: torch.Tensor  # bool [batch, positions]: continuation positions that count
    reference: torch.Tensor  # float32 [counted positions, vocab]: unsteered log-probs
    prefix: Any = None  # the prompts' unsteered KV cache but their last column (None: off)
    # The unsteered log-probs computed from `prefix` as trials reusing it compute them, so
    # alpha = 0 gives exactly 0 on that path too.
    prefix_reference: torch.Tensor | None = None


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


def _reuses_prefix(batch: KLBatch, handle: Any) -> bool:
    """Whether the active steering leaves `batch.prefix` as the unsteered model computed it."""
    if (
        handle is None
        or batch.prefix_reference is None
        or not handle.app.positions_rule.reuses_prompt_prefix
    ):
        return False
    gate = handle.app.gate
    return gate is None or not gate.trigger


def _continuation_logprobs(
    model: Any, batch: KLBatch, handle: Any = None, reuse: bool = False
) -> torch.Tensor:
    """Log-probs at the counted continuation positions, under `model` as it is now (`reuse`:
    from `batch.prefix`)."""
    width = batch.counted.shape[1]
    if handle is not None:
        # Positions `prompt_end_onward` / `generated` mean the same as during generation.
        handle.prompt_length = batch.prompt_width
    try:
        with torch.inference_mode():
            if reuse:
                # The prompt's last token predicts continuation token 0: run from there on.
                start = batch.prompt_width - 1
                with scratch_cache(batch.prefix) as cache:
                    logits = model(
                        input_ids=batch.inputs["input_ids"][:, start:],
                        attention_mask=batch.inputs["attention_mask"],
                        position_ids=batch.inputs["position_ids"][:, start:],
                        **with_cache(model, cache),
                        use_cache=True,
                        **_keep(model, width),
                    ).logits
            else:
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
    prefix: bool = False,
) -> KLReference:
    """Generate each prompt's unsteered greedy continuation and keep its log-probs. Unsteered.

    `prefix`: also keep each batch's prompt-prefix KV cache for trials that can reuse it.
    """
    from hpo.model.decoding import generate_ids, prompt_prefix

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
        if prefix:
            batch.prefix = prompt_prefix(model, prompt)
            if batch.prefix is not None:
                batch.prefix_reference = _continuation_logprobs(model, batch, reuse=True)
        batches.append(batch)
    return KLReference(batches, len(prompts_ids))


def kl_per_prompt(model: Any, reference: KLReference, handle: Any = None) -> list[float]:
    """KL(steered || unsteered) of each prompt, with whatever steering is active on `model`.

    Pass the active `SteeringHandle` so position-restricted steering starts where the prompt
    ends, as it does during generation.
    """
    out: list[float] = []
    for batch in reference.batches:
        reuse = _reuses_prefix(batch, handle)
        steered = _continuation_logprobs(model, batch, handle, reuse)
        unsteered = batch.prefix_reference if reuse else batch.reference
        assert unsteered is not None
        p = steered.exp()
        terms = torch.where(p > 0, p * (steered - unsteered), torch.zeros_like(p))
        per_position = terms.sum(dim=-1).clamp(min=0.0)  # rounding can leave -1e-9
        counts = batch.counted.sum(dim=1).tolist()
        for chunk in torch.split(per_position, counts):
            out.append(float(chunk.mean()) if len(chunk) else 0.0)
    return out
