"""`hpo status` and `hpo report`: reading verbs that never write the study database."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.bad_inputs_tests.conftest import (
    Case,
    Env,
    _regular_file,
    check_refused,
    symlink_to_empty_file,
)


def _foreign_sqlite(env: Env) -> Path:
    path = env.root / "notes.db"
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE notes (text TEXT)")
    return path


READING: list[Case] = [
    (
        "status-mistyped-output-dir",
        lambda e: ["status", f"output_dir={e.root / 'typo'}"],
        r"no study database at .*typo",
    ),
    (
        "report-mistyped-output-dir",
        lambda e: ["report", f"output_dir={e.root / 'typo'}"],
        r"no study database at .*typo",
    ),
    (
        "status-unknown-study",
        lambda e: ["status", f"output_dir={e.study()}", "study.name=t"],
        r"no study named 't'",
    ),
]


NEW: list[Case] = [
    (
        "status-symlink-to-an-empty-file",
        lambda e: ["status", f"storage.url=sqlite:///{symlink_to_empty_file(e)}", "study.name=s"],
        r"storage '.*link.db' is not an Optuna study database \(no Optuna tables\)",
    ),
    (
        "report-symlink-to-an-empty-file",
        lambda e: ["report", f"storage.url=sqlite:///{symlink_to_empty_file(e)}", "study.name=s"],
        r"is not an Optuna study database",
    ),
    (
        "status-foreign-sqlite-file",
        lambda e: ["status", f"storage.url=sqlite:///{_foreign_sqlite(e)}", "study.name=s"],
        r"storage '.*notes.db' is not an Optuna study database",
    ),
    (
        "status-text-file-as-database",
        lambda e: ["status", f"storage.url=sqlite:///{_regular_file(e)}", "study.name=s"],
        r"storage '.*afile' cannot be read as an Optuna study database \(file is not a database\)",
    ),
]

CASES = READING + NEW


@pytest.mark.parametrize(("name", "build", "rule"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(
    name: str,
    build: Callable[[Env], list[str]],
    rule: str,
    env: Env,
    capsys: pytest.CaptureFixture,
) -> None:
    check_refused(name, build, rule, env, capsys)


def test_status_into_a_closed_pipe_exits_quietly(template_study: Path, tmp_path: Path) -> None:
    """`hpo status | head -0`: no traceback, no "Exception ignored", exit 0."""
    run = tmp_path / "run"
    shutil.copytree(template_study, run)
    env = {k: v for k, v in os.environ.items() if k != "HPO_STORAGE_URL"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpo", "status", f"output_dir={run}", "study.name=s"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first line is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
