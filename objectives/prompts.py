"""Turn a task row into the exact prompt string the model sees."""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any

from hpo.core.config import TaskConfig


def template_fields(template: str) -> list[str]:
    """The field names a prompt template uses (`{prompt}`, `{options}`, any column)."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


def render_prompt(
    cfg: TaskConfig,
    tokenizer: Any,
    text: str,
    prefix: str = "",
    fields: Mapping[str, Any] | None = None,
) -> str:
    """Fill `task.prompt_template`, wrap it in the chat template when asked, then add `prefix`.

    `{prompt}` is `text`; other fields come from `fields` (the row's columns, `{options}`).
    With a chat template the prefix opens the assistant's turn (e.g. `(` before an answer letter).
    """
    body = cfg.prompt_template.format(**{**(fields or {}), "prompt": text})
    if cfg.chat_template and getattr(tokenizer, "chat_template", None):
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": body}], tokenize=False, add_generation_prompt=True
        )
        return str(rendered) + prefix.lstrip()
    return body + prefix
