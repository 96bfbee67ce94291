"""Greedy generation that tells the steering hooks where the prompt ends."""

from __future__ import annotations

from typing import Any

import torch

from hpo.batching import pad_left
from hpo.steering import SteeringHandle


def generate_ids(
    model: Any,
    tokenizer: Any,
    prompts_ids: list[list[int]],
    max_new_tokens: int,
    handle: SteeringHandle | None = None,
    use_cache: bool = True,
) -> list[list[int]]:
    """Greedy continuations (new token ids only) of left-padded prompts.

    When a steering `handle` is active its `prompt_length` is set to the padded prompt width, so
    `prompt_end_onward` / `generated` positions mean the same with and without the KV cache.
    """
    device = next(model.parameters()).device
    inputs = pad_left(prompts_ids, tokenizer.pad_token_id, device)
    inputs.pop("position_ids")  # generate derives them from the attention mask
    width = inputs["input_ids"].shape[1]
    if handle is not None:
        handle.prompt_length = width
    try:
        with torch.inference_mode():
            out = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                use_cache=use_cache,
                pad_token_id=tokenizer.pad_token_id,
            )
    finally:
        if handle is not None:
            handle.prompt_length = None
    return [row[width:].tolist() for row in out]


def chat_prompt(tokenizer: Any, text: str, chat_template: bool = True) -> str:
    """The user's text wrapped in the chat template when the tokenizer has one."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        return str(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
            )
        )
    return text
