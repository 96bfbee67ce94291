"""Head-site and gated studies end to end on the tiny Llama: space, trials, bundle, replay."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch

from hpo import load_bundle
from hpo.core.selection import pick_trial
from hpo.export.bundle import STEERING_JSON
from hpo.export.control_vector import FILENAME as CONTROL_VECTOR
from hpo.export.writer import write_bundle
from hpo.steering.hooks import steer
from search_spaces import distributions, suggest
from tests.conftest import compose_run, tiny_overrides
from tests.hpo_tests.run_tests.test_study import run_study

HEADS = (
    "++search_space.site=[heads]",
    "++search_space.head_point=[post_o_proj]",
    "++search_space.head_mode=[add_norm_preserving]",
    "++search_space.probe_gate=[present]",
    "search_space.alpha.low=0.5",
    "search_space.alpha.high=1.0",
)


@pytest.fixture(scope="module")
def head_study(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Any:
    out = tmp_path_factory.mktemp("heads-run")
    cfg = compose_run(*tiny_overrides(tiny_model_dir, out), "study.n_trials=3", *HEADS)
    study, worker = run_study(cfg)
    bundle = write_bundle(worker, study, pick_trial(study, None), out / "bundle")
    return study, worker, bundle


def test_a_default_space_has_no_head_or_gate_dimensions() -> None:
    cfg = compose_run()
    names = set(distributions(cfg.search_space))
    assert not names & {"site", "head_ratio", "head_point", "head_mode", "trigger", "probe_gate"}


def test_a_heads_space_samples_head_dimensions_instead_of_layers() -> None:
    cfg = compose_run("search_space=heads")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    sites = set()
    for _ in range(12):
        trial = study.ask()
        params = suggest(trial, cfg.search_space)
        sites.add(params["site"])
        if params["site"] == "heads":
            assert "layer" not in trial.params and "method" not in trial.params
            assert {"head_ratio", "head_point", "head_mode"} <= set(trial.params)
            assert params["mode"] == params["head_mode"] and params["method"] == "caa"
        else:
            assert "layer" in trial.params and "head_ratio" not in trial.params
        study.tell(trial, 0.0)
    assert sites == {"residual", "heads"}


def test_a_heads_trial_steers_the_top_heads_and_records_its_cost(head_study: Any) -> None:
    study, worker, _bundle = head_study
    steered = [t for t in study.get_trials() if t.number > 0]
    assert steered and all(t.state == optuna.trial.TrialState.COMPLETE for t in steered)
    total = worker.planner.heads.n_heads * len(worker.loaded.blocks)
    for t in steered:
        assert t.user_attrs["heads_steered"] == max(1, round(t.params["head_ratio"] * total))
        assert t.user_attrs["time_vector_s"] < 0.05  # the probes were fitted once, up front


def test_a_heads_bundle_replays_the_trials_steering_and_skips_the_control_vector(
    head_study: Any,
) -> None:
    _study, worker, bundle_dir = head_study
    meta = json.loads((bundle_dir / STEERING_JSON).read_text())
    app = meta["application"]
    assert app["site"] == "heads" and app["gate"]["probe"] == "present"
    assert meta["control_vector"]["file"] is None
    assert "attention heads" in meta["control_vector"]["skipped"]
    assert not (bundle_dir / CONTROL_VECTOR).exists()
    card = (bundle_dir / "README.md").read_text()
    assert "attention heads" in card
    # How to apply it by hand names the head tensors and the gate, not block outputs.
    assert "`head.<L>.<H>`" in card and "Probe gate" in card and "`layer.<L>`" not in card
    n = sum(len(v) for v in app["heads"].values())
    assert f"name: steering-{meta['trait']}-caa-heads{n}-gated" in card
    bundle = load_bundle(bundle_dir)
    plan = worker.plan(meta["study"]["params"])
    model, blocks = worker.loaded.model, worker.loaded.blocks
    ids = torch.tensor([worker.loaded.tokenizer.encode("Hello there, how are you today?")])
    with torch.inference_mode():
        plain = model(ids).logits
        with bundle.apply(model):
            via_bundle = model(ids).logits
        with steer(model, blocks, plan.vectors, plan.application):
            via_plan = model(ids).logits
    assert torch.equal(via_bundle, via_plan)
    assert not torch.equal(via_bundle, plain)
