"""Scoring: one module per objective kind. Tasks are YAML data that name a kind."""

from __future__ import annotations

from typing import Any

from hpo import TaskConfig, UserError
from objectives._base import ContrastivePair, Objective, Reporter, ScoreResult
from objectives.choice_probability import ChoiceProbability, rotate_options
from objectives.generation import Generation

KINDS: dict[str, Any] = {"choice_probability": ChoiceProbability, "generation": Generation}


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
    "ChoiceProbability",
    "ContrastivePair",
    "Generation",
    "Objective",
    "Reporter",
    "ScoreResult",
    "make_objective",
    "rotate_options",
]
