"""End to end: `hpo layers` as a subprocess prints the per-layer table and writes the plot;
bad `search_space.layer_selection` values exit 2 with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, tiny_overrides

pytestmark = pytest.mark.slow


def hpo_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hpo", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_layers_prints_the_table_and_writes_the_plot(tiny_model_dir: Path, tmp_path: Path) -> None:
    proc = hpo_cli(
        "layers", *tiny_overrides(tiny_model_dir, tmp_path), "search_space.layer_selection.top_k=2"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    rows = [ln for ln in lines if ln.split()[:1] and ln.split()[0].isdigit()]
    assert [int(r.split()[0]) for r in rows] == [0, 1, 2, 3]
    assert sum("top 1" in r for r in rows) == 1 and sum("top 2" in r for r in rows) == 1
    assert "answer-letter log-odds" in proc.stdout
    out = tmp_path / "layers"
    assert f"plot         {out / 'attribution.png'}" in proc.stdout
    assert (out / "attribution.png").read_bytes().startswith(b"\x89PNG")
    record = json.loads((out / "attribution.json").read_text())
    assert [r["layer"] for r in record["layers"]] == [0, 1, 2, 3]
    assert not (tmp_path / "study.db").exists()  # no study is made


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("search_space.layer_selection.mode=sideways", "layer_selection.mode must be one of"),
        ("search_space.layer_selection.top_k=0", "layer_selection.top_k must be >= 1"),
        ("search_space.layer_selection={mode: narrow, top_k: 9}", "top_k must be <= the 4"),
        ("search_space.layer_selection.pairs=-3", "layer_selection.pairs must be >= 1"),
    ],
)
@pytest.mark.parametrize("verb", ["layers", "optimize"])
def test_bad_layer_selection_exits_2_with_one_line(
    tiny_model_dir: Path, tmp_path: Path, override: str, message: str, verb: str
) -> None:
    proc = hpo_cli(verb, *tiny_overrides(tiny_model_dir, tmp_path), override)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert not (tmp_path / "study.db").exists()
