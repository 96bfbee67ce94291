"""Real-process faults on PostgreSQL, beside `tests/test_faults_process.py`'s SQLite ones: a
worker stopped (SIGSTOP) past the grace period and resumed, the database server killed with
SIGKILL mid-study and restarted, and two `hpo optimize` of one new study started at once.

Each runs the tiny random Llama for a few trials with a 1 s heartbeat, on a PostgreSQL server of
its own (a fault must not reach another test's study).
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from tests.conftest import tiny_overrides
from tests.pgserver import bindir, postgres_server
from tests.test_faults_process import Start, assert_exact_budget, finish
from tests.test_faults_process import start as start  # the fixture, re-exported

pytestmark = pytest.mark.slow

STUDY = "faults"
GRACE_S = 3
FAST = ["storage.heartbeat_interval=1", f"storage.grace_period={GRACE_S}", "export.enabled=false"]


@pytest.fixture
def own_postgres() -> Iterator[str]:
    """A PostgreSQL server of this test's own (it may be killed)."""
    found = bindir()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries are missing (.ci/run installs them)")
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    with postgres_server(found) as url:
        yield url


def _port(url: str) -> int:
    found = re.search(r"@127\.0\.0\.1:(\d+)/", url)
    assert found, url
    return int(found.group(1))


def _server_root(url: str) -> Path:
    """The server's folder (`tests.pgserver` puts its socket there)."""
    [socket_file] = glob.glob(f"/tmp/hpo-pg-*/.s.PGSQL.{_port(url)}")
    return Path(socket_file).parent


def kill_server(url: str) -> None:
    """SIGKILL the postmaster and every backend, as a crash of the database machine would."""
    postmaster = int((_server_root(url) / "data" / "postmaster.pid").read_text().split()[0])
    pids = [postmaster]
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == postmaster:  # its parent
            pids.append(int(Path(stat).parent.name))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while any(Path(f"/proc/{pid}").exists() for pid in pids):
        assert time.monotonic() < deadline, "the killed server did not go"
        time.sleep(0.1)


def restart_server(url: str) -> None:
    """Start the killed server again on its data directory and port (it recovers its WAL)."""
    root, bin_dir = _server_root_after_kill(url), bindir()
    assert bin_dir is not None
    run_as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run(
        [*run_as, str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "log"),
         "-w", "-o", f"-p {_port(url)} -h 127.0.0.1 -k {root} -c max_connections=100", "start"],
        check=True, capture_output=True,
    )  # fmt: skip


def _server_root_after_kill(url: str) -> Path:
    # the socket file may be gone with the server: find the folder by its lock file's port
    for lock in glob.glob("/tmp/hpo-pg-*/data/postmaster.pid"):
        lines = Path(lock).read_text().splitlines()
        if len(lines) > 3 and lines[3].strip() == str(_port(url)):
            return Path(lock).parents[1]
    return _server_root(url)


def load(url: str) -> optuna.Study:
    return optuna.load_study(study_name=STUDY, storage=url)


def running(url: str) -> list[FrozenTrial]:
    try:
        trials = load(url).get_trials(states=(TrialState.RUNNING,))
    except Exception:  # not created yet, or the server is down
        return []
    return [t for t in trials if "worker" in t.user_attrs]


def first_running(proc: subprocess.Popen[str], url: str, timeout_s: float = 300) -> FrozenTrial:
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, f"exited with {proc.returncode} before a trial ran"
        assert time.monotonic() < deadline, "no trial started"
        found = running(url)
        if found:
            return found[0]
        time.sleep(0.2)


def args_for(model: Path, out: Path, url: str, *extra: str) -> list[str]:
    return [
        *tiny_overrides(model, out),
        f"storage.url={url}",
        f"study.name={STUDY}",
        *FAST,
        *extra,
    ]


