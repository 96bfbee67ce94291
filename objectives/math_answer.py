"""Final-answer extraction and equivalence for math answers, with math-verify (sympy inside).

Gold answers come as GSM8K solutions (`... #### 1,234`), MATH-style LaTeX (`\\boxed{\\frac12}`
or a bare `\\frac{1}{2}`), or plain numbers. Model answers are free text: math-verify finds the
last `\\boxed{}`, an "answer is" anchor, or else the last number/expression. An answer that cannot
be parsed, or whose parsing/comparison times out, is wrong and says so in its `status`, so a
scorer can count it; nothing here raises on bad text.
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass
from typing import Any

# math-verify warns once when timeouts are off (we must, off the main thread) and logs each
# timeout; both are reported through `MathVerdict.status` instead.
logging.getLogger("math_verify").setLevel(logging.ERROR)

GSM8K_MARK = re.compile(r"####\s*(?P<answer>.+?)\s*$", re.DOTALL)
CALC_MARK = re.compile(r"<<[^<>]*>>")
# Long rambling text only slows the parser; the final answer is at the end.
MAX_CHARS = 2000
TIMEOUT_S = 5


@dataclass(frozen=True)
class MathVerdict:
    """One comparison: 1.0 / 0.0, why, and what was extracted (for logs and bundles)."""

    value: float
    status: str  # "ok", "unparsed" (no answer found in the text) or "timeout"
    extracted: str = ""


def _timeouts() -> int | None:
    # math-verify's timeouts use signal.alarm, which only works on the main thread.
    return TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


def gold_text(gold: str) -> str:
    """The answer part of a gold string: after GSM8K's `####`, thousands commas dropped."""
    text = final_answer(gold)
    if "$" not in text and "\\boxed" not in text and "\\" in text:
        text = f"${text}$"  # a bare LaTeX answer such as \frac{1}{2}
    return text


def final_answer(gold: str) -> str:
    """The short final answer of a gold string (`#### 1,234` -> `1234`; else the text)."""
    mark = GSM8K_MARK.search(str(gold))
    return mark.group("answer").replace(",", "") if mark else str(gold).strip()


def worked_answer(gold: str) -> str:
    """A gold solution as a model should write it: GSM8K's `<<a*b=c>>` calculator marks
    removed and `#### N` replaced by "The answer is N." (other text unchanged)."""
    text = CALC_MARK.sub("", str(gold)).strip()
    mark = GSM8K_MARK.search(text)
    if mark is None:
        return text
    return f"{text[: mark.start()].rstrip()}\nThe answer is {final_answer(text)}."


def _parse(text: str, timeout: int | None) -> list[Any]:
    from math_verify import parse

    return list(parse(text, parsing_timeout=timeout, raise_on_error=True))


def math_verdict(answer: str, gold: str) -> MathVerdict:
    """Whether the model's `answer` text ends in a value equal to `gold`.

    Unparsable text, an unparsable gold, an error inside math-verify or a timeout -> value 0.0
    with status `unparsed` / `timeout`, never an exception.
    """
    from math_verify import verify
    from math_verify.errors import TimeoutException

    timeout = _timeouts()
    try:
        gold_parsed = _parse(gold_text(gold), timeout)
        pred = _parse(answer[-MAX_CHARS:], timeout)
        if not gold_parsed or not pred:
            return MathVerdict(0.0, "unparsed", str(pred[-1]) if pred else "")
        ok = verify(gold_parsed, pred, timeout_seconds=timeout, raise_on_error=True)
    except TimeoutException:
        return MathVerdict(0.0, "timeout")
    except Exception:  # sympy / latex2sympy raise many types; all mean "cannot compare"
        return MathVerdict(0.0, "unparsed")
    return MathVerdict(1.0 if ok else 0.0, "ok", str(pred[-1]))
