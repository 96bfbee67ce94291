"""Several trials in one batched pass (`study.trials_per_pass`): each row group steered by its
own trial equals that trial alone, for every site, mode, positions rule and gate.

The hooks are checked position by position on tiny random models (forward logits and greedy
text); the objectives and the worker on the real SmolLM2 (generation: texts token for token,
score, KL, fluency) and on the tiny Llama (A/B letters and multiple-choice options).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from hpo.model.blocks import find_blocks
from hpo.model.decoding import generate_ids
from hpo.model.kv import RepeatedPrefixes, repeat_rows
from hpo.model.loading import LoadedModel
from hpo.run.study import prepare_worker
from hpo.run.worker import Plan, Worker
from hpo.steering.application import Application
from hpo.steering.gates import Gate
from hpo.steering.handle import RowGroup
from hpo.steering.heads import head_shape
from hpo.steering.hooks import steer, steer_groups
from objectives.kl import kl_per_prompt_groups
from tests.conftest import compose_run, tiny_overrides
from tests.hpo_tests.test_architectures import HIDDEN, PAD, PROMPTS, _build, _hook_count

LAYER = 1


def _steerings(model: nn.Module) -> list[tuple[dict[int, torch.Tensor], Application]]:
    """Five trials' steering, as different as the hook layer allows: both sites, every mode,
    every positions rule, a trigger gate and a probe gate."""
    n_heads, head_dim = head_shape(model, find_blocks(model))
    g = torch.Generator().manual_seed(7)
    v = [torch.randn(HIDDEN, generator=g) * 2 for _ in range(3)]
    head_vector = torch.randn(n_heads * head_dim, generator=g) * 3
    probe = {LAYER: (torch.randn(HIDDEN, generator=g), 0.0)}
    heads = {LAYER: (0, 2)}
    return [
        ({LAYER: v[0]}, Application(alpha=1.5, positions="all", mode="add")),
        (
            {0: v[1], 2: v[2]},
            Application(alpha=0.8, positions="prompt_end_onward", mode="add_norm_preserving"),
        ),
        (
            {LAYER: v[2]},
            Application(
                positions="generated",
                mode="ablate",
                gate=Gate(trigger="x", trigger_ids=torch.tensor([17, 90])),
            ),
        ),
        (
            {LAYER: head_vector},
            Application(alpha=1.2, site="heads", heads=heads, head_dim=head_dim, n_heads=n_heads),
        ),
        (
            {LAYER: v[0]},
            Application(
                alpha=-1.0,
                positions="prompt_end_onward",
                gate=Gate(probe="present", threshold=0.5, probes=probe),
            ),
        ),
        (
            {LAYER: head_vector},
            Application(
                alpha=0.7,
                positions="all",
                mode="add_norm_preserving",
                site="heads",
                heads=heads,
                head_dim=head_dim,
                n_heads=n_heads,
                head_point="post_o_proj",
            ),
        ),
    ]


def _padded(rows: list[list[int]]) -> dict[str, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("family", ["llama", "gpt2", "mistral"])
def test_each_row_group_steered_by_its_trial_equals_that_trial_alone(family: str) -> None:
    model, _ = _build(family)
    blocks = find_blocks(model)
    steerings = _steerings(model)
    k = len(steerings)
    prompts = [list(p) for p in PROMPTS]
    alone_logits, alone_text = [], []
    with torch.inference_mode():
        for vectors, app in steerings:
            with steer(model, blocks, vectors, app):
                alone_logits.append(model(**_padded(prompts)).logits)
                alone_text.append(generate_ids(model, PAD, prompts, 6))
        tiled = [p for p in prompts for _ in range(k)]
        with steer_groups(model, blocks, steerings) as handles:
            assert [h.group for h in handles] == [RowGroup(g, k) for g in range(k)]
            together = model(**_padded(tiled)).logits
            texts = generate_ids(model, PAD, tiled, 6)
    assert _hook_count(model) == 0
    for g in range(k):
        torch.testing.assert_close(together[g::k], alone_logits[g], atol=2e-5, rtol=1e-4)
        assert texts[g::k] == alone_text[g], f"trial {g}: greedy text differs"
    # The trials really differ, so a swapped group would be caught.
    assert len({tuple(map(tuple, t)) for t in alone_text}) > 2


def test_one_steering_in_steer_groups_is_plain_steer() -> None:
    model, _ = _build("llama")
    vectors, app = _steerings(model)[0]
    inputs = _padded([list(p) for p in PROMPTS])
    with torch.inference_mode():
        with steer(model, find_blocks(model), vectors, app):
            alone = model(**inputs).logits
        with steer_groups(model, find_blocks(model), [(vectors, app)]) as [handle]:
            assert handle.group is None
            grouped = model(**inputs).logits
    assert torch.equal(alone, grouped)


def test_a_batch_that_does_not_hold_its_groups_is_refused() -> None:
    model, _ = _build("llama")
    steerings = _steerings(model)[:3]
    with (
        torch.inference_mode(),
        steer_groups(model, find_blocks(model), steerings),
        pytest.raises(RuntimeError, match="does not hold 3 interleaved groups"),
    ):
        model(**_padded([list(PROMPTS[0])] * 4))
    assert _hook_count(model) == 0


def test_repeated_prefix_rows_interleave_and_keep_the_original() -> None:
    model, _ = _build("llama")
    with torch.inference_mode():
        out = model(**_padded([list(p) for p in PROMPTS]), use_cache=True)
    cache = out.past_key_values
    before = cache.layers[0].keys.clone()
    repeated = repeat_rows(cache, 3)
    assert repeated.layers[0].keys.shape[0] == 6
    torch.testing.assert_close(repeated.layers[0].keys[4], cache.layers[0].keys[1])
    assert torch.equal(cache.layers[0].keys, before)
    made = RepeatedPrefixes()
    assert made.get([cache], 0, 3) is made.get([cache], 0, 3)
    assert made.get([cache], 0, 1) is cache


def _plans(worker: Worker, params: list[dict[str, Any]]) -> list[Plan]:
    return [worker.plan(p) for p in params]


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
        "task.splits.validation=5",
        "task.objective.batch_size=3",  # two batches, the second one shorter: left padding
        "task.objective.max_new_tokens=10",
        "task.objective.kl.n_prompts=4",
        "search_space.positions=[all,prompt_end_onward,generated]",
        "search_space.mode=[add,add_norm_preserving,ablate]",
    )
    return prepare_worker(cfg)


def test_generation_trials_in_one_pass_match_each_trial_alone(demo_worker: Worker) -> None:
    plans = _plans(
        demo_worker,
        [
            {"layer": 12, "alpha": 0.6, "aggregation": "mean", "positions": "prompt_end_onward"},
            {"layer": 20, "alpha": -0.8, "aggregation": "last", "positions": "all"},
            {
                "layer": 8,
                "alpha": 0.9,
                "aggregation": "choice",
                "positions": "generated",
                "mode": "add_norm_preserving",
            },
            {
                "layer": 15,
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
        "task.splits.validation=4",
        "task.objective.max_new_tokens=16",
        "task.objective.kl.enabled=false",
        "task.objective.stop=[.,!]",
        "search_space.positions=[all,prompt_end_onward,generated]",
    )
    worker = prepare_worker(cfg)
    plans = _plans(
        worker,
        [
            {"layer": 10, "alpha": 0.7, "aggregation": "mean", "positions": "generated"},
            {"layer": 22, "alpha": 0.5, "aggregation": "mean", "positions": "prompt_end_onward"},
            {"layer": 16, "alpha": -0.6, "aggregation": "last", "positions": "all"},
        ],
    )
    alone, together, _ = _alone_and_together(worker, plans)
    for a, t in zip(alone, together, strict=True):
        assert t.extras["continuations"] == a.extras["continuations"]
        assert t.extras["texts"] == a.extras["texts"]
    texts = [text for a in alone for text in a.extras["texts"]]
    assert all("." not in text and "!" not in text for text in texts)
    lengths = {len(c) for a in alone for c in a.extras["continuations"]}
    assert min(lengths) < 16, "some row stopped at a stop string"


def test_kl_of_trials_in_one_pass_matches_each_alone(demo_worker: Worker) -> None:
    ref = demo_worker.kl_reference("validation")
    assert ref is not None
    loaded = demo_worker.loaded
    plans = _plans(
        demo_worker,
        [
            {"layer": 12, "alpha": 0.6, "aggregation": "mean", "positions": "prompt_end_onward"},
            {"layer": 12, "alpha": 0.6, "aggregation": "mean", "positions": "all"},
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
            {"layer": 1, "alpha": 0.9, "aggregation": "mean", "positions": "prompt_end_onward"},
            {"layer": 2, "window": 2, "alpha": -0.7, "aggregation": "last", "positions": "all"},
            {"layer": 0, "aggregation": "mean", "positions": "generated", "mode": "ablate"},
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
