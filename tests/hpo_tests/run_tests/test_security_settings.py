"""Settings that can run code are never taken from a study database or a bundle."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from hpo import load_bundle
from hpo.cli.verbs import _stored_run_config
from hpo.run.study import open_study
from tests.bad_inputs_tests.conftest import make_bundle
from tests.conftest import compose_run


@pytest.fixture(autouse=True)
def no_storage_url_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HPO_STORAGE_URL", raising=False)


def _study_asking_for_remote_code(out: Path) -> None:
    open_study(
        compose_run(
            "study.name=s",
            f"output_dir={out}",
            "model.trust_remote_code=true",
            "model_diff.trust_remote_code=true",
        )
    )


def test_export_takes_trust_remote_code_from_its_own_config_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _study_asking_for_remote_code(tmp_path)
    mine = compose_run("study.name=s", f"output_dir={tmp_path}")
    study = open_study(mine, create=False, join=False)
    with caplog.at_level(logging.WARNING):
        stored = _stored_run_config(mine, study)
    assert stored.model.trust_remote_code is False
    assert stored.model_diff.trust_remote_code is False
    notes = [r.getMessage() for r in caplog.records if "not honoured" in r.getMessage()]
    assert len(notes) == 2
    assert "model.trust_remote_code=true" in notes[0]


def test_export_may_still_grant_it_from_the_invokers_config(tmp_path: Path) -> None:
    _study_asking_for_remote_code(tmp_path)
    mine = compose_run("study.name=s", f"output_dir={tmp_path}", "model.trust_remote_code=true")
    stored = _stored_run_config(mine, open_study(mine, create=False, join=False))
    assert stored.model.trust_remote_code is True
    assert stored.model_diff.trust_remote_code is False


def test_the_stored_sampler_target_is_not_instantiated_by_export(tmp_path: Path) -> None:
    _study_asking_for_remote_code(tmp_path)
    mine = compose_run("study.name=s", f"output_dir={tmp_path}", "sampler=random")
    stored = _stored_run_config(mine, open_study(mine, create=False, join=False))
    assert stored.sampler == mine.sampler


def test_a_worker_joins_without_remote_code_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _study_asking_for_remote_code(tmp_path)
    mine = compose_run("study.name=s", f"output_dir={tmp_path}")
    with caplog.at_level(logging.WARNING):
        open_study(mine, create=False, join=True)  # no "made with another config" refusal
    assert mine.model.trust_remote_code is False
    assert any("not honoured" in r.getMessage() for r in caplog.records)


def test_a_bundle_asking_for_remote_code_does_not_get_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def ask(meta: dict) -> None:
        meta["model"]["trust_remote_code"] = True

    bundle = load_bundle(make_bundle(tmp_path / "b", str(tmp_path / "model"), ask))
    with caplog.at_level(logging.WARNING):
        cfg = bundle.model_config("cpu")
    assert cfg.trust_remote_code is False
    assert any("not honoured" in r.getMessage() for r in caplog.records)


def test_an_ignored_stored_sampler_target_is_said_in_a_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _study_asking_for_remote_code(tmp_path)
    mine = compose_run("study.name=s", f"output_dir={tmp_path}", "sampler=random")
    with caplog.at_level(logging.WARNING):
        _stored_run_config(mine, open_study(mine, create=False, join=False))
    messages = [r.getMessage() for r in caplog.records]
    lines = [m for m in messages if "stored config builds sampler" in m]
    assert lines == [
        "the study's stored config builds sampler optuna.samplers.TPESampler; not honoured: "
        "this process builds optuna.samplers.RandomSampler from its own config"
    ]
