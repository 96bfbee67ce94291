"""`hpo dashboard`: an address it cannot listen on is one line, before any banner or note."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import pytest

from tests.bad_inputs_tests.conftest import Case, Env, check_refused, symlink_to_empty_file


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port another program listens on for the test's duration."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield int(s.getsockname()[1])


def dashboard(env: Env, *extra: str) -> list[str]:
    return ["dashboard", f"output_dir={env.study()}", "study.name=s", *extra]


CASES: list[Case] = [
    (
        "dashboard-address-not-on-this-machine",
        lambda e: dashboard(e, "dashboard.host=192.0.2.1", "dashboard.port=8080"),
        r"dashboard cannot listen on 192.0.2.1:8080: Cannot assign requested address",
    ),
    (
        "dashboard-host-that-is-no-address",
        lambda e: dashboard(e, "dashboard.host=no such host"),
        r"dashboard.host 'no such host' is not an address to listen on",
    ),
    (
        "dashboard-symlink-to-an-empty-file",
        lambda e: [
            "dashboard",
            f"storage.url=sqlite:///{symlink_to_empty_file(e)}",
            "study.name=s",
        ],
        r"is not an Optuna study database",
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


def test_a_taken_port_is_one_line_without_a_banner_or_a_new_note(
    env: Env, taken_port: int, capsys: pytest.CaptureFixture
) -> None:
    line = check_refused(
        "dashboard-port-taken",
        lambda e: dashboard(e, f"dashboard.port={taken_port}"),
        rf"dashboard cannot listen on 127.0.0.1:{taken_port}: Address already in use",
        env,
        capsys,
    )
    assert "Listening" not in line  # the one line on stderr is the error, not a banner
