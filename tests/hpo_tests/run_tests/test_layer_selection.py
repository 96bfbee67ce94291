"""`search_space.layer_selection`: the ranking's arithmetic, and a real study on the tiny Llama
that enqueues the top layers first or searches only the narrowed window."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpo.core.errors import UserError
from hpo.core.record import BASELINE_ATTR
from hpo.run.layer_selection import (
    SELECTION_ATTR,
    LayerRanking,
    candidate_layers,
    enqueue_params,
    narrowed,
)
from hpo.run.study import check_config, open_study, prepare_worker, run_trials
from hpo.steering.attribution import LayerEffect
from tests.conftest import compose_run, tiny_overrides


def ranking(effects: list[float], alpha: tuple[float, float]) -> LayerRanking:
    rows = [LayerEffect(i, e, 0.1, abs(e)) for i, e in enumerate(effects)]
    setup = {"method": "caa", "aggregation": "choice", "positions": "all"}
    return LayerRanking(rows, alpha, list(range(1, len(effects))), setup)


def test_a_signed_alpha_range_ranks_by_size_and_a_positive_one_by_sign() -> None:
    effects = [9.0, 1.0, -5.0, 3.0, 0.5]  # layer 0 lies outside the candidates
    assert ranking(effects, (-1.0, 1.0)).top(2) == [2, 3]
    assert ranking(effects, (0.1, 1.2)).top(2) == [3, 1]
    assert ranking(effects, (0.1, 1.2)).gain(LayerEffect(2, -5.0, 0, 5)) == pytest.approx(-0.5)


def test_the_window_is_the_top_k_wide_run_of_highest_summed_gain() -> None:
    r = ranking([0.0, 1.0, 4.0, 0.0, 3.0, 3.0, 0.0], (0.0, 1.0))
    assert r.window(2) == (4, 5)  # 3 + 3 beats 1 + 4
    assert r.window(3) == (2, 4)  # 7 beats 6
    record = r.record(2)
    assert record["top"] == [2, 4] and record["window"] == [4, 5]


def test_enqueued_trials_take_half_the_favourable_alpha_bound() -> None:
    space = compose_run("search_space.layers.low=1", "search_space.layers.high=6").search_space
    record = ranking([0.0, 2.0, -6.0, 0.0], (-1.0, 0.8)).record(2)
    first, second = enqueue_params(space, record)
    assert (first["layer"], first["alpha"]) == (2, -0.5)
    assert (second["layer"], second["alpha"]) == (1, 0.4)
    assert first["aggregation"] == "choice" and first["mode"] == "add"
    layers = narrowed(space, record).layers
    assert (layers.low, layers.high) == tuple(record["window"]) == (1, 2)


def test_layer_selection_refuses_layer_sets_and_a_top_k_above_the_range() -> None:
    with pytest.raises(UserError, match="needs a layer range"):
        candidate_layers(compose_run("search_space.layer_sets=[[3],[5]]").search_space)
    space = compose_run(
        "search_space.layers.low=3",
        "search_space.layers.high=5",
        "search_space.layer_selection.top_k=4",
    ).search_space
    with pytest.raises(UserError, match="top_k must be <= the 3 layers"):
        candidate_layers(space)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["enqueue", "narrow"])
def test_a_study_runs_the_top_layers_first_or_only_the_window(
    tiny_model_dir: Path, tmp_path: Path, mode: str
) -> None:
    cfg = compose_run(
        *tiny_overrides(tiny_model_dir, tmp_path),
        f"search_space.layer_selection.mode={mode}",
        "search_space.layer_selection.top_k=2",
        "study.n_trials=5",
    )
    task = check_config(cfg)
    study = open_study(cfg)
    run_trials(study, prepare_worker(cfg, task), cfg.study.n_trials)
    record = study.user_attrs[SELECTION_ATTR]
    assert len(record["layers"]) == 4 and len(record["top"]) == 2
    trials = study.get_trials()
    assert trials[0].user_attrs.get(BASELINE_ATTR)
    steered = trials[1:]
    if mode == "enqueue":
        assert [t.params["layer"] for t in steered[:2]] == record["top"]
    else:
        low, high = record["window"]
        assert high - low == 1
        assert all(low <= t.params["layer"] <= high for t in steered)
