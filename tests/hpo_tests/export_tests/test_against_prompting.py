"""Steering against prompting, item by item and in one sentence: the anti-steerable share and
the verdict, on constructed cases."""

from __future__ import annotations

import pytest

from hpo.core.prompting import Instruction
from hpo.export.against_prompting import steerability, verdict, vs_prompting


def test_the_anti_steerable_share_on_a_constructed_case() -> None:
    unsteered = [0.5, 0.5, 0.5, 0.5, 0.5]
    steered = [0.9, 0.8, 0.45, 0.2, 0.5]  # two better, two worse (one within noise), one same
    noise = [0.0, 0.0, 0.06, 0.03, 0.0]
    s = steerability(steered, unsteered, "maximize", noise, [0.0] * 5)
    assert (s["n_worse"], s["n_better"], s["share_worse"]) == (2, 2, 0.4)
    assert s["share_worse_beyond_noise"] == 0.2  # 0.45 is within its noise 0.06, 0.2 is not
    lower = steerability(steered, unsteered, "minimize")
    assert (lower["n_worse"], lower["share_worse_beyond_noise"]) == (2, None)


def test_vs_prompting_says_which_way_it_goes_in_one_sentence() -> None:
    ask = Instruction("Be positive.")
    u = [0.0, 0.1, 0.2, 0.1, 0.0, 0.1]
    p = [0.5, 0.6, 0.7, 0.6, 0.5, 0.6]
    s = [0.3, 0.3, 0.4, 0.2, 0.3, 0.3]
    loses = vs_prompting(s, u, p, "maximize", 0, ask, "none")
    assert loses["verdict"].startswith("prompting alone does better: -0.2833 [95% CI ")
    assert loses["verdict"].endswith("; the instruction may be the simpler choice")
    assert loses["prompted_minus_unsteered"]["difference"] == pytest.approx(0.5)
    wins = verdict({"difference": 0.2, "ci95": [0.1, 0.3]}, "maximize")
    assert wins == "steering beats prompting by +0.2000 [95% CI +0.1000, +0.3000]"
    tie = verdict({"difference": 0.01, "ci95": [-0.1, 0.1]}, "maximize")
    assert tie.startswith("prompting alone does as well: +0.0100 [95% CI -0.1000, +0.1000]")
