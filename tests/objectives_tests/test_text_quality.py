"""Scorer artefacts: markup spam that VADER scores positive fails the generation fluency
constraint's text-quality check, while fluent positive text passes it; the absolute fluency
bounds hold whatever the baseline, relaxed only to the baseline's own value."""

from __future__ import annotations

import pytest

from objectives.generation import Generation, PreparedPrompts
from objectives.scorers import sentiment
from objectives.text_quality import is_wordlike, mean_text_quality, text_quality
from tests.conftest import compose_run

SPAM = "<strong> </strong> <strong> </strong> <strong> </strong> <strong> </strong>"
FLUENT = "I'm thrilled to share the wonderful news: the new job is a great fit, and I love it!"
REFERENCE = {"perplexity": 2.4, "distinct2": 0.95, "text_quality": 1.0}


def _constraints(texts: list[str], **measured: float) -> dict[str, float]:
    objective = Generation(compose_run("task=sentiment").task, tokenizer=None)
    prepared = PreparedPrompts([], [], [], reference=dict(REFERENCE))
    values = {"perplexity": 3.0, "distinct2": 0.9, "text_quality": mean_text_quality(texts)}
    return objective.constraints(prepared, {**values, **measured})


def test_markup_spam_fails_the_text_quality_check_while_fluent_positive_text_passes() -> None:
    assert sentiment(SPAM) > 0.9 and sentiment(FLUENT) > 0.9  # VADER likes both ("strong")
    spam = _constraints([SPAM] * 4)
    fluent = _constraints([FLUENT] * 4)
    assert spam["text_quality"] > 0, spam
    assert all(v <= 0 for v in fluent.values()), fluent
    # half spam, half text still fails; a stray tag in fluent text does not
    assert _constraints([SPAM, FLUENT])["text_quality"] > 0
    assert _constraints([FLUENT + " <br>"] * 2)["text_quality"] <= 0


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        (SPAM, 0.0, 0.0),
        ("<strong>Great</strong> news! <strong>Amazing</strong>", 0.2, 0.5),
        ("&nbsp;&nbsp;&nbsp; hello", 0.2, 0.3),
        ("asdfghjkl qwrtzp xxxxxx", 0.0, 0.0),
        (FLUENT, 1.0, 1.0),
        ("**Title**\n# Heading\n- item one", 1.0, 1.0),  # Markdown punctuation is neutral
        ("Janet has 16 eggs: 16 - 3 - 4 = 9, and 9 * $2 = $18. The answer is 18.", 1.0, 1.0),
        ("café naïve résumé, iPhone, McDonald's, HTML", 1.0, 1.0),
    ],
)
def test_text_quality_is_the_share_of_dictionary_like_words(
    text: str, low: float, high: float
) -> None:
    assert low <= text_quality(text) <= high


def test_word_likeness_rejects_letter_noise() -> None:
    assert all(is_wordlike(w) for w in ["I'm", "don't", "well-known", "x", "NASA", "rhythm"])
    assert not any(is_wordlike(w) for w in ["zzzz", "bcdfgh", "qwrtzp", "a" * 21])


def test_absolute_fluency_bounds_hold_unless_the_baseline_itself_breaks_them() -> None:
    broken = _constraints([FLUENT], perplexity=25.0, distinct2=0.4)
    assert broken["perplexity"] > 0 and broken["distinct2"] > 0
    assert broken["perplexity_ratio"] > 0 and broken["distinct2_ratio"] > 0
    objective = Generation(compose_run("task=sentiment").task, tokenizer=None)
    weak = {"perplexity": 30.0, "distinct2": 0.3, "text_quality": 0.5}  # a random model's text
    prepared = PreparedPrompts([], [], [], reference=weak)
    itself = objective.constraints(prepared, {**weak, "perplexity": 33.0})
    assert set(itself) == {"perplexity_ratio", "distinct2_ratio"}  # only the ratios apply
    assert all(v <= 0 for v in itself.values()), itself
