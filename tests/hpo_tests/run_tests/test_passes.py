"""Several trials in one batched pass (`study.trials_per_pass`) on the worker: each trial's
score, texts, KL and fluency equal that trial scored alone.

Generation on the real SmolLM2 (texts token for token, with left padding, stop strings, the
reused prompt prefix, every mode and positions rule), A/B letters and multiple-choice options on
the tiny Llama. The hooks themselves: `tests/hpo_tests/steering_tests/test_row_groups.py`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from optuna.trial import TrialState

from hpo.core.record import FAIL_REASON_ATTR, PASS_SIZE_ATTR
from hpo.model.loading import LoadedModel
from hpo.run.passes import run_pass, run_passes
from hpo.run.study import open_study, prepare_worker
from hpo.run.trial import TrialRunner
from hpo.run.worker import Plan, Worker
from hpo.steering.hooks import steer, steer_groups
from objectives.kl import kl_per_prompt_groups
from tests.conftest import compose_run, tiny_overrides
from tests.hpo_tests.run_tests.test_study import run_study, tiny_run


def _plans(worker: Worker, params: list[dict[str, Any]]) -> list[Plan]:
    return [worker.plan({"method": "caa", **p}) for p in params]


def _alone_and_together(
    worker: Worker, plans: list[Plan]
) -> tuple[list[Any], list[Any], list[list[tuple[int, float]]]]:
    prepared = worker.validation
    alone = [worker.score(plan, prepared) for plan in plans]
    heard: list[list[tuple[int, float]]] = [[] for _ in plans]
    reports = [
        (lambda step, value, items=None, g=g: heard[g].append((step, value)))
        for g in range(len(plans))
    ]
    together = worker.score_groups(plans, prepared, reports)
    return alone, together, heard


@pytest.fixture(scope="module")
def demo_worker(smollm2: LoadedModel) -> Worker:
    cfg = compose_run(
        "experiment=demo",
        "task.splits.train=16",
        "task.splits.validation=3",
        "task.objective.batch_size=2",  # two batches, the second one shorter: left padding
        "task.objective.max_new_tokens=8",
        "task.objective.kl.n_prompts=3",
        "search_space.positions=[all,prompt_end_onward,generated]",
        "search_space.mode=[add,add_norm_preserving,ablate]",
    )
    return prepare_worker(cfg)


def test_generation_trials_in_one_pass_match_each_trial_alone(demo_worker: Worker) -> None:
    plans = _plans(
        demo_worker,
        [
            {
                "layer": 12,
                "alpha": 0.6,
                "method": "caa",
                "aggregation": "mean",
                "positions": "prompt_end_onward",
            },
            {
                "layer": 20,
                "alpha": -0.8,
                "method": "caa",
                "aggregation": "last",
                "positions": "all",
            },
            {
                "layer": 8,
                "alpha": 0.9,
                "method": "caa",
                "aggregation": "choice",
                "positions": "generated",
                "mode": "add_norm_preserving",
            },
            {
                "layer": 15,
                "method": "caa",
                "aggregation": "mean",
                "positions": "prompt_end_onward",
                "mode": "ablate",
            },
        ],
    )
    alone, together, heard = _alone_and_together(demo_worker, plans)
    for g, (a, t) in enumerate(zip(alone, together, strict=True)):
        assert t.continuations == a.continuations, f"trial {g}"
        assert t.per_item == pytest.approx(a.per_item, abs=1e-9)
        assert t.metrics["kl"] == pytest.approx(a.metrics["kl"], rel=1e-3, abs=1e-5)
        assert t.metrics["perplexity"] == pytest.approx(a.metrics["perplexity"], rel=1e-5)
        assert t.constraints == pytest.approx(a.constraints, rel=1e-4)
        assert [step for step, _ in heard[g]] == [0, 1]
        assert heard[g][-1][1] == pytest.approx(a.value, abs=1e-9)
    assert len({tuple(map(tuple, a.continuations)) for a in alone}) == len(alone)


def test_generation_with_stop_strings_in_one_pass(smollm2: LoadedModel) -> None:
    cfg = compose_run(
        "experiment=demo",
        "task.splits.train=16",
        "task.splits.validation=3",
        "task.objective.max_new_tokens=12",
        "task.objective.kl.enabled=false",
        "+task.objective.stop=['.','!']",
        "search_space.positions=[all,prompt_end_onward,generated]",
    )
    worker = prepare_worker(cfg)
    plans = _plans(
        worker,
        [
            {
                "layer": 10,
                "alpha": 0.7,
                "method": "caa",
                "aggregation": "mean",
                "positions": "generated",
            },
            {
                "layer": 22,
                "alpha": 0.5,
                "method": "caa",
                "aggregation": "mean",
                "positions": "prompt_end_onward",
            },
            {
                "layer": 16,
                "alpha": -0.6,
                "method": "caa",
                "aggregation": "last",
                "positions": "all",
            },
        ],
    )
    alone, together, _ = _alone_and_together(worker, plans)
    for a, t in zip(alone, together, strict=True):
        assert t.continuations == a.continuations
        assert t.texts == a.texts
    texts = [text for a in alone for text in a.texts]
    assert all("." not in text and "!" not in text for text in texts)
    lengths = {len(c) for a in alone for c in a.continuations}
    assert min(lengths) < 12, "some row stopped at a stop string"


def test_kl_of_trials_in_one_pass_matches_each_alone(demo_worker: Worker) -> None:
    ref = demo_worker.kl_reference("validation")
    assert ref is not None
    loaded = demo_worker.loaded
    plans = _plans(
        demo_worker,
        [
            {
                "layer": 12,
                "alpha": 0.6,
                "method": "caa",
                "aggregation": "mean",
                "positions": "prompt_end_onward",
            },
            {
                "layer": 12,
                "alpha": 0.6,
                "method": "caa",
                "aggregation": "mean",
                "positions": "all",
            },
        ],
    )
    steerings = [(p.vectors, p.application) for p in plans]
    alone = []
    for vectors, app in steerings:
        with steer(loaded.model, loaded.blocks, vectors, app) as handle:
            alone.append(kl_per_prompt_groups(loaded.model, ref, [handle])[0])
    with steer_groups(loaded.model, loaded.blocks, steerings) as handles:
        together = kl_per_prompt_groups(loaded.model, ref, handles)
    for a, t in zip(alone, together, strict=True):
        assert t == pytest.approx(a, rel=1e-3, abs=1e-5)
    assert alone[0] != pytest.approx(alone[1])


@pytest.mark.parametrize("task", ["sycophancy", "bbq"])
def test_choice_trials_in_one_pass_match_each_trial_alone(
    task: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    cfg = compose_run(
        *tiny_overrides(tiny_model_dir, tmp_path),
        f"task={task}",
        "task.splits.train=8",
        "task.splits.validation=4",
        "task.objective.batch_size=3",
        "search_space.positions=[all,prompt_end_onward,generated]",
        "search_space.mode=[add,add_norm_preserving,ablate]",
        "search_space.window.high=2",
    )
    worker = prepare_worker(cfg)
    plans = _plans(
        worker,
        [
            {
                "layer": 1,
                "alpha": 0.9,
                "method": "caa",
                "aggregation": "mean",
                "positions": "prompt_end_onward",
            },
            {
                "layer": 2,
                "window": 2,
                "alpha": -0.7,
                "method": "caa",
                "aggregation": "last",
                "positions": "all",
            },
            {
                "layer": 0,
                "method": "caa",
                "aggregation": "mean",
                "positions": "generated",
                "mode": "ablate",
            },
        ],
    )
    assert all(worker.shares_pass(p) for p in plans)
    alone, together, heard = _alone_and_together(worker, plans)
    for a, t in zip(alone, together, strict=True):
        assert t.per_item == pytest.approx(a.per_item, rel=1e-4, abs=1e-6)
        assert t.per_letter == pytest.approx(a.per_letter, rel=1e-4, abs=1e-6)
    assert all(len(h) == len(worker.validation.batches) for h in heard)
    assert len({round(a.value, 6) for a in alone}) == len(alone)


def test_a_trial_the_residual_cache_serves_does_not_share_a_pass(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    cfg = compose_run(*tiny_overrides(tiny_model_dir, tmp_path), "search_space.positions=[all]")
    worker = prepare_worker(cfg)
    [plan] = _plans(
        worker, [{"layer": 1, "alpha": 0.5, "aggregation": "mean", "positions": "all"}]
    )
    assert worker.residual is not None and not worker.shares_pass(plan)
    with pytest.raises(ValueError, match="residual cache"):
        worker.score_groups([plan, plan], worker.validation, [None, None])


def test_a_study_in_passes_keeps_its_exact_budget_and_each_trial_scores_as_alone(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    cfg = tiny_run(
        tiny_model_dir,
        tmp_path,
        "study.n_trials=8",
        "study.trials_per_pass=3",
        "search_space.positions=[all,prompt_end_onward]",
        "search_space.layers.high=2",
        "search_space.window.high=2",
        "pruner=none",
    )
    study, worker = run_study(cfg)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 8
    assert trials[0].user_attrs["baseline"] is True and trials[0].params["alpha"] == 0.0
    sizes = [t.user_attrs.get(PASS_SIZE_ATTR) for t in trials]
    assert 3 in sizes, sizes  # trials really shared passes
    # TPE's constant liar: the trials of one pass are not the same point.
    steered = [t for t in trials if t.number > 0]
    assert len({tuple(sorted(t.params.items())) for t in steered}) == len(steered)
    for t in steered:
        alone = worker.score(t.params, worker.validation)
        assert alone.value == pytest.approx(t.value, rel=1e-4, abs=1e-6), t.number
    # Resuming a finished study in passes adds nothing.
    runner = TrialRunner(worker)
    run_passes(open_study(cfg), runner, cfg.study.n_trials, 3)
    assert len(open_study(cfg).get_trials()) == 8


def test_a_failing_trial_in_a_pass_fails_alone(tiny_model_dir: Path, tmp_path: Path) -> None:
    # One train pair: its paired differences do not vary, so pca finds no direction (a
    # TrialFailure while the plan is built) while caa still has one.
    cfg = tiny_run(
        tiny_model_dir,
        tmp_path,
        "study.n_trials=3",
        "task.splits.train=1",
        "task.objective.balance=none",
        "search_space.method=[caa,pca]",
        "pruner=none",
    )
    study = open_study(cfg)  # enqueues the baseline as trial 0
    worker = prepare_worker(cfg)
    study.enqueue_trial({"layer": 1, "alpha": 0.5, "aggregation": "mean", "method": "pca"})
    study.enqueue_trial({"layer": 2, "alpha": 0.5, "aggregation": "mean", "method": "caa"})
    states = run_pass(study, TrialRunner(worker), cfg.study.n_trials, 3)
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    trials = study.get_trials()
    assert "pca" in trials[1].user_attrs[FAIL_REASON_ATTR]
    assert trials[2].user_attrs[PASS_SIZE_ATTR] == 2  # the baseline and trial 2 shared a pass
    alone = worker.score(trials[2].params, worker.validation)
    assert alone.value == pytest.approx(trials[2].value, rel=1e-4, abs=1e-6)


def test_a_trial_past_the_budget_in_a_pass_fails_before_any_work(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    cfg = tiny_run(tiny_model_dir, tmp_path, "study.n_trials=2", "pruner=none")
    study = open_study(cfg)
    worker = prepare_worker(cfg)
    # Asked as two racing workers would: three trials for a budget of two.
    states = run_pass(study, TrialRunner(worker), cfg.study.n_trials, 3)
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.FAIL]
    over = study.get_trials()[2]
    assert "over budget" in over.user_attrs[FAIL_REASON_ATTR]
    assert "time_score_s" not in over.user_attrs
    # The study is done: another pass asks nothing more.
    run_passes(study, TrialRunner(worker), cfg.study.n_trials, 3)
    assert len(study.get_trials()) == 3
