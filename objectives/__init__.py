"""Scoring: one module per objective kind. Tasks are YAML data that name a kind."""

from __future__ import annotations

from typing import Any

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
    if kind == "generation":
        scorer = get_scorer(cfg.objective.scorer, cfg.objective.pattern)
        if scorer.needs_reference and "answer" not in cfg.columns:
            raise UserError(
                f"task {cfg.name!r}: scorer {cfg.objective.scorer} compares with a gold answer: "
                f"set task.columns.answer, got columns {dict(cfg.columns)}"
            )


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
    "check_task",
    "make_objective",
    "rotate_options",
]
