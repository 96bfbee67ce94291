"""The planner: a trial's params -> its plan, carrying what the build found in `Plan.info`."""

from __future__ import annotations

from typing import Any

import pytest

from hpo.core.record import HEADS_STEERED_ATTR, PROBE_ACCURACY_ATTR
from hpo.model.loading import LoadedModel
from hpo.run.planner import Planner
from hpo.steering.activations import load_or_build
from objectives import ContrastivePair
from tests.conftest import compose_run

PAIRS = [
    ContrastivePair(
        f"Question {i}: is claim {i} true?\nAnswer: (", *(("A)", "B)")[:: 1 - 2 * (i % 2)])
    )
    for i in range(16)
]
RESIDUAL = {
    "layer": 1,
    "window": 1,
    "mode": "add",
    "alpha": 0.5,
    "aggregation": "last",
    "positions": "all",
}


def _planner(tiny: LoadedModel, *overrides: str, heads: bool = False) -> Planner:
    cfg = compose_run("search_space.aggregation=[last]", *overrides)
    return Planner(cfg.search_space, tiny, load_or_build(tiny, PAIRS, heads=heads), seed=0)


def test_a_plan_carries_its_own_info_which_a_later_plan_leaves_alone(tiny: LoadedModel) -> None:
    planner = _planner(tiny, "search_space.method=[caa,probe]")
    probe = planner.plan({**RESIDUAL, "method": "probe"})
    assert set(probe.info) == {PROBE_ACCURACY_ATTR}
    assert 0.0 <= probe.info[PROBE_ACCURACY_ATTR] <= 1.0
    caa = planner.plan({**RESIDUAL, "method": "caa"})
    assert caa.info == {}
    assert set(probe.info) == {PROBE_ACCURACY_ATTR}  # not the builder's last build
    assert sorted(caa.vectors) == [1] and caa.application.alpha == 0.5


def test_a_heads_plan_counts_the_heads_it_steers(tiny: LoadedModel) -> None:
    planner = _planner(
        tiny,
        "++search_space.site=[heads]",
        "++search_space.head_point=[post_o_proj]",
        heads=True,
    )
    params: dict[str, Any] = {
        "site": "heads",
        "head_ratio": 0.25,
        "head_point": "post_o_proj",
        "head_mode": "add",
        "aggregation": "last",
        "alpha": 0.5,
        "positions": "all",
    }
    plan = planner.plan(params)
    heads = plan.application.heads
    assert heads is not None
    n = sum(len(chosen) for chosen in heads.values())
    assert n >= 1 and plan.info[HEADS_STEERED_ATTR] == pytest.approx(n)
    assert 0.0 <= plan.info[PROBE_ACCURACY_ATTR] <= 1.0
