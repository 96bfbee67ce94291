"""Scoring: one module per objective kind. Tasks are YAML data that name a kind."""

from __future__ import annotations

from typing import Any

from hpo.core.config import TaskConfig
from hpo.core.errors import UserError
from objectives._base import (
    BaseObjective,
    ConstrainedObjective,
    ContrastivePair,
    Objective,
    PreparedSplit,
    Reporter,
    ScoreResult,
)
from objectives.choice_probability import ChoiceProbability, rotate_options
from objectives.generation import Generation, PreparedPrompts
from objectives.multiple_choice import MultipleChoice
from objectives.scorers import SCORERS

KINDS: dict[str, type[BaseObjective]] = {
    "choice_probability": ChoiceProbability,
    "generation": Generation,
    "multiple_choice": MultipleChoice,
}


def kind_named(kind: str) -> type[BaseObjective]:
    """The objective class of a kind.

    Raises:
        UserError: unknown kind (the message lists the known ones).
    """
    if kind not in KINDS:
        raise UserError(f"task.objective.kind must be one of {sorted(KINDS)}, got {kind!r}")
    return KINDS[kind]


def prompt_fields(kind: str) -> frozenset[str]:
    """The fields a kind fills into the prompt template besides the row's own (none for an
    unknown kind, which `check_task` refuses)."""
    return KINDS[kind].prompt_fields if kind in KINDS else frozenset()


def check_task(cfg: TaskConfig) -> None:
    """Check a task's objective before any model loads: kind, its columns, scorer and pattern.

    Raises:
        UserError: unknown kind or scorer (the message lists the known ones), a missing column
            role, a scorer that needs `columns.answer` without it, or a bad regex.
    """
    kind = cfg.objective.kind
    objective = kind_named(kind)
    missing = [c for c in objective.required_columns if c not in cfg.columns]
    if missing:
        raise UserError(
            f"task {cfg.name!r}: objective {kind} needs task.columns.{missing[0]}, "
            f"got columns {dict(cfg.columns)}"
        )
    listed = [r for r, v in cfg.columns.items() if isinstance(v, list)]
    if listed and not objective.lists_columns:
        readers = " / ".join(sorted(k for k, c in KINDS.items() if c.lists_columns))
        raise UserError(
            f"task {cfg.name!r}: task.columns.{listed[0]} lists columns, which only objective "
            f"{readers} reads (choices), got kind {kind!r}"
        )
    objective.check_task(cfg)


def check_rows(cfg: TaskConfig, rows: list[dict[str, Any]]) -> None:
    """Check a split's rows against the task's column roles before any model loads (the kind's
    own checks: multiple choice reads every row's options and answer option index).

    Raises:
        UserError: a row whose options or answer cannot be read (the column and the value).
    """
    kind_named(cfg.objective.kind).check_rows(cfg, rows)


def make_objective(cfg: TaskConfig, tokenizer: Any) -> Objective:
    """Build the objective a task names.

    Raises:
        UserError: unknown kind (the message lists the known ones).
    """
    objective: Objective = kind_named(cfg.objective.kind)(cfg, tokenizer)
    return objective


__all__ = [
    "KINDS",
    "SCORERS",
    "BaseObjective",
    "ChoiceProbability",
    "ConstrainedObjective",
    "ContrastivePair",
    "Generation",
    "MultipleChoice",
    "Objective",
    "PreparedPrompts",
    "PreparedSplit",
    "Reporter",
    "ScoreResult",
    "check_rows",
    "check_task",
    "kind_named",
    "make_objective",
    "prompt_fields",
    "rotate_options",
]
