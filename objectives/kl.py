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

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from hpo.model.batching import pad_left
from hpo.model.decoding import keep_logits
from hpo.model.kv import RepeatedPrefixes, scratch_cache, with_cache


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
    # `prefix` with its rows repeated, for passes that score several trials at once.
    repeated: RepeatedPrefixes = field(default_factory=RepeatedPrefixes, repr=False)


@dataclass
class KLReference:
    """Every batch of one split's neutral prompts, ready for repeated trials."""

    batches: list[KLBatch]
    n_prompts: int


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
    model: Any, batch: KLBatch, handles: Sequence[Any] = (), reuse: bool = False, count: int = 1
) -> torch.Tensor:
    """Log-probs at the counted continuation positions, under `model` as it is now (`reuse`:
    from `batch.prefix`); `count` > 1: every row `count` times, interleaved (row `r` is prompt
    `r // count` under trial `r % count`, `handles[r % count]`)."""
    width = batch.counted.shape[1]
    inputs, counted = batch.inputs, batch.counted
    if count > 1:
        inputs = {k: v.repeat_interleave(count, dim=0) for k, v in inputs.items()}
        counted = counted.repeat_interleave(count, dim=0)
    live = [h for h in handles if h is not None]
    for handle in live:
        # Positions `prompt_end_onward` / `generated` mean the same as during generation.
        handle.prompt_length = batch.prompt_width
    try:
        with torch.inference_mode():
            if reuse:
                # The prompt's last token predicts continuation token 0: run from there on.
                start = batch.prompt_width - 1
                prefix = batch.repeated.get([batch.prefix], 0, count)
                with scratch_cache(prefix) as cache:
                    logits = model(
                        input_ids=inputs["input_ids"][:, start:],
                        attention_mask=inputs["attention_mask"],
                        position_ids=inputs["position_ids"][:, start:],
                        **with_cache(model, cache),
                        use_cache=True,
                        **keep_logits(model, width),
                    ).logits
            else:
                logits = model(**inputs, use_cache=False, **keep_logits(model, width)).logits
    finally:
        for handle in live:
            handle.prompt_length = None
    # The last `width` positions predict continuation tokens 0 .. width - 1.
    logprobs = torch.log_softmax(logits[:, -width:].float(), dim=-1)
    return logprobs[counted]


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
    return kl_per_prompt_groups(model, reference, [handle])[0]


def kl_per_prompt_groups(
    model: Any, reference: KLReference, handles: Sequence[Any]
) -> list[list[float]]:
    """`kl_per_prompt` for `len(handles)` trials in one pass: row group `g` of every batch runs
    under `handles[g]` (`hpo.steering.hooks.steer_groups`). The prompt prefix is reused only
    when every trial's steering leaves it unsteered."""
    count = len(handles)
    out: list[list[float]] = [[] for _ in range(count)]
    for batch in reference.batches:
        reuse = all(_reuses_prefix(batch, h) for h in handles)
        steered = _continuation_logprobs(model, batch, handles, reuse, count)
        unsteered = batch.prefix_reference if reuse else batch.reference
        assert unsteered is not None
        counts = batch.counted.sum(dim=1).tolist()
        if count > 1:
            chunks = torch.split(unsteered, counts)
            unsteered = torch.cat([c for c in chunks for _ in range(count)])
            counts = [c for c in counts for _ in range(count)]
        p = steered.exp()
        terms = torch.where(p > 0, p * (steered - unsteered), torch.zeros_like(p))
        per_position = terms.sum(dim=-1).clamp(min=0.0)  # rounding can leave -1e-9
        for r, chunk in enumerate(torch.split(per_position, counts)):
            out[r % count].append(float(chunk.mean()) if len(chunk) else 0.0)
    return out
