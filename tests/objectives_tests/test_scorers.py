"""Scorers that compare generated text with a gold answer: math (math-verify), exact, regex.

Table-driven over the answers a model really writes: thousands commas, $ signs, fractions,
decimals, percentages, units, negative numbers, GSM8K `#### N` and `\\boxed{}` golds.
"""

from __future__ import annotations

import threading

import pytest

import objectives.math_answer as math_answer
from hpo import UserError
from hpo.model.decoding import truncate_at_stop
from hpo.model.loading import LoadedModel
from objectives.math_answer import final_answer, math_verdict, worked_answer
from objectives.scorers import get_scorer

MATH_CASES = [
    # (model text, gold, correct?)
    ("The answer is 18.", "She makes 9 * 2 = $<<9*2=18>>18.\n#### 18", True),
    ("The answer is 1,000 dollars.", "#### 1,000", True),
    ("So the total is $1,000.", "#### 1000", True),
    ("The answer is $18.00", "#### 18", True),
    ("The answer is 3.5 hours.", "#### 3.5", True),
    ("The temperature drops to -5 degrees, so the answer is -5.", "#### -5", True),
    ("The answer is 5.", "#### -5", False),
    ("It grew by 50%.", "#### 50", True),
    ("She has 18 eggs left.", "#### 18", True),
    ("The answer is 7 apples.", "7", True),
    ("\\boxed{\\frac{1}{2}}", "0.5", True),
    ("The answer is 1/2", "\\frac{1}{2}", True),
    ("0.5", "\\boxed{\\frac12}", True),
    ("The answer is 2/3", "\\frac{2}{3}", True),
    ("The answer is 0.67", "\\frac{2}{3}", False),
    ("The final answer is $\\boxed{42}$", "#### 42", True),
    ("First 12 apples, then 15 more: 27.", "#### 27", True),  # the last number counts
    ("First 12, then 15.", "#### 12", False),
    ("The answer is 320.\n#### 320", "#### 320", True),
]


@pytest.mark.parametrize(("text", "gold", "correct"), MATH_CASES, ids=[c[0] for c in MATH_CASES])
def test_math_scorer_reads_final_answers_like_a_grader(
    text: str, gold: str, correct: bool
) -> None:
    scored = get_scorer("math")(text, gold)
    assert scored.status == "ok", scored
    assert scored.value == (1.0 if correct else 0.0), scored


@pytest.mark.parametrize("text", ["", "I do not know.", "Let me think about the ducks"])
def test_an_answer_without_a_value_is_wrong_and_marked_unparsed(text: str) -> None:
    scored = get_scorer("math")(text, "#### 18")
    assert (scored.value, scored.status) == (0.0, "unparsed")


def test_a_sympy_timeout_is_wrong_and_marked_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(math_answer, "TIMEOUT_S", 1)
    verdict = math_verdict("The answer is $9^{9^{9^{9}}}$", "#### 5")
    assert (verdict.value, verdict.status) == (0.0, "timeout")


def test_math_scorer_works_off_the_main_thread() -> None:
    # signal-based timeouts only work on the main thread; elsewhere they must be switched off
    results: list[float] = []
    thread = threading.Thread(target=lambda: results.append(math_verdict("x = 4", "4").value))
    thread.start()
    thread.join(30)
    assert results == [1.0]


def test_gsm8k_gold_becomes_a_worked_answer_and_a_final_answer() -> None:
    gold = "He buys 2 * 500 = <<2*500=1000>>1000 bricks.\n#### 1,000"
    assert final_answer(gold) == "1000"
    assert worked_answer(gold) == "He buys 2 * 500 = 1000 bricks.\nThe answer is 1000."
    assert worked_answer("\\frac{1}{2}") == "\\frac{1}{2}"


@pytest.mark.parametrize(
    ("text", "gold", "value", "status"),
    [
        ("Paris", "paris", 1.0, "ok"),
        ("  Paris.  ", "Paris", 1.0, "ok"),
        ('"New   York"', "new york", 1.0, "ok"),
        ("Paris, France", "Paris", 0.0, "ok"),
        ("   ", "Paris", 0.0, "unparsed"),
    ],
)
def test_exact_scorer_compares_normalized_strings(
    text: str, gold: str, value: float, status: str
) -> None:
    scored = get_scorer("exact")(text, gold)
    assert (scored.value, scored.status) == (value, status)


def test_regex_scorer_extracts_the_last_match_or_tests_presence() -> None:
    extract = get_scorer("regex", r"[Aa]nswer: *\(?([A-D])\)?")
    assert extract("Answer: (B) ... no wait, Answer: C", "c").value == 1.0
    assert extract("Answer: (B)", "C").value == 0.0
    assert extract("I pick the second one", "B").status == "unparsed"
    present = get_scorer("regex", r"\bsorry\b")
    assert present("I am sorry, I cannot.").value == 1.0
    assert present("Sure, here it is.").value == 0.0


def test_bad_scorer_names_and_patterns_are_user_errors() -> None:
    with pytest.raises(UserError, match=r"one of \['exact', 'math', 'regex', 'sentiment'\]"):
        get_scorer("bleu")
    with pytest.raises(UserError, match=r"needs task\.objective\.pattern"):
        get_scorer("regex")
    with pytest.raises(UserError, match=r"not a valid regex .*'\(unclosed'"):
        get_scorer("regex", "(unclosed")


def test_truncate_at_stop_cuts_text_and_tokens_before_the_first_stop(tiny: LoadedModel) -> None:
    tok = tiny.tokenizer
    ids = tok.encode("The answer is 4.\n\nQuestion: what is 2+3?", add_special_tokens=False)
    kept, text = truncate_at_stop(tok, ids, ["Question:", "\n\n"])
    assert text == "The answer is 4."
    assert tok.decode(kept).rstrip() == "The answer is 4."
    assert truncate_at_stop(tok, ids, ["never"]) == (ids, tok.decode(ids))
