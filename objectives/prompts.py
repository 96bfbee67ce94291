"""Turn a task row into the exact prompt string the model sees."""

from __future__ import annotations

import string
from collections.abc import Mapping
from typing import Any

from hpo.core.config import TaskConfig
from hpo.core.prompting import INSTRUCTION, render


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
    Under `task.prompting: instruction` the task's instruction goes in too (`hpo.core.prompting`).
    With a chat template the prefix opens the assistant's turn (e.g. `(` before an answer letter).
    """
    values = {**(fields or {}), "prompt": text}
    body = cfg.prompt_template.format(**values)
    instruction = cfg.instructed if cfg.prompting == INSTRUCTION else None
    if instruction is not None:
        instruction = instruction.filled(values)
    rendered, chatted = render(tokenizer, body, cfg.chat_template, instruction)
    return rendered + (prefix.lstrip() if chatted else prefix)
