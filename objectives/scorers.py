"""Scorers for generated text: one per name, (text, reference answer) in, a `Scored` out.

- `sentiment`: VADER compound of the text, in [-1, 1].
- `math` (needs `columns.answer`): 1 if the text's final answer equals the reference
  (math-verify), else 0.
- `exact` (needs `columns.answer`): 1 if the normalized text equals the normalized reference.
- `regex`: with `columns.answer`, 1 if the last match of `objective.pattern` (its first group,
  if it has one) equals the reference; without, 1 if the pattern occurs at all.

A text whose answer cannot be found (or whose check times out) scores 0 and carries its
`status`, which the generation objective counts and reports; no scorer raises on model text.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol

from hpo.core.errors import UserError
from objectives.math_answer import math_verdict

STATUSES = ("ok", "unparsed", "timeout")


@dataclass(frozen=True)
class Scored:
    """One scored text: its value, `status` (ok / unparsed / timeout) and the extracted answer."""

    value: float
    status: str = "ok"
    extracted: str = ""


class Scorer(Protocol):
    """A named scorer: `needs_reference` says whether it compares with a gold answer."""

    needs_reference: bool

    def __call__(self, text: str, reference: str | None = None) -> Scored:
        """Score one generated text (against `reference` when the scorer needs one)."""
        ...


@lru_cache(maxsize=1)
def _vader() -> Any:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def sentiment(text: str) -> float:
    """VADER compound score of the text, in [-1, 1] (offline, lexicon-based)."""
    return float(_vader().polarity_scores(text)["compound"])


def normalize(text: str) -> str:
    """Case-folded, whitespace-collapsed, without surrounding punctuation or quotes."""
    return " ".join(str(text).casefold().split()).strip(string.punctuation + " ")


class SentimentScorer:
    """`sentiment`: VADER compound of the text."""

    needs_reference = False

    def __call__(self, text: str, reference: str | None = None) -> Scored:
        return Scored(sentiment(text))


class MathScorer:
    """`math`: final-answer equivalence with math-verify (see `objectives.math_answer`)."""

    needs_reference = True

    def __call__(self, text: str, reference: str | None = None) -> Scored:
        verdict = math_verdict(text, str(reference))
        return Scored(verdict.value, verdict.status, verdict.extracted)


class ExactScorer:
    """`exact`: normalized string equality with the reference."""

    needs_reference = True

    def __call__(self, text: str, reference: str | None = None) -> Scored:
        got = normalize(text)
        if not got:
            return Scored(0.0, "unparsed")
        return Scored(float(got == normalize(str(reference))), "ok", got)


class RegexScorer:
    """`regex`: extract-and-compare with a reference, else 1 if the pattern occurs."""

    needs_reference = False

    def __init__(self, pattern: str | None) -> None:
        if not pattern:
            raise UserError("scorer regex needs task.objective.pattern, got none")
        try:
            self.pattern = re.compile(pattern)
        except re.error as e:
            raise UserError(
                f"task.objective.pattern is not a valid regex ({e}): {pattern!r}"
            ) from e

    def __call__(self, text: str, reference: str | None = None) -> Scored:
        matches = list(self.pattern.finditer(text))
        if reference is None:
            return Scored(float(bool(matches)), "ok", matches[-1].group(0) if matches else "")
        if not matches:
            return Scored(0.0, "unparsed")
        last = matches[-1]
        got = last.group(1) if self.pattern.groups else last.group(0)
        got = "" if got is None else got
        return Scored(float(normalize(got) == normalize(str(reference))), "ok", got)


SCORERS: dict[str, Any] = {
    "exact": ExactScorer,
    "math": MathScorer,
    "regex": RegexScorer,
    "sentiment": SentimentScorer,
}


def get_scorer(name: str | None, pattern: str | None = None) -> Scorer:
    """The scorer a task names (`pattern`: the regex of `regex`).

    Raises:
        UserError: unknown or missing name (the message lists the known ones), or a bad pattern.
    """
    if name not in SCORERS:
        raise UserError(f"task.objective.scorer must be one of {sorted(SCORERS)}, got {name!r}")
    scorer: Scorer = RegexScorer(pattern) if name == "regex" else SCORERS[name]()
    return scorer
