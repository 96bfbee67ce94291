"""Replay is a contract, on the shipped model, for every positions mode: an exported generation
bundle's recorded samples come back token for token through `hpo generate replay=true` and
through `load_bundle(...).apply(model)` + plain `model.generate`, and re-scoring the held-out test
split through the public API gives the bundle's reported score. A bundle whose positions are not
`all` also records what llama.cpp's control vector (every position) does on the test split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from hpo import POSITIONS, load_bundle
from hpo.cli.command import main
from hpo.export.bundle import STEERING_JSON
from hpo.export.writer import write_bundle
from hpo.model.decoding import finish
from hpo.model.loading import LoadedModel
from hpo.run.tasks import load_task
from objectives import make_objective
from tests.conftest import compose_run
from tests.hpo_tests.run_tests.test_study import run_study

pytestmark = pytest.mark.slow

LAYER, ALPHA, MAX_NEW = 9, 0.8, 12


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One sentiment study on SmolLM2 with the same vector at each positions mode, exported."""
    out = tmp_path_factory.mktemp("replay-generation")
    cfg = compose_run(
        "task=sentiment",
        "search_space=sentiment",
        f"output_dir={out}",
        f"study.n_trials={len(POSITIONS) + 1}",
        "study.name=replay",
        "task.splits={train: 8, validation: 4, test: 4, seed: 0}",
        f"task.objective.max_new_tokens={MAX_NEW}",
        "task.objective.kl.n_prompts=2",
        "task.objective.kl.max_new_tokens=4",
        f"search_space.layers={{low: {LAYER}, high: {LAYER}}}",
        "search_space.aggregation=[mean]",
        f"search_space.positions=[{','.join(POSITIONS)}]",
        "log_level=WARNING",
        "task.instruction=null",  # the enqueued trials right after the baseline
        "export.require_gain=false",  # 4 test items: replay must hold for any bundle
    )
    from hpo.run.study import open_study

    study = open_study(cfg)
    for positions in POSITIONS:
        study.enqueue_trial(
            {"layer": LAYER, "window": 1, "alpha": ALPHA, "aggregation": "mean"}
            | {"method": "caa", "mode": "add", "positions": positions}
        )
    study, worker = run_study(cfg)
    paths = {}
    for trial in study.get_trials():
        if trial.user_attrs.get("baseline"):
            continue
        positions = trial.params["positions"]
        # Written as they are, feasible or not: replay must hold for any bundle.
        paths[positions] = write_bundle(worker, study, trial, out / positions, force=True)
    return {"cfg": cfg, "study": study, "worker": worker, "paths": paths}


def _meta(path: Path) -> dict[str, Any]:
    return dict(json.loads((path / STEERING_JSON).read_text()))


@pytest.mark.parametrize("positions", POSITIONS)
def test_recorded_samples_replay_through_hpo_generate(
    bundles: dict[str, Any], positions: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = bundles["paths"][positions]
    samples = load_bundle(path).samples()
    assert len(samples) == 3
    assert all(s["steered_ids"] and s["unsteered_ids"] for s in samples)
    assert main(["generate", f"bundle={path}", "replay=true"]) == 0
    out = capsys.readouterr().out
    assert "replay      3/3 steered and 3/3 unsteered samples identical" in out
    for sample in samples:
        assert f"=== prompt: {sample['prompt']}\n" in out
        assert f"\n{sample['steered']}\n" in out


@pytest.mark.parametrize("positions", POSITIONS)
def test_recorded_samples_replay_through_load_bundle_and_plain_generate(
    bundles: dict[str, Any], smollm2: LoadedModel, positions: str
) -> None:
    bundle = load_bundle(bundles["paths"][positions])
    model, tok = smollm2.model, smollm2.tokenizer
    for sample in bundle.samples():
        text = bundle.prompt(tok, sample["prompt"])
        assert text == sample["text"]  # the way docs/bundle.md builds the prompt
        inputs = tok(text, return_tensors="pt")
        n = inputs["input_ids"].shape[1]
        with torch.inference_mode(), bundle.apply(model):
            out = model.generate(
                **inputs, max_new_tokens=MAX_NEW, do_sample=False, pad_token_id=tok.pad_token_id
            )
        ids, text_out = finish(tok, out[0, n:].tolist())
        assert ids == sample["steered_ids"], (positions, sample["prompt"])
        assert text_out.strip() == sample["steered"]


@pytest.mark.parametrize("positions", POSITIONS)
def test_rescoring_the_test_split_gives_the_reported_score(
    bundles: dict[str, Any], smollm2: LoadedModel, positions: str
) -> None:
    cfg = bundles["cfg"]
    bundle = load_bundle(bundles["paths"][positions])
    objective = make_objective(cfg.task, smollm2.tokenizer)
    prepared = objective.prepare(load_task(cfg.task).test())
    with bundle.apply(smollm2.model):
        score = objective.score(smollm2.model, prepared)
    assert score.value == bundle.meta["metrics"]["test"]["steered"]


def test_positions_modes_really_differ(bundles: dict[str, Any]) -> None:
    texts = {
        positions: [s["steered_ids"] for s in load_bundle(path).samples()]
        for positions, path in bundles["paths"].items()
    }
    assert texts["all"] != texts["prompt_end_onward"] != texts["generated"]


def test_llama_cpp_expectation_is_measured_when_positions_are_not_all(
    bundles: dict[str, Any],
) -> None:
    paths = bundles["paths"]
    assert "measured" not in _meta(paths["all"])["control_vector"]
    every = _meta(paths["all"])["metrics"]["test"]
    for positions in ("prompt_end_onward", "generated"):
        meta = _meta(paths[positions])
        measured = meta["control_vector"]["measured"]
        # Steering every position is exactly the `all` bundle's test measurement.
        assert measured["steered"] == pytest.approx(every["steered"])
        assert measured["baseline"] == meta["metrics"]["test"]["baseline"]
        assert measured["n"] == 4 and len(measured["ci95"]) == 2
        assert {"perplexity", "distinct2"} <= set(measured["fluency"])
        assert "kl" in measured["metrics"]
        card = (paths[positions] / "README.md").read_text()
        assert "| `all` (llama.cpp) | 4 |" in card


def test_bundle_records_where_it_was_measured(bundles: dict[str, Any]) -> None:
    meta = _meta(bundles["paths"]["all"])
    assert meta["environment"]["transformers"] and meta["environment"]["torch"]
    assert meta["generation"] == {"max_new_tokens": MAX_NEW, "stop": [], "chat_template": True}


def test_replay_refuses_an_alpha_override(bundles: dict[str, Any]) -> None:
    path = bundles["paths"]["all"]
    assert main(["generate", f"bundle={path}", "replay=true", "alpha=0.1"]) == 2
