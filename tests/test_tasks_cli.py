"""End to end as subprocesses: `hpo optimize task=gsm8k` (math generation) and `experiment=bbq`
(multiple choice), through export and the printed summary. The tiny random Llama stands in for
the model so this stays quick; the real SmolLM2 scores both tasks in objectives_tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import tiny_overrides
from tests.test_cli import hpo_cli

pytestmark = pytest.mark.slow


def _optimize(tmp_path: Path, model_dir: Path, *overrides: str) -> tuple[str, dict[str, Any]]:
    args = [*overrides, *tiny_overrides(model_dir, tmp_path), "log_level=INFO"]
    proc = hpo_cli("optimize", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((tmp_path / "bundle" / "steering.json").read_text())
    return proc.stdout, meta


def test_gsm8k_optimizes_math_accuracy_end_to_end(tmp_path: Path, tiny_model_dir: Path) -> None:
    stdout, meta = _optimize(
        tmp_path,
        tiny_model_dir,
        "experiment=gsm8k",
        "task.objective.max_new_tokens=8",
        "task.objective.fluency.enabled=false",  # random weights: any text is gibberish
    )
    assert "test (n=4)" in stdout
    assert stdout.count("  gold      ...") == 3  # every sample shows its gold answer, right/wrong
    test = meta["metrics"]["test"]
    assert 0.0 <= test["baseline"] <= 1.0 and 0.0 <= test["steered"] <= 1.0
    assert set(test["unparsed"]["steered"]) == {"n_unparsed", "n_timeout"}
    assert meta["objective"]["kind"] == "generation"
    for sample in test["samples"]:
        assert "\nQuestion:" not in sample["steered"]  # cut at the stop string
        assert set(sample["correct"].values()) <= {0.0, 1.0}


def test_bbq_optimizes_multiple_choice_end_to_end(tmp_path: Path, tiny_model_dir: Path) -> None:
    stdout, meta = _optimize(tmp_path, tiny_model_dir, "experiment=bbq")
    assert "per letter  A:" in stdout
    assert "accuracy    baseline" in stdout
    test = meta["metrics"]["test"]
    assert test["n"] == 4
    assert set(test["per_letter"]["steered"]) == {"A", "B", "C"}
    assert 0.0 <= test["accuracy"]["baseline"] <= 1.0
    assert meta["objective"]["kind"] == "multiple_choice"
