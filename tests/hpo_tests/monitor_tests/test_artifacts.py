"""What the dashboard shows: the study note and the best trials' artifacts."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
from optuna.artifacts import download_artifact, get_all_artifact_meta
from optuna_dashboard import get_note
from safetensors.torch import load_file

from hpo.core.record import EXPORTED_ATTR
from hpo.monitor.artifacts import artifact_store, is_best_so_far
from hpo.monitor.note import record_export, refresh_note
from tests.hpo_tests.run_tests.test_study import run_study, tiny_run


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("artifacts-run")
    cfg = tiny_run(tiny_model_dir, out, "study.n_trials=5", f"artifacts_dir={out}/artifacts")
    study, worker = run_study(cfg)
    return {"study": study, "worker": worker, "store": artifact_store(out / "artifacts")}


def fetch(store: Any, artifact_id: str, tmp_path: Path) -> bytes:
    target = tmp_path / artifact_id
    download_artifact(artifact_store=store, artifact_id=artifact_id, file_path=str(target))
    return target.read_bytes()


def test_each_new_best_trial_uploads_vector_scores_and_plot(
    run: dict[str, Any], tmp_path: Path
) -> None:
    study, worker, store = run["study"], run["worker"], run["store"]
    steered = [t for t in study.trials if not t.user_attrs.get("baseline")]
    records = []
    for t in steered:
        before = [s.value for s in steered if s.number < t.number]
        records.append((t, not before or t.value > max(before)))
    for trial, was_best in records:
        metas = get_all_artifact_meta(trial, storage=study._storage)
        if not was_best:
            assert metas == [], trial.number
            continue
        names = sorted(m.filename for m in metas)
        assert names == [
            f"trial{trial.number}_steering_vector.safetensors",
            f"trial{trial.number}_validation_scores.csv",
            f"trial{trial.number}_validation_scores.png",
        ]
        by_name = {m.filename: m for m in metas}
        vec_file = tmp_path / f"v{trial.number}.safetensors"
        vec_file.write_bytes(fetch(store, by_name[names[0]].artifact_id, tmp_path))
        tensors = load_file(str(vec_file))
        expected = worker.vectors(trial.params)
        assert torch.equal(
            tensors[f"layer.{trial.params['layer']}"], expected[trial.params["layer"]]
        )
        rows = list(
            csv.DictReader(
                io.StringIO(fetch(store, by_name[names[1]].artifact_id, tmp_path).decode())
            )
        )
        assert len(rows) == len(worker.prompts) == 4
        assert abs(sum(float(r["score"]) for r in rows) / 4 - trial.value) < 1e-5
        assert rows[0]["baseline_score"] != "" and rows[0]["prompt"] == worker.prompts[0]
        assert by_name[names[2]].mimetype == "image/png"
        assert fetch(store, by_name[names[2]].artifact_id, tmp_path).startswith(b"\x89PNG")
    assert any(best for _, best in records)


def test_study_note_says_model_task_space_baseline_best_and_how_to_export(
    run: dict[str, Any],
) -> None:
    study = run["study"]
    note = get_note(study)
    baseline = study.trials[0].value
    best = max(
        (t for t in study.trials if not t.user_attrs.get("baseline")), key=lambda t: t.value
    )
    assert note.startswith("# Steering study `sycophancy`")
    assert "tiny-llama" in note  # the model path
    assert "| task | `sycophancy`:" in note
    assert "layers 0-3" in note
    assert f"| baseline | {baseline:.4f} |" in note
    assert f"trial {best.number}: **{best.value:.4f}**" in note
    assert "hpo export output_dir=" in note


def test_metric_is_named_for_the_dashboard(run: dict[str, Any]) -> None:
    assert run["study"].metric_names == ["validation score (P(target answer), 0-1)"]


def test_is_best_so_far_follows_the_direction() -> None:
    study = optuna.create_study(direction="minimize")
    study.add_trial(optuna.trial.create_trial(value=0.5))
    assert is_best_so_far(study, 99, 0.4)
    assert not is_best_so_far(study, 99, 0.6)


def test_the_note_tells_the_exported_bundle_its_test_interval_and_warnings(
    run: dict[str, Any], tmp_path: Path
) -> None:
    study = run["study"]
    meta = {
        "study": {"trial": 3, "params": {"layer": 2, "alpha": 1.5}},
        "metrics": {
            "warnings": ["the baseline is below chance"],
            "test": {
                "baseline": 0.4388,
                "steered": 0.6572,
                "difference": 0.2184,
                "ci95": [0.0944, 0.344],
                "n": 40,
                "metrics": {"kl": {"steered": 0.9115}},
            },
        },
    }
    record_export(study, meta, tmp_path / "bundle")
    assert study.user_attrs[EXPORTED_ATTR]["trial"] == 3
    note = get_note(study)
    assert "## Exported" in note
    assert f"Bundle `{tmp_path / 'bundle'}` from trial 3" in note
    assert "Held-out test (n=40): 0.4388 -> **0.6572**" in note
    assert "difference +0.2184 [95% CI +0.0944, +0.3440]; KL on neutral prompts 0.9115" in note
    assert "- the baseline is below chance" in note
    refresh_note(study)  # a later trial rewrites the note: the export stays in it
    assert "Held-out test (n=40)" in get_note(study)
    record_export(study, meta, None, reason="the winner shows no gain")
    note = get_note(study)
    assert "Nothing shipped: the winner shows no gain." in note
    assert "Held-out test (n=40): 0.4388 -> **0.6572**" in note
