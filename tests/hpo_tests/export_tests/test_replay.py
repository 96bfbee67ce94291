"""Every method x aggregation x mode x positions (and multi-layer windows) is exported as a bundle
whose `load_bundle(...).apply(model)` reproduces the trial's validation score exactly."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState

from hpo import ADD_MODES, AGGREGATIONS, METHODS, MODES, POSITIONS, load_bundle
from hpo.core.selection import pick_trial
from hpo.export.bundle import STEERING_JSON
from hpo.export.writer import write_bundle
from tests.hpo_tests.run_tests.test_study import run_study, tiny_run

ALPHA = 0.7


def _combinations() -> list[dict[str, Any]]:
    """Every method x mode x positions, with the aggregation rotated so that every pair of
    values of any two dimensions occurs (aggregation only picks which cached activations build
    the vector), plus three-layer windows for every method x mode."""
    out = []
    for (i, method), (j, mode), (k, positions) in itertools.product(
        enumerate(METHODS), enumerate(MODES), enumerate(POSITIONS)
    ):
        aggregation = AGGREGATIONS[(i + j + k) % len(AGGREGATIONS)]
        params = {"layer": 1, "window": 1, "mode": mode, "aggregation": aggregation}
        params |= {"method": method, "positions": positions}
        if mode in ADD_MODES:
            params["alpha"] = ALPHA
        out.append(params)
    for (i, method), mode in itertools.product(enumerate(METHODS), MODES):
        params = {"layer": 0, "window": 3, "mode": mode, "aggregation": AGGREGATIONS[i % 3]}
        params |= {"method": method, "positions": "all"}
        if mode in ADD_MODES:
            params["alpha"] = -ALPHA
        out.append(params)
    return out


def test_the_combinations_cover_every_pair_of_values() -> None:
    combos = _combinations()[: len(METHODS) * len(MODES) * len(POSITIONS)]
    dims = {"method": METHODS, "aggregation": AGGREGATIONS, "mode": MODES}
    dims["positions"] = POSITIONS
    for (a, va), (b, vb) in itertools.combinations(dims.items(), 2):
        seen = {(c[a], c[b]) for c in combos}
        assert seen == set(itertools.product(va, vb)), (a, b)


@pytest.fixture(scope="module")
def replay_study(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_finetuned_dir: Path
) -> tuple[optuna.Study, Any, Path]:
    out = tmp_path_factory.mktemp("replay")
    combos = _combinations()
    cfg = tiny_run(
        tiny_model_dir,
        out,
        f"study.n_trials={len(combos) + 1}",
        "search_space.method=[caa,pca,probe,model_diff]",
        "search_space.aggregation=[last,mean,choice]",
        "search_space.mode=[add,add_norm_preserving,ablate]",
        "search_space.positions=[all,prompt_end_onward,generated]",
        "search_space.layers.high=1",
        "search_space.window.high=3",
        f"model_diff.name_or_path={tiny_finetuned_dir}",
        "log_level=WARNING",
    )
    from hpo.run.study import open_study

    study = open_study(cfg)
    for params in combos:
        study.enqueue_trial(params)
    study, worker = run_study(cfg)
    return study, worker, out


def test_every_combination_completes_with_its_params_recorded(
    replay_study: tuple[optuna.Study, Any, Path],
) -> None:
    study, _, _ = replay_study
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * len(trials)
    steered = [t for t in trials if not t.user_attrs.get("baseline")]
    assert len(steered) == len(_combinations())
    for t in steered:
        assert ("alpha" in t.params) == (t.params["mode"] != "ablate")
        first = t.params["layer"]
        assert t.user_attrs["layers"] == list(range(first, first + t.params["window"]))
        if t.params["method"] == "probe":
            assert 0.0 <= t.user_attrs["probe_accuracy"] <= 1.0
        if t.params["mode"] in ADD_MODES:
            want = t.params["alpha"] / t.params["window"]
            assert t.user_attrs["derived.layer_alpha"] == pytest.approx(want)
    # model_diff really uses the second model: it differs from caa on the same cache.
    caa = next(t for t in steered if t.params["method"] == "caa" and t.params["mode"] == "add")
    twin = {**caa.params, "method": "model_diff"}
    other = next(t for t in steered if t.params == twin)
    assert other.user_attrs["vector_norm"] == pytest.approx(caa.user_attrs["vector_norm"])
    assert other.value != caa.value


def test_bundles_replay_every_trial_score_exactly(
    replay_study: tuple[optuna.Study, Any, Path], tiny_model_dir: Path
) -> None:
    study, worker, out = replay_study
    model = worker.loaded.model
    mismatches = []
    for trial in study.get_trials():
        if trial.user_attrs.get("baseline"):
            continue
        path = write_bundle(worker, study, pick_trial(study, trial.number), out / "b", force=True)
        meta = json.loads((path / STEERING_JSON).read_text())
        bundle = load_bundle(path)
        assert bundle.application.mode == trial.params["mode"] == meta["application"]["mode"]
        assert sorted(bundle.vectors) == trial.user_attrs["layers"]
        reuse = bundle.application.positions_rule.reuses_prompt_prefix
        with bundle.apply(model):
            replayed = worker.objective.score(model, worker.validation, reuse_prefix=reuse)
        if replayed.value != trial.value:
            mismatches.append((trial.params, trial.value, replayed.value))
    assert mismatches == []


def test_add_mode_bundles_at_alpha_zero_are_the_unsteered_model(
    replay_study: tuple[optuna.Study, Any, Path],
) -> None:
    study, worker, out = replay_study
    model = worker.loaded.model
    ids = worker.loaded.tokenizer("Is the sky green?\nAnswer: (", return_tensors="pt").input_ids
    with torch.inference_mode():
        plain = model(ids).logits
    for mode in ADD_MODES:
        trial = next(
            t
            for t in study.get_trials()
            if t.params.get("window") == 3 and t.params["mode"] == mode
        )
        bundle = load_bundle(write_bundle(worker, study, trial, out / f"zero-{mode}"))
        assert bundle.application.scales == dict.fromkeys([0, 1, 2], pytest.approx(1 / 3))
        with torch.inference_mode(), bundle.apply(model) as handle:
            steered = model(ids).logits
            bundle.alpha = 0.0
            assert handle.alpha == 0.0
            zero = model(ids).logits
        assert torch.equal(zero, plain)
        assert not torch.allclose(steered, plain)


def test_hooks_are_removed_when_the_body_raises(
    replay_study: tuple[optuna.Study, Any, Path],
) -> None:
    study, worker, out = replay_study
    model = worker.loaded.model
    trial = next(t for t in study.get_trials() if t.params.get("window") == 3)
    bundle = load_bundle(write_bundle(worker, study, trial, out / "raise"))

    def hooks() -> int:
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

    before = hooks()
    with pytest.raises(ValueError, match="inside"), bundle.apply(model):
        assert hooks() == before + 4
        raise ValueError("inside")
    assert hooks() == before
