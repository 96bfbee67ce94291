"""`hpo layers`: its output place is checked before a minute of ranking every layer."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.bad_inputs_tests.conftest import Case, Env, _regular_file, check_refused


def layers(env: Env, output_dir: object) -> list[str]:
    return ["layers", *env.model_args, f"output_dir={output_dir}"]


CASES: list[Case] = [
    (
        "layers-output-dir-is-a-file",
        lambda e: layers(e, _regular_file(e)),
        r"output_dir must be a directory, got the file '.*afile'",
    ),
    (
        "layers-output-dir-under-a-file",
        lambda e: layers(e, _regular_file(e) / "run"),
        r"output_dir '.*afile/run' cannot be made: '.*afile' is not a directory",
    ),
    (
        "layers-output-subdir-is-a-file",
        lambda e: layers(e, _regular_file(e, "layers").parent),
        r"output_dir/layers must be a directory, got the file '.*/layers'",
    ),
]


@pytest.mark.parametrize(("name", "build", "rule"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(
    name: str,
    build: Callable[[Env], list[str]],
    rule: str,
    env: Env,
    capsys: pytest.CaptureFixture,
) -> None:
    check_refused(name, build, rule, env, capsys)