def test_a_postgres_worker_stopped_past_the_grace_period_loses_its_trial_to_a_retry(
    tiny_model_dir: Path, tmp_path: Path, start: Start, own_postgres: str
) -> None:
    log = tmp_path / "optimize.log"
    args = args_for(tiny_model_dir, tmp_path, own_postgres, "study.n_trials=8", "workers=2")
    parent = start(log, "optimize", *args, "workers_check=false")
    for _ in range(4):  # a trial that ends while its worker is being stopped cannot be lost
        victim = first_running(parent, own_postgres)
        pid = int(victim.user_attrs["worker"].rsplit(":", 1)[1])
        os.kill(pid, signal.SIGSTOP)
        deadline = time.monotonic() + GRACE_S + 30
        while time.monotonic() < deadline:
            if load(own_postgres).trials[victim.number].state != TrialState.RUNNING:
                break
            time.sleep(0.3)
        if load(own_postgres).trials[victim.number].state == TrialState.FAIL:
            break
        os.kill(pid, signal.SIGCONT)
    else:
        pytest.fail("no running trial was failed while its worker was stopped")
    time.sleep(1)
    os.kill(pid, signal.SIGCONT)
    err = finish(parent, log)
    assert parent.returncode == 0, err[-3000:]
    assert "Traceback" not in err and "restarting in" not in err, err[-3000:]
    assert f"trial {victim.number} was failed by another worker while this one was stopped" in err
    study = load(own_postgres)
    assert_exact_budget(study, 8)
    [retry] = [t for t in study.trials if "failed_trial" in t.system_attrs]
    assert retry.system_attrs["failed_trial"] == victim.number
    assert retry.state == TrialState.COMPLETE


def test_the_postgres_server_killed_mid_study_and_restarted_loses_no_budget(
    tiny_model_dir: Path, tmp_path: Path, start: Start, own_postgres: str
) -> None:
    log = tmp_path / "optimize.log"
    args = args_for(tiny_model_dir, tmp_path, own_postgres, "study.n_trials=6")
    proc = start(log, "optimize", *args)
    first_running(proc, own_postgres)
    kill_server(own_postgres)
    time.sleep(2)
    restart_server(own_postgres)
    err = finish(proc, log)
    assert "Traceback" not in err, err[-3000:]
    assert "s3cret-pw" not in err  # the password never reaches a log line
    if proc.returncode != 0:  # it lost the server: one line, and a rerun finishes the study
        assert proc.returncode == 2, err[-3000:]
        assert re.search(r"hpo optimize: error: .*storage", err), err[-3000:]
        rerun = finish(start(tmp_path / "rerun.log", "optimize", *args), tmp_path / "rerun.log")
        assert "Traceback" not in rerun, rerun[-3000:]
    study = load(own_postgres)
    assert_exact_budget(study, 6)
    assert not study.get_trials(states=(TrialState.RUNNING,))


def test_two_optimize_at_once_on_a_new_postgres_study_create_it_once_and_finish_it(
    tiny_model_dir: Path, tmp_path: Path, start: Start, own_postgres: str
) -> None:
    args = args_for(tiny_model_dir, tmp_path, own_postgres, "study.n_trials=6")
    logs = [tmp_path / f"optimize{i}.log" for i in range(2)]
    procs = [start(log, "optimize", *args) for log in logs]
    errs = [finish(p, log) for p, log in zip(procs, logs, strict=True)]
    for p, err in zip(procs, errs, strict=True):
        assert p.returncode == 0, err[-3000:]
        assert "already exists" not in err and "Traceback" not in err, err[-3000:]
    ranks = [re.findall(r"worker rank (\d+): sampler seed", err) for err in errs]
    assert sorted(r[0] for r in ranks)[0] == "0" and ranks[0] != ranks[1], ranks
    study = load(own_postgres)
    assert_exact_budget(study, 6)
    baselines = [t for t in study.trials if t.user_attrs.get("baseline")]
    assert [t.state for t in baselines] == [TrialState.COMPLETE]
    assert "hpo_config" in study.user_attrs
