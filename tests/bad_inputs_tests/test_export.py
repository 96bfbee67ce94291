"""`hpo export`: targets that would lose data, studies that cannot be exported."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.bad_inputs_tests.conftest import (
    Case,
    Env,
    _marker_plus_foreign,
    _regular_file,
    _user_folder,
    auto_map_model,
    check_refused,
    study_with_complete_trial,
    symlink_to_empty_file,
)


def _tokenizer_study(env: Env) -> list[str]:
    """A study made with a model whose tokenizer cannot be built, with a trial to export."""
    run = study_with_complete_trial(
        env,
        f"model.name_or_path={auto_map_model()}",
        "model.gguf_file=null",
        "search_space.layers.low=0",
        "search_space.layers.high=3",
    )
    return ["export", f"output_dir={run}", "study.name=s", f"export.dir={env.root / 'b'}"]


def _claimed_by_another_export(env: Env) -> list[str]:
    """A study with a trial to export, and `export.dir` claimed by a live export (this test's
    own process stands for it)."""
    from hpo.export.target import claim_path

    run = study_with_complete_trial(env)
    target = env.root / "b"
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": 0}
    claim_path(target).write_text(json.dumps(holder))
    return ["export", f"output_dir={run}", "study.name=s", f"export.dir={target}"]


EXPORT: list[Case] = [
    (
        "export-into-output-dir",
        lambda e: e.export_args(e.root / "run"),
        r"export.dir must not be or contain output_dir",
    ),
    (
        "export-into-parent-of-output-dir",
        lambda e: e.export_args(e.root),
        r"export.dir must not be or contain output_dir",
    ),
    (
        "export-onto-study-db",
        lambda e: e.export_args(e.root / "run" / "study.db"),
        r"must not be or contain the study database",
    ),
    (
        "export-into-artifacts",
        lambda e: e.export_args(e.root / "run" / "artifacts"),
        r"must not be or contain artifacts_dir",
    ),
    (
        "export-inside-artifacts",
        lambda e: e.export_args(e.root / "run" / "artifacts" / "b"),
        r"must not lie inside artifacts_dir",
    ),
    (
        "export-onto-a-file",
        lambda e: e.export_args(_regular_file(e)),
        r"export.dir must be a new or empty directory or an earlier bundle, got the file",
    ),
    (
        "export-into-user-folder",
        lambda e: e.export_args(_user_folder(e)),
        r"holding 'thesis.tex' \(no .hpo-bundle marker\); nothing was changed",
    ),
    (
        "export-onto-old-bundle-without-force",
        lambda e: e.export_args(e.bundle(name="old")),
        r"already holds a bundle; set export.force=true",
    ),
    (
        "export-force-keeps-foreign-files",
        lambda e: e.export_args(_marker_plus_foreign(e), "export.force=true"),
        r"holds a bundle plus files it did not write \('notes.txt'\)",
    ),
    (
        "export-under-a-file",
        lambda e: e.export_args(_regular_file(e) / "b"),
        r"lies under .*afile.*not a directory",
    ),
    ("export-unwritable", lambda e: e.export_args("/proc/self/bundle"), r"cannot be written"),
    (
        "export-unknown-trial",
        lambda e: e.export_args(e.root / "b", "export.trial=7"),
        r"export.trial must be a COMPLETE trial",
    ),
    (
        "export-nothing-complete",
        lambda e: e.export_args(e.root / "b"),
        r"has no completed, feasible steered trial",
    ),
    (
        "export-no-study",
        lambda e: ["export", f"output_dir={e.root / 'typo'}", f"export.dir={e.root / 'b'}"],
        r"no study database at .*typo",
    ),
]


NEW: list[Case] = [
    (
        "export-tokenizer-cannot-be-built",
        _tokenizer_study,
        r"cannot build the tokenizer of model '.*auto-map-model.*'",
    ),
    (
        "export-into-a-directory-another-export-writes",
        _claimed_by_another_export,
        r"export.dir '.*/b' is being written by another export \(pid \d+ on .*\); wait for it",
    ),
    (
        "export-reads-a-symlink-to-an-empty-file",
        lambda e: [
            "export",
            f"storage.url=sqlite:///{symlink_to_empty_file(e)}",
            "study.name=s",
            f"export.dir={e.root / 'b'}",
        ],
        r"is not an Optuna study database",
    ),
]

CASES = EXPORT + NEW


@pytest.mark.parametrize(("name", "build", "rule"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(
    name: str,
    build: Callable[[Env], list[str]],
    rule: str,
    env: Env,
    capsys: pytest.CaptureFixture,
) -> None:
    check_refused(name, build, rule, env, capsys)


def test_a_stale_claim_of_a_dead_export_is_taken_over(tmp_path: Path) -> None:
    """An export killed mid-write leaves its claim: the next one on this machine takes it."""
    import subprocess
    import sys

    from hpo.export.target import claim_path, claimed

    target = tmp_path / "b"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    holder = {"pid": int(dead.stdout), "host": socket.gethostname(), "since": 0}
    claim_path(target).write_text(json.dumps(holder))
    with claimed(target):
        assert json.loads(claim_path(target).read_text())["pid"] == os.getpid()
    assert not claim_path(target).exists()
