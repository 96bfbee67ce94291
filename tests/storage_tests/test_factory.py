"""The storage factory on a real SQLite file: Optuna's contract plus our engine settings."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo import StorageConfig, UserError
from storage import create_storage, default_sqlite_url, mask_url, parse_url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return default_sqlite_url(tmp_path / "run")


def test_default_url_is_a_sqlite_file_in_the_output_dir(tmp_path: Path) -> None:
    assert default_sqlite_url(tmp_path) == f"sqlite:///{tmp_path.resolve()}/study.db"


def test_storage_creates_the_database_and_round_trips_a_study(
    any_url: str, study_name: str
) -> None:
    storage = create_storage(StorageConfig(), any_url)
    study = optuna.create_study(study_name=study_name, storage=storage, direction="maximize")
    study.set_user_attr("note", {"a": 1})
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
    again = optuna.load_study(
        study_name=study_name, storage=create_storage(StorageConfig(), any_url)
    )
    assert again.user_attrs["note"] == {"a": 1}
    assert len(again.get_trials(states=(TrialState.COMPLETE,))) == 3
    assert again.best_value == max(t.value for t in again.trials)  # type: ignore[type-var]


def test_sqlite_uses_wal_and_a_busy_timeout(sqlite_url: str) -> None:
    storage = create_storage(StorageConfig(sqlite_timeout=123), sqlite_url)
    with storage.engine.connect() as conn:
        mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
        timeout = conn.exec_driver_sql("PRAGMA busy_timeout").scalar()
    assert mode == "wal"
    assert timeout == 123_000


def test_concurrent_writers_share_one_study(any_url: str, study_name: str) -> None:
    optuna.create_study(study_name=study_name, storage=create_storage(StorageConfig(), any_url))

    def work() -> None:
        study = optuna.load_study(
            study_name=study_name, storage=create_storage(StorageConfig(), any_url)
        )
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=10)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    study = optuna.load_study(
        study_name=study_name, storage=create_storage(StorageConfig(), any_url)
    )
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 30


def test_mask_url_hides_the_password() -> None:
    masked = mask_url("postgresql+psycopg://alice:s3cret@127.0.0.1:5432/hpo")
    assert "s3cret" not in masked
    assert "alice:***@127.0.0.1" in masked


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", r"storage.url must be a SQLAlchemy URL"),
        ("redis://localhost/0", r"backend must be one of .*got 'redis'"),
    ],
)
def test_bad_urls_are_refused_without_echoing_secrets(url: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_url(url)


def test_stale_trials_of_a_silent_worker_are_failed_and_retried(
    any_url: str, study_name: str
) -> None:
    cfg = StorageConfig(heartbeat_interval=1, grace_period=2)
    study = optuna.create_study(study_name=study_name, storage=create_storage(cfg, any_url))
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    study._storage.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]
    time.sleep(3)
    optuna.storages.fail_stale_trials(study)
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.WAITING]
    retry = study.get_trials()[1]
    assert retry.system_attrs["failed_trial"] == trial.number
    assert retry.system_attrs["fixed_params"] == trial.params
    assert retry.system_attrs["retry_history"] == [trial.number]


def test_unreachable_database_error_does_not_leak_the_password() -> None:
    url = "postgresql+psycopg://bob:hunter2@127.0.0.1:1/none"
    started = time.monotonic()
    with pytest.raises(UserError) as info:
        create_storage(StorageConfig(), url)
    assert time.monotonic() - started < 10
    assert "hunter2" not in str(info.value)
    assert "bob:***@127.0.0.1:1" in str(info.value)


def test_a_missing_driver_is_named_without_the_password() -> None:
    url = "mysql+notadriver://carol:pa55@127.0.0.1/db"
    with pytest.raises(UserError) as info:
        create_storage(StorageConfig(), url)
    assert "pa55" not in str(info.value)
    assert "carol:***@127.0.0.1/db' needs a database driver that is not installed" in str(
        info.value
    )


def test_the_password_is_in_no_study_attribute_and_no_status_line(
    postgres_url: str, study_name: str
) -> None:
    import json

    from hpo.monitor.status import render_status
    from hpo.run.study import open_study, storage_url
    from tests.conftest import compose_run
    from tests.pgserver import PG_PASSWORD

    cfg = compose_run(
        "storage=postgres", f"storage.url={postgres_url}", f"study.name={study_name}"
    )
    study = open_study(cfg)
    assert PG_PASSWORD not in json.dumps(study.user_attrs)
    assert PG_PASSWORD not in json.dumps([t.user_attrs for t in study.trials])
    assert PG_PASSWORD not in render_status(study, mask_url(storage_url(cfg)))
    assert "hpo:***@127.0.0.1" in study.user_attrs["hpo_config"]["storage"]["url"]


def test_a_stale_baseline_outside_the_search_space_is_retried(
    any_url: str, study_name: str
) -> None:
    cfg = StorageConfig(heartbeat_interval=1, grace_period=2, max_retry=1)
    study = optuna.create_study(study_name=study_name, storage=create_storage(cfg, any_url))
    study.enqueue_trial({"alpha": 0.0}, user_attrs={"baseline": True})
    dist: dict[str, optuna.distributions.BaseDistribution] = {
        "alpha": optuna.distributions.FloatDistribution(0.1, 1.2)
    }
    for round_ in (1, 2):
        trial = study.ask(dist)
        assert trial.params == {"alpha": 0.0}
        study._storage.record_heartbeat(trial._trial_id)  # type: ignore[attr-defined]
        time.sleep(3)
        optuna.storages.fail_stale_trials(study)
        waiting = study.get_trials(states=(TrialState.WAITING,))
        assert len(waiting) == (1 if round_ == 1 else 0)  # max_retry=1: one retry, then stop
    retry = study.trials[1]
    assert retry.user_attrs == {"baseline": True}
    assert retry.system_attrs["failed_trial"] == 0
