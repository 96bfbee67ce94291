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

from hpo.model.loading import LoadedModel
from hpo.run.study import prepare_worker
from hpo.run.worker import Plan, Worker
from hpo.steering.hooks import steer, steer_groups
from objectives.kl import kl_per_prompt_groups
from tests.conftest import compose_run, tiny_overrides


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
        assert t.extras["continuations"] == a.extras["continuations"], f"trial {g}"
        assert t.per_item == pytest.approx(a.per_item, abs=1e-9)
        assert t.metrics["kl"] == pytest.approx(a.metrics["kl"], rel=1e-3, abs=1e-5)
        assert t.metrics["perplexity"] == pytest.approx(a.metrics["perplexity"], rel=1e-5)
        assert t.extras["constraints"] == pytest.approx(a.extras["constraints"], rel=1e-4)
        assert [step for step, _ in heard[g]] == [0, 1]
        assert heard[g][-1][1] == pytest.approx(a.value, abs=1e-9)
    assert len({tuple(map(tuple, a.extras["continuations"])) for a in alone}) == len(alone)


def test_generation_with_stop_strings_in_one_pass(smollm2: LoadedModel) -> None:
    cfg = compose_run(
        "experiment=demo",
        "task.splits.train=16",
        "task.splits.validation=3",
        "task.objective.max_new_tokens=12",
        "task.objective.kl.enabled=false",
        "task.objective.stop=['.','!']",
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
        assert t.extras["continuations"] == a.extras["continuations"]
        assert t.extras["texts"] == a.extras["texts"]
    texts = [text for a in alone for text in a.extras["texts"]]
    assert all("." not in text and "!" not in text for text in texts)
    lengths = {len(c) for a in alone for c in a.extras["continuations"]}
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
    [plan] = _plans(worker, [{"layer": 1, "alpha": 0.5, "aggregation": "mean"}])
    assert worker.residual is not None and not worker.shares_pass(plan)
    with pytest.raises(ValueError, match="residual cache"):
        worker.score_groups([plan, plan], worker.validation, [None, None])
