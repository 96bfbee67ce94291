"""Chance level of choice objectives, and the honesty checks built on it.

A choice score is a probability normalised over an item's options, so chance is `1 / n` per item
(0.5 for A/B). A baseline *below* chance is not ignorance but a format bias: the scoring prefers
the wrong option for a reason unrelated to the behaviour (a letter prior, or per-token mean
log-likelihood favouring a longer wrong answer). From there any damage looks like a gain: a
model broken towards uniform answers drifts to chance. So a below-chance baseline is reported at
study start and in the bundle, and an exported gain that mostly closes the gap to chance is
flagged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hpo.core.config import ObjectiveConfig
from hpo.core.stats import bootstrap_diff_ci

# Study attributes: the validation split's chance level (choice kinds only), and the format-bias
# message when the unsteered baseline lies below it (what export repeats).
CHANCE_ATTR = "chance_level"
CHANCE_BIAS_ATTR = "chance_bias"
# An exported gain is flagged when at least this share of it lies between baseline and chance.
TOWARDS_CHANCE_SHARE = 0.5


def chance_items(n_options: Sequence[int]) -> list[float]:
    """Per item, the score of a model that picks uniformly: `1 / n` options."""
    return [1.0 / n for n in n_options]


def below_chance(
    per_item: Sequence[float], chance: Sequence[float], seed: int = 0
) -> tuple[float, float] | None:
    """The 95% interval of mean(score - chance) when it lies wholly below 0, else None."""
    if not per_item or len(per_item) != len(chance):
        return None
    lo, hi = bootstrap_diff_ci(per_item, chance, seed=seed)
    return (lo, hi) if hi < 0 else None


def format_bias_message(
    value: float, chance: float, interval: tuple[float, float], cause: str
) -> str:
    """One line: a baseline below chance, its likely `cause` (the objective's own
    `bias_cause()`, naming the task keys that change it) and why it matters."""
    lo, hi = interval
    head = (
        f"the unsteered baseline {value:.4f} is below chance {chance:.4f} (95% CI of the "
        f"difference [{lo:+.4f}, {hi:+.4f}]): a format bias, not the behaviour"
    )
    return (
        f"{head}; {cause}. Steering that only breaks the model moves such a score towards "
        "chance and looks like a gain"
    )


def towards_chance_message(
    baseline: float, steered: float, chance: float, direction: str = "maximize"
) -> str | None:
    """A warning when most of a gain only brings a below-chance baseline towards chance."""
    sign = 1.0 if direction == "maximize" else -1.0
    b, s, c = sign * baseline, sign * steered, sign * chance
    gain = s - b
    if b >= c or gain <= 0:
        return None
    share = (min(s, c) - b) / gain
    if share < TOWARDS_CHANCE_SHARE:
        return None
    return (
        f"{share:.0%} of the gain ({baseline:.4f} -> {steered:.4f}) only brings a below-chance "
        f"baseline towards chance {chance:.4f}: a model broken towards uniform answers does the "
        "same; check kl and the steered samples before trusting it"
    )


def chance_report(
    objective: ObjectiveConfig,
    steered: float,
    baseline_items: Sequence[float],
    chance: Sequence[float] | None,
    seed: int = 0,
    recorded: str | None = None,
    cause: str = "",
) -> dict[str, Any]:
    """A split's chance level and the warnings it calls for (empty for kinds without one).

    Returns `{"chance": level, "warnings": [...]}`: a baseline below chance (format bias, its
    likely `cause` and the task keys that change it; `recorded` is the validation split's
    message from the study start) and a gain that mostly closes the gap to chance.
    """
    if not chance or not baseline_items:
        return {}
    level = sum(chance) / len(chance)
    baseline = sum(baseline_items) / len(baseline_items)
    warnings = [f"validation: {recorded}"] if recorded else []
    below = below_chance(baseline_items, chance, seed)
    if below is not None:
        message = format_bias_message(baseline, level, below, cause)
        warnings.append(f"test: {message}")
    towards = towards_chance_message(baseline, steered, level, objective.direction)
    if towards is not None:
        warnings.append(towards)
    return {"chance": level, "warnings": warnings}
