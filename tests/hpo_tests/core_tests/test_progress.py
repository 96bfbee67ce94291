"""Progress bars: on a terminal only, never in CI or pipes, switchable by HPO_PROGRESS."""

from __future__ import annotations

import pytest

from hpo.core.progress import progress, progress_enabled


def test_pipes_and_ci_get_no_bar(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("HPO_PROGRESS", raising=False)
    monkeypatch.setenv("CI", "true")
    assert not progress_enabled()
    assert list(progress(range(3), "scoring")) == [0, 1, 2]
    assert capsys.readouterr().err == ""


def test_ci_wins_over_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HPO_PROGRESS", raising=False)
    monkeypatch.setenv("CI", "1")
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    assert not progress_enabled()
    monkeypatch.delenv("CI")
    assert progress_enabled()


def test_forced_bar_names_the_loop_on_stderr(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HPO_PROGRESS", "1")
    assert list(progress(range(4), "caching activations")) == [0, 1, 2, 3]
    err = capsys.readouterr().err
    assert "caching activations:   0%" in err and "0/4 [" in err
    monkeypatch.setenv("HPO_PROGRESS", "0")
    assert not progress_enabled()
