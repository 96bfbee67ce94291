"""Greedy generation that tells the steering hooks where the prompt ends, optionally from an
unsteered prompt prefix computed once (`prompt_prefix`) and reused by every trial."""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import torch

from hpo.core.prompting import Instruction, render
from hpo.model.batching import pad_left
from hpo.model.kv import mark_prompt, output_cache, scratch_cache, with_cache

if TYPE_CHECKING:
    from hpo.steering.hooks import SteeringHandle


def generate_ids(
    model: Any,
    tokenizer: Any,
    prompts_ids: list[list[int]],
    max_new_tokens: int,
    handle: SteeringHandle | None = None,
    use_cache: bool = True,
    stop_strings: list[str] | None = None,
    prefix: Any = None,
) -> list[list[int]]:
    """Greedy continuations (new token ids only) of left-padded prompts.

    When a steering `handle` is active its `prompt_length` is set to the padded prompt width, so
    `prompt_end_onward` / `generated` positions mean the same with and without the KV cache.
    With `stop_strings` a row stops (and is padded) once its text contains one, and the batch
    stops when every row has; cut each text at its first stop with `truncate_at_stop`.
    `prefix`: `prompt_prefix` of these same prompts (unsteered, computed once); generation then
    runs from a scratch copy of it, and it holds exactly its own states afterwards.
    """
    device = next(model.parameters()).device
    inputs = pad_left(prompts_ids, tokenizer.pad_token_id, device)
    inputs.pop("position_ids")  # generate derives them from the attention mask
    width = inputs["input_ids"].shape[1]
    if handle is not None:
        handle.prompt_length = width
    if prefix is not None and not use_cache:
        raise ValueError("a reused prompt prefix is a KV cache: it needs use_cache=True")
    kwargs: dict[str, Any] = {
        "max_new_tokens": max_new_tokens,
        "do_sample": False,
        "use_cache": use_cache,
        "pad_token_id": tokenizer.pad_token_id,
        **({"stop_strings": stop_strings, "tokenizer": tokenizer} if stop_strings else {}),
    }
    try:
        with torch.inference_mode():
            if prefix is None:
                out = model.generate(**inputs, **kwargs)
            else:
                with scratch_cache(prefix) as cache:
                    out = model.generate(**inputs, **with_cache(model, cache), **kwargs)
    finally:
        if handle is not None:
            handle.prompt_length = None
    return [row[width:].tolist() for row in out]


def prompt_prefix(model: Any, inputs: dict[str, torch.Tensor]) -> Any | None:
    """The KV cache of left-padded `inputs` (`pad_left`) without their last column, marked with
    the prompt's width (`hpo.model.kv.mark_prompt`); None for one-token prompts.

    Steering at `prompt_end_onward` or `generated` leaves those positions unsteered, so every
    trial can start from this cache. Must run unsteered.
    """
    width = inputs["input_ids"].shape[1]
    if width < 2:
        return None
    keep = keep_logits(model, 1)
    with torch.inference_mode():
        out = model(
            input_ids=inputs["input_ids"][:, :-1],
            attention_mask=inputs["attention_mask"][:, :-1],
            position_ids=inputs["position_ids"][:, :-1],
            use_cache=True,
            **keep,
        )
    return mark_prompt(output_cache(out), width)


def keep_logits(model: Any, n: int) -> dict[str, int]:
    """`{"logits_to_keep": n}` when `model.forward` takes it (only the last `n` positions' logits
    are computed), else `{}`."""
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        return {"logits_to_keep": n}
    return {}


def chat_prompt(
    tokenizer: Any, text: str, chat_template: bool = True, instruction: Instruction | None = None
) -> str:
    """The user's text wrapped in the chat template when the tokenizer has one, with an
    instruction where it asks to go (`hpo.core.prompting.render`)."""
    return render(tokenizer, text, chat_template, instruction)[0]


def finish(
    tokenizer: Any, ids: list[int], stop_strings: list[str] | None = None
) -> tuple[list[int], str]:
    """A raw greedy continuation cut at EOS, then before its first stop string: (tokens, text).

    What the generation objective scores, the bundle records and `hpo generate` prints.
    """
    eos = tokenizer.eos_token_id
    if eos in ids:
        ids = ids[: ids.index(eos)]
    if stop_strings:
        return truncate_at_stop(tokenizer, ids, stop_strings)
    return ids, tokenizer.decode(ids, skip_special_tokens=True)


def complete_each(
    model: Any,
    tokenizer: Any,
    prompts_ids: list[list[int]],
    max_new_tokens: int,
    handle: SteeringHandle | None = None,
    stop_strings: list[str] | None = None,
) -> list[tuple[list[int], str]]:
    """Each prompt's finished continuation, generated alone (no padding, batch of one).

    One prompt at a time is what a user gets from `model.generate` on that prompt, so a
    recorded sample replays token for token wherever the model and steering are the same.
    """
    return [
        finish(
            tokenizer,
            generate_ids(model, tokenizer, [ids], max_new_tokens, handle, True, stop_strings)[0],
            stop_strings,
        )
        for ids in prompts_ids
    ]


def truncate_at_stop(
    tokenizer: Any, ids: list[int], stop_strings: list[str]
) -> tuple[list[int], str]:
    """A continuation cut before its first stop string: (the tokens, the text).

    The tokens are the longest prefix whose text holds no stop string (a token that straddles
    the stop is dropped); the text is cut exactly at the stop.
    """
    text = tokenizer.decode(ids, skip_special_tokens=True)
    hits = [text.find(s) for s in stop_strings if s and s in text]
    if not hits:
        return ids, text
    cut = min(hits)
    keep = len(ids)
    while keep > 0 and len(tokenizer.decode(ids[:keep], skip_special_tokens=True)) > cut:
        keep -= 1
    return ids[:keep], text[:cut]
