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
    assert retry.params == trial.params


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
