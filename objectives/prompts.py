"""Turn a task row into the exact prompt string the model sees."""

from __future__ import annotations

from typing import Any

from hpo.config import TaskConfig


def render_prompt(cfg: TaskConfig, tokenizer: Any, text: str, prefix: str = "") -> str:
    """Fill `task.prompt_template`, wrap it in the chat template when asked, then add `prefix`.

    With a chat template the prefix opens the assistant's turn (e.g. `(` before an answer letter).
    """
    body = cfg.prompt_template.format(prompt=text)
    if cfg.chat_template and getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": body}], tokenize=False, add_generation_prompt=True
        )
        return str(rendered) + prefix.lstrip()
    return body + prefix
