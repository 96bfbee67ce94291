"""`hpo optimize workers=N` and `hpo worker` as real processes: exact budget across workers,
and SIGTERM marking the running trial FAIL with nothing left RUNNING."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from tests.conftest import REPO, tiny_overrides
from tests.test_cli import hpo_cli

pytestmark = pytest.mark.slow


def running_count(out: Path) -> int:
    """RUNNING trials, read-only: never races the parent creating the database."""
    try:
        with closing(sqlite3.connect(f"file:{out / 'study.db'}?mode=ro", uri=True)) as conn:
            row = conn.execute("SELECT count(*) FROM trials WHERE state = 'RUNNING'").fetchone()
    except sqlite3.Error:
        return 0
    return int(row[0])


def load(out: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{out}/study.db")


def stale_retries(study: optuna.Study, victim: int) -> dict[int, optuna.trial.FrozenTrial]:
    """Each trial failed as stale -> its retry, after asserting none was lost.

    Besides the victim, a trial whose worker was slowed past the grace period (a loaded
    machine, or a worker blocked behind another that was stopped while it held SQLite's write
    lock) may be failed as stale too: each such trial must be retried exactly once and every
    chain of retries must end in a finished trial. A trial that a retry put over the budget
    fails before any work and is not retried.
    """
    failed = {t.number: str(t.user_attrs.get("fail_reason")) for t in study.trials
              if t.state == TrialState.FAIL}  # fmt: skip
    assert victim in failed, failed
    # a retry names the attempt it retries last in its history (a retry can be retried)
    pairs = [(t.system_attrs["retry_history"][-1], t) for t in study.trials
             if "retry_history" in t.system_attrs]  # fmt: skip
    stale = sorted(n for n, why in failed.items() if not why.startswith("over budget"))
    assert sorted(n for n, _ in pairs) == stale, failed  # each exactly once
    retries = dict(pairs)
    done = (TrialState.COMPLETE, TrialState.PRUNED)
    assert all(t.state in done for t in retries.values() if t.number not in failed), failed
    return retries


def test_optimize_with_two_workers_meets_the_exact_budget(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    args = [*tiny_overrides(tiny_model_dir, tmp_path), "workers=2", "study.n_trials=10"]
    proc = hpo_cli("optimize", *args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = load(tmp_path, "sycophancy")
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 10
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2
    assert sum(1 for t in study.trials if t.user_attrs.get("baseline")) == 1
    assert (tmp_path / "bundle" / "steering.json").is_file()


def test_sigterm_marks_the_running_trial_failed_and_exits(tmp_path: Path) -> None:
    args = ["experiment=smoke", f"output_dir={tmp_path}", "study.n_trials=30"]
    created = hpo_cli("optimize", *args, "study.n_trials=1", "export.enabled=false", cwd=tmp_path)
    assert created.returncode == 0, created.stderr[-2000:]
    worker = subprocess.Popen(
        [sys.executable, "-m", "hpo", "worker", *args],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    study = load(tmp_path, "smoke")
    deadline = time.monotonic() + 120
    while not study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        assert worker.poll() is None, worker.communicate()[1][-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.2)
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=120)
    assert worker.returncode == 130, err[-2000:]
    assert "interrupted" in err
    assert not study.get_trials(states=(TrialState.RUNNING,))
    failed = study.get_trials(states=(TrialState.FAIL,))
    assert len(failed) == 1
    assert failed[0].user_attrs["fail_reason"] == "worker stopped (signal SIGTERM)"


def test_a_crashed_worker_is_restarted_and_its_trial_retried(tmp_path: Path) -> None:
    args = [
        "experiment=smoke",
        f"output_dir={tmp_path}",
        "study.n_trials=6",
        "workers=2",
        "export.enabled=false",
        "storage.heartbeat_interval=1",
        "storage.grace_period=4",
    ]
    parent = subprocess.Popen(
        [sys.executable, "-m", "hpo", "optimize", *args],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    victim = None
    while victim is None:
        assert parent.poll() is None, parent.communicate()[1][-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.3)
        if not running_count(tmp_path):
            continue
        running = load(tmp_path, "smoke").get_trials(states=(TrialState.RUNNING,))
        victim = next((t for t in running if "worker" in t.user_attrs), None)
    os.kill(int(victim.user_attrs["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
    _, err = parent.communicate(timeout=600)
    assert parent.returncode == 0, err[-3000:]
    assert "restarting in" in err
    study = load(tmp_path, "smoke")
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 6
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    retry = stale_retries(study, victim.number)[victim.number]
    # params suggested before the kill are kept (the snapshot may predate some of them)
    assert study.trials[victim.number].params.items() <= retry.params.items()
    assert victim.params.items() <= retry.params.items()


def test_sigterm_to_the_launcher_stops_every_worker_cleanly(tmp_path: Path) -> None:
    args = [f"output_dir={tmp_path}", "experiment=smoke", "study.n_trials=40", "workers=2"]
    parent = subprocess.Popen(
        [sys.executable, "-m", "hpo", "optimize", *args],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while True:
        assert parent.poll() is None, parent.communicate()[1][-2000:]
        assert time.monotonic() < deadline
        time.sleep(0.3)
        if running_count(tmp_path) == 2:
            break
    parent.send_signal(signal.SIGTERM)
    _, err = parent.communicate(timeout=120)
    assert parent.returncode == 130, err[-2000:]
    study = load(tmp_path, "smoke")
    assert not study.get_trials(states=(TrialState.RUNNING,))
    reasons = {
        t.user_attrs.get("fail_reason") for t in study.get_trials(states=(TrialState.FAIL,))
    }
    assert reasons == {"worker stopped (signal SIGTERM)"}
