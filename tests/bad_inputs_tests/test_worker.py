"""`hpo worker`: joining a study that cannot be joined."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.bad_inputs_tests.conftest import (
    Case,
    Env,
    check_refused,
    symlink_to_empty_file,
)

WORKER: list[Case] = [
    (
        "worker-read-only-db",
        lambda e: [
            "worker",
            *e.model_args,
            f"storage.url='sqlite:///file:{e.study()}/study.db?mode=ro&uri=true'",
            "study.name=s",
        ],
        r"cannot (open|use) storage .*readonly database",
    ),
    (
        "worker-without-study",
        lambda e: ["worker", *e.model_args, f"output_dir={e.root / 'typo'}"],
        r"no study database at .*typo",
    ),
]


NEW: list[Case] = [
    (
        "worker-symlink-to-an-empty-file",
        lambda e: [
            "worker",
            *e.model_args,
            f"storage.url=sqlite:///{symlink_to_empty_file(e)}",
            "study.name=s",
        ],
        r"is not an Optuna study database",
    ),
]

CASES = WORKER + NEW


@pytest.mark.parametrize(("name", "build", "rule"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(
    name: str,
    build: Callable[[Env], list[str]],
    rule: str,
    env: Env,
    capsys: pytest.CaptureFixture,
) -> None:
    check_refused(name, build, rule, env, capsys)
