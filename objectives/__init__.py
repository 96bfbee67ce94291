"""Scoring: one module per objective kind. Tasks are YAML data that name a kind."""

from __future__ import annotations

from typing import Any

from hpo.core.columns import is_constant, option_index, option_texts, row_option
from hpo.core.config import TaskConfig
from hpo.core.errors import UserError
from objectives._base import (
    ConstrainedObjective,
    ContrastivePair,
    Objective,
    Reporter,
    ScoreResult,
)
from objectives.choice_probability import ChoiceProbability, rotate_options
from objectives.generation import Generation
from objectives.multiple_choice import MultipleChoice
from objectives.scorers import SCORERS, get_scorer

KINDS: dict[str, Any] = {
    "choice_probability": ChoiceProbability,
    "generation": Generation,
    "multiple_choice": MultipleChoice,
}


def check_task(cfg: TaskConfig) -> None:
    """Check a task's objective before any model loads: kind, its columns, scorer and pattern.

    Raises:
        UserError: unknown kind or scorer (the message lists the known ones), a missing column
            role, a scorer that needs `columns.answer` without it, or a bad regex.
    """
    kind = cfg.objective.kind
    if kind not in KINDS:
        raise UserError(f"task.objective.kind must be one of {sorted(KINDS)}, got {kind!r}")
    missing = [c for c in KINDS[kind].required_columns if c not in cfg.columns]
    if missing:
        raise UserError(
            f"task {cfg.name!r}: objective {kind} needs task.columns.{missing[0]}, "
            f"got columns {dict(cfg.columns)}"
        )
    listed = [r for r, v in cfg.columns.items() if isinstance(v, list)]
    if listed and kind != "multiple_choice":
        raise UserError(
            f"task {cfg.name!r}: task.columns.{listed[0]} lists columns, which only objective "
            f"multiple_choice reads (choices), got kind {kind!r}"
        )
    choices = cfg.columns.get("choices")
    if kind == "multiple_choice" and isinstance(choices, list):
        for role in ("answer", "negative"):
            if role in cfg.columns and is_constant(role, cfg.columns[role], choices):
                option_index(cfg.columns[role], len(choices), f"task.columns.{role}")
    if kind == "generation":
        scorer = get_scorer(cfg.objective.scorer, cfg.objective.pattern)
        if scorer.needs_reference and "answer" not in cfg.columns:
            raise UserError(
                f"task {cfg.name!r}: scorer {cfg.objective.scorer} compares with a gold answer: "
                f"set task.columns.answer, got columns {dict(cfg.columns)}"
            )


def check_rows(cfg: TaskConfig, rows: list[dict[str, Any]]) -> None:
    """Check a split's rows against the task's column roles before any model loads.

    Multiple choice: every row's options and its answer (and negative) option index.

    Raises:
        UserError: a row whose options or answer cannot be read (the column and the value).
    """
    if cfg.objective.kind != "multiple_choice":
        return
    for row in rows:
        n = len(option_texts(row, cfg.columns))
        for role in ("answer", "negative"):
            if role in cfg.columns and (
                role == "answer" or row.get(cfg.columns[role], 0) is not None
            ):
                row_option(row, cfg.columns, role, n)


def make_objective(cfg: TaskConfig, tokenizer: Any) -> Objective:
    """Build the objective a task names.

    Raises:
        UserError: unknown kind (the message lists the known ones).
    """
    kind = cfg.objective.kind
    if kind not in KINDS:
        raise UserError(f"task.objective.kind must be one of {sorted(KINDS)}, got {kind!r}")
    objective: Objective = KINDS[kind](cfg, tokenizer)
    return objective


__all__ = [
    "KINDS",
    "SCORERS",
    "ChoiceProbability",
    "ConstrainedObjective",
    "ContrastivePair",
    "Generation",
    "MultipleChoice",
    "Objective",
    "Reporter",
    "ScoreResult",
    "check_rows",
    "check_task",
    "make_objective",
    "rotate_options",
]
