"""`hpo` on a bug (an exception that is no user error): one line on stderr and exit 1, the
traceback kept in a file, or printed with HPO_DEBUG=1."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest

import hpo.monitor.status
from hpo.cli.command import main
from hpo.run.study import open_study
from tests.conftest import compose_run

LINE = (
    r"hpo status: internal error: RuntimeError: boom on two lines "
    r"\(full traceback in (\S+); HPO_DEBUG=1 prints it\)"
)


@pytest.fixture
def broken_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[str], list[object]]:
    """`hpo status` args for a real study whose rendering raises (a spy standing in for a bug),
    and the list of calls the spy saw."""
    monkeypatch.delenv("HPO_STORAGE_URL", raising=False)
    out = tmp_path / "run"
    open_study(compose_run("study.name=s", f"output_dir={out}"), join=False)
    calls: list[object] = []

    def render_status(*args: object) -> str:
        calls.append(args)
        raise RuntimeError("boom\non two lines")

    monkeypatch.setattr(hpo.monitor.status, "render_status", render_status)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    return ["status", f"output_dir={out}", "study.name=s"], calls


def test_an_internal_error_is_one_line_and_exit_1_with_the_traceback_in_a_file(
    broken_status: tuple[list[str], list[object]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.delenv("HPO_DEBUG", raising=False)
    args, calls = broken_status
    code = main(args)
    err = capsys.readouterr().err
    assert code == 1, err
    assert len(calls) == 1  # the real verb ran up to the spy
    [line] = err.splitlines()
    found = re.fullmatch(LINE, line)
    assert found, line
    saved = Path(found.group(1))
    assert saved.parent == tmp_path / "tmp" and saved.name.startswith("hpo-status-")
    text = saved.read_text()
    assert text.startswith("Traceback (most recent call last)")
    assert "in render_status" in text and text.endswith("RuntimeError: boom\non two lines\n")


def test_hpo_debug_prints_the_traceback_and_keeps_no_file(
    broken_status: tuple[list[str], list[object]],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("HPO_DEBUG", "1")
    code = main(broken_status[0])
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.startswith("Traceback (most recent call last)")
    assert "in render_status" in err
    assert err.splitlines()[-1] == ("hpo status: internal error: RuntimeError: boom on two lines")
    assert not list((tmp_path / "tmp").iterdir())


def test_a_user_error_is_still_exit_2_and_no_internal_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("HPO_STORAGE_URL", raising=False)
    code = main(["status", f"output_dir={tmp_path / 'nowhere'}", "study.name=s"])
    [line] = capsys.readouterr().err.splitlines()
    assert code == 2
    assert line.startswith("hpo status: error: no study named 's'"), line
