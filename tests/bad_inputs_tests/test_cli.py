"""The command line itself: verbs, options, config directories."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.bad_inputs_tests.conftest import (
    Case,
    Env,
    check_refused,
)

CLI: list[Case] = [
    ("cli-unknown-verb", lambda e: ["explode"], r"unknown verb 'explode'"),
    ("cli-unknown-option", lambda e: ["status", "--colour"], r"unknown option '--colour'"),
    (
        "cli-config-dir-missing",
        lambda e: ["status", "--config-dir", str(e.root / "nope")],
        r"--config-dir must be an existing directory",
    ),
    (
        "cli-config-dir-no-value",
        lambda e: ["status", "--config-dir"],
        r"--config-dir needs a directory",
    ),
    ("cli-multirun-not-worker", lambda e: ["status", "-m"], r"-m .* is for `hpo worker`"),
    (
        "cli-unknown-group-option",
        lambda e: ["optimize", "task=nope"],
        r"unknown task 'nope'; choices",
    ),
]


NEW: list[Case] = []

CASES = CLI + NEW


@pytest.mark.parametrize(("name", "build", "rule"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(
    name: str,
    build: Callable[[Env], list[str]],
    rule: str,
    env: Env,
    capsys: pytest.CaptureFixture,
) -> None:
    check_refused(name, build, rule, env, capsys)
