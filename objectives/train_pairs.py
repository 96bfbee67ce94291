"""Contrastive train pairs read from `task.train_columns` (a task with a `train_source`).

By default the pair's prompt is rendered exactly like a validation prompt: `task.prompt_template`
with every field it names taken from the train row (`{knowledge}`, `{options}`, ...), then the
chat template and the answer prefix when the task uses them. The vector is then built from the
same text the trials steer. `task.train_template: false` keeps the raw prompt column instead
(the shipped sentiment pairs are written as bare sentence stems).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hpo.core.config import TaskConfig
from objectives._base import ContrastivePair, Row
from objectives.prompts import render_prompt

ROLES = ("prompt", "positive", "negative")


def source_pairs(
    cfg: TaskConfig,
    tokenizer: Any,
    rows: Sequence[Row],
    prefix: str = "",
    option: bool = False,
    fields: Callable[[Row], Mapping[str, Any]] | None = None,
) -> list[ContrastivePair]:
    """Pairs from the train rows' `train_columns` (prompt, positive, negative).

    Args:
        cfg: the task.
        tokenizer: the model's tokenizer (its chat template, when the task uses one).
        rows: the train rows.
        prefix: the answer prefix validation prompts end with (choice kinds).
        option: completions are scored as options (`" " + text`, as multiple choice does).
        fields: the template fields of a row (default: its columns).
    """
    prompt_col, pos_col, neg_col = (cfg.train_columns[k] for k in ROLES)
    pairs = []
    for row in rows:
        text = str(row[prompt_col])
        if cfg.train_template:
            text = render_prompt(cfg, tokenizer, text, prefix, fields(row) if fields else row)
        positive, negative = str(row[pos_col]), str(row[neg_col])
        if option:
            positive, negative = " " + positive.strip(), " " + negative.strip()
        pairs.append(ContrastivePair(text, positive, negative))
    return pairs
