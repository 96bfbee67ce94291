"""Steering against prompting on the held-out test split, and item by item.

Two questions a user deciding whether to ship a vector needs answered for their own model and
task (AxBench: prompting beat every steering method; Tan et al. 2024: up to half the items of
a dataset move the opposite way under a CAA vector):

- does the vector beat simply asking? `vs_prompting` gives paired 95% intervals of
  steered - unsteered, steered - prompted and prompted - unsteered, and one plain sentence;
- on how many items does it backfire? `steerability` gives the share of test items the vector
  made worse, and (where the scorer measures an item's own noise, e.g. its spread over option
  orders) the share made worse by more than that noise.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from hpo.core.prompting import INSTRUCTION, Instruction
from hpo.core.stats import bootstrap_diff_ci, shows_gain


def _paired(a: Sequence[float], b: Sequence[float], seed: int) -> dict[str, Any]:
    lo, hi = bootstrap_diff_ci(a, b, seed=seed)
    return {"difference": sum(a) / len(a) - sum(b) / len(b), "ci95": [lo, hi]}


def verdict(difference: dict[str, Any], direction: str, on_top: bool = False) -> str:
    """One plain sentence from the steered - prompted difference and its interval: steering
    beats prompting (interval wholly on the better side of 0), or prompting alone does as well
    (the interval holds 0) or better (wholly on the worse side)."""
    d, (lo, hi) = difference["difference"], difference["ci95"]
    shown = f"{d:+.4f} [95% CI {lo:+.4f}, {hi:+.4f}]"
    if shows_gain((lo, hi), direction):
        what = "steering on top of the instruction beats" if on_top else "steering beats"
        return f"{what} prompting by {shown}"
    opposite = "minimize" if direction == "maximize" else "maximize"
    how = "better" if shows_gain((lo, hi), opposite) else "as well"
    return f"prompting alone does {how}: {shown}; the instruction may be the simpler choice"


def vs_prompting(
    steered: Sequence[float],
    unsteered: Sequence[float],
    prompted: Sequence[float],
    direction: str,
    seed: int,
    instruction: Instruction,
    prompting: str,
) -> dict[str, Any]:
    """Steered, unsteered and prompted scores of the same test items, compared in pairs.

    Args:
        steered: the winner's per-item scores (under its own `prompting`).
        unsteered: the unsteered model's, without the instruction.
        prompted: the unsteered model's with the instruction (the prompted baseline).
        direction: the score's direction (`maximize` / `minimize`).
        seed: the bootstrap's seed.
        instruction: the task's instruction.
        prompting: the winner's own prompting (`instruction`: steered on top of it).
    """
    mean = {k: sum(v) / len(v) for k, v in {"s": steered, "u": unsteered, "p": prompted}.items()}
    s_p = _paired(steered, prompted, seed)
    return {
        "instruction": instruction.record(),
        "winner_prompting": prompting,
        "n": len(steered),
        "steered": mean["s"],
        "unsteered": mean["u"],
        "prompted": mean["p"],
        "steered_minus_unsteered": _paired(steered, unsteered, seed),
        "steered_minus_prompted": s_p,
        "prompted_minus_unsteered": _paired(prompted, unsteered, seed),
        "verdict": verdict(s_p, direction, on_top=prompting == INSTRUCTION),
    }


def steerability(
    steered: Sequence[float],
    unsteered: Sequence[float],
    direction: str,
    steered_noise: Sequence[float] | None = None,
    unsteered_noise: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Per item, steered - unsteered: how many items the vector made worse.

    An item is *worse* when its difference points the wrong way for `direction`; *worse beyond
    noise* when it does so by more than the item's own noise, `sqrt(n_s^2 + n_u^2)` of the two
    runs' per-item noise (both must be given; else that share is None).
    """
    sign = 1.0 if direction == "maximize" else -1.0
    diffs = [s - u for s, u in zip(steered, unsteered, strict=True)]
    n = len(diffs)
    worse = sum(1 for d in diffs if sign * d < 0)
    better = sum(1 for d in diffs if sign * d > 0)
    out: dict[str, Any] = {
        "n": n,
        "n_worse": worse,
        "n_better": better,
        "share_worse": worse / n if n else None,
        "share_better": better / n if n else None,
        "share_worse_beyond_noise": None,
        "unsteered": list(unsteered),
        "steered": list(steered),
    }
    if steered_noise is not None and unsteered_noise is not None:
        noise = [math.hypot(a, b) for a, b in zip(steered_noise, unsteered_noise, strict=True)]
        beyond = sum(1 for d, e in zip(diffs, noise, strict=True) if sign * d < -e)
        out["share_worse_beyond_noise"] = beyond / n if n else None
        out["n_worse_beyond_noise"] = beyond
    return out


def steerability_line(s: dict[str, Any]) -> str:
    """One line: how many test items the vector made worse (and beyond their noise)."""
    line = (
        f"{s['n_worse']}/{s['n']} test items worse under the vector "
        f"({100 * s['share_worse']:.0f}%), {s['n_better']} better"
    )
    if s.get("share_worse_beyond_noise") is not None:
        line += (
            f"; {s['n_worse_beyond_noise']} worse beyond the item's own noise "
            f"({100 * s['share_worse_beyond_noise']:.0f}%)"
        )
    return line
