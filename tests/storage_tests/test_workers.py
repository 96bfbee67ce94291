"""Many worker processes on one study, on real SQLite and PostgreSQL: exact budget, the
enqueued baseline evaluated once, no "database is locked", and a kill -9 that loses one trial."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo import StorageConfig
from storage import create_storage, default_sqlite_url
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def start_worker(url: str, name: str, n_trials: int, sleep_s: float) -> subprocess.Popen[str]:
    env = {**os.environ, "HPO_STORAGE_URL": url}
    return subprocess.Popen(
        [sys.executable, "-m", "tests.storage_tests.trivial_worker", name, str(n_trials),
         str(sleep_s)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def new_study(url: str, name: str) -> optuna.Study:
    study = optuna.create_study(study_name=name, storage=create_storage(StorageConfig(), url))
    study.enqueue_trial({"x": 0.5}, user_attrs={"baseline": True})
    return study


def states(study: optuna.Study) -> dict[TrialState, int]:
    out = dict.fromkeys(TrialState, 0)
    for t in study.get_trials(deepcopy=False):
        out[t.state] += 1
    return out


def run_many(url: str, name: str, workers: int, n_trials: int) -> optuna.Study:
    study = new_study(url, name)
    procs = [start_worker(url, name, n_trials, 0.0) for _ in range(workers)]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out
        assert "database is locked" not in out
    return study


def assert_exact(study: optuna.Study, n_trials: int) -> None:
    c = states(study)
    assert c[TrialState.COMPLETE] == n_trials
    assert c[TrialState.RUNNING] == c[TrialState.WAITING] == 0
    baseline = [t for t in study.get_trials() if t.user_attrs.get("baseline")]
    assert len(baseline) == 1
    assert baseline[0].state == TrialState.COMPLETE
    for t in study.get_trials(states=(TrialState.FAIL,)):
        assert t.user_attrs["fail_reason"].startswith("over budget")  # lost races, no work done


def test_eight_processes_share_one_sqlite_study(tmp_path: Path, study_name: str) -> None:
    url = default_sqlite_url(tmp_path)
    study = run_many(url, study_name, workers=8, n_trials=40)
    assert_exact(study, 40)


def test_four_workers_share_one_postgres_study(postgres_url: str, study_name: str) -> None:
    study = run_many(postgres_url, study_name, workers=4, n_trials=24)
    assert_exact(study, 24)


def test_a_killed_worker_loses_only_its_trial_which_is_retried(
    tmp_path: Path, study_name: str
) -> None:
    url = default_sqlite_url(tmp_path)
    study = new_study(url, study_name)
    first = start_worker(url, study_name, 4, 2.0)
    deadline = time.monotonic() + 60
    while not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        assert time.monotonic() < deadline, "no trial started"
        time.sleep(0.2)
    killed = study.get_trials(states=(TrialState.RUNNING,))[0]
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    second = start_worker(url, study_name, 4, 0.5)
    out, _ = second.communicate(timeout=300)  # generous: a loaded CI machine imports slowly
    assert second.returncode == 0, out
    c = states(study)
    assert c[TrialState.COMPLETE] == 4
    assert c[TrialState.FAIL] == 1
    assert c[TrialState.RUNNING] == 0
    failed = study.get_trials(states=(TrialState.FAIL,))[0]
    assert failed.number == killed.number
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == failed.number]
    assert len(retried) == 1
    assert retried[0].state == TrialState.COMPLETE
    # killed before (or while) suggesting: the retry has the params it had, then its own
    assert failed.params.items() <= retried[0].params.items()
