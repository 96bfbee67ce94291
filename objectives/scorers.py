"""Scorers for generated text: one function per name, text in, number out."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from typing import Any

from hpo import UserError

Scorer = Callable[[str], float]


@lru_cache(maxsize=1)
def _vader() -> Any:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def sentiment(text: str) -> float:
    """VADER compound score of the text, in [-1, 1] (offline, lexicon-based)."""
    return float(_vader().polarity_scores(text)["compound"])


SCORERS: dict[str, Scorer] = {"sentiment": sentiment}


def get_scorer(name: str | None) -> Scorer:
    """The scorer a task names.

    Raises:
        UserError: unknown or missing name (the message lists the known ones).
    """
    if name not in SCORERS:
        raise UserError(f"task.objective.scorer must be one of {sorted(SCORERS)}, got {name!r}")
    return SCORERS[name]
