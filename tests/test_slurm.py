"""`hpo worker -m hydra/launcher=slurm_cpu` on a real SLURM cluster on loopback (munge, MariaDB,
slurmdbd, slurmctld, slurmd) against a real PostgreSQL study: two jobs run trials at the same
time, the budget is exact, `hpo status` names each running trial's SLURM job, and faults (a
cancelled job, a killed worker, a requeued job) lose only the running trial."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from hpo import StorageConfig
from storage import create_storage
from tests.conftest import REPO, tiny_overrides
from tests.pgserver import bindir, postgres_server
from tests.slurmcluster import SlurmCluster, leftovers, missing, slurm_cluster

pytestmark = pytest.mark.slow

# Short heartbeats: a cancelled job's trial is failed and retried within seconds.
FAST_STORAGE = ["storage=postgres", "storage.heartbeat_interval=1", "storage.grace_period=6"]


def _require(what: str, ok: bool, fix: str) -> None:
    if ok:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} missing on CI ({fix})")
    pytest.skip(f"{what} not available: {fix}")


@pytest.fixture(scope="module")
def cluster() -> Iterator[SlurmCluster]:
    """A SLURM cluster for this module; afterwards no process of it is left."""
    _require("root (slurmd launches jobs as their user)", os.geteuid() == 0, "run as root")
    gone = missing()
    _require(f"SLURM tools {gone}", not gone, "tests/system_deps.sh installs them as root")
    with slurm_cluster() as c:
        root = c.root
        yield c
    assert leftovers(root) == []
    assert not root.exists()


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    found = bindir()
    _require("PostgreSQL", found is not None, "tests/system_deps.sh installs it")
    assert found is not None
    with postgres_server(found) as url:
        yield url


def hpo_env(cluster: SlurmCluster, url: str) -> dict[str, str]:
    path = f"{Path(sys.executable).parent}:{cluster.env['PATH']}"
    return {
        **os.environ,
        **cluster.env,
        "PATH": path,
        "HPO_STORAGE_URL": url,
        "PYTHONPATH": str(REPO),
        "PYTHONUNBUFFERED": "1",
    }


def study_args(model_dir: Path, out: Path, name: str) -> list[str]:
    return [*tiny_overrides(model_dir, out), f"study.name={name}", *FAST_STORAGE]


def create(env: dict[str, str], args: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hpo", "optimize", *args, "study.n_trials=1",
         "export.enabled=false"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]


def submit(
    env: dict[str, str], args: list[str], out: Path, log: Path, jobs: int = 2
) -> subprocess.Popen[str]:
    with log.open("w") as sink:
        return subprocess.Popen(
            [sys.executable, "-m", "hpo", "worker", "-m", "hydra/launcher=slurm_cpu",
             f"worker_rank=range(0,{jobs})", f"hydra.sweep.dir={out / 'multirun'}", *args],
            cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip


def load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=create_storage(StorageConfig(), url))


def running_by_job(study: optuna.Study) -> dict[str, FrozenTrial]:
    """One RUNNING trial per SLURM job that has one."""
    running = study.get_trials(states=(TrialState.RUNNING,))
    return {t.user_attrs["slurm_job_id"]: t for t in running if "slurm_job_id" in t.user_attrs}


N_TRIALS = 60


def test_three_slurm_jobs_share_a_study_and_faults_lose_only_the_running_trials(
    cluster: SlurmCluster, pg_url: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    name = f"slurm-{uuid.uuid4().hex[:8]}"
    env = hpo_env(cluster, pg_url)
    # Budget enough that the three jobs overlap and the requeued one still finds trials when
    # a loaded machine starts them minutes apart (20 ran out before the third job started).
    args = [*study_args(tiny_model_dir, tmp_path, name), f"study.n_trials={N_TRIALS}"]
    create(env, args)
    log = tmp_path / "submit.log"
    proc = submit(env, args, tmp_path, log, jobs=3)
    study = load(pg_url, name)
    deadline = time.monotonic() + 900  # generous: a loaded 2-core machine runs it slowly

    def all_three_running() -> dict[str, FrozenTrial]:
        """Wait until each job runs a trial: three workers at the same time."""
        while len(held := running_by_job(study)) < 3:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.3)
        assert len({t.user_attrs["worker"] for t in held.values()}) == 3
        return held

    all_three_running()
    seen: list[str] = []
    while not seen:  # `hpo status` names each running trial's host, pid and SLURM job
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        status = subprocess.run(
            [sys.executable, "-m", "hpo", "status", f"study.name={name}", *FAST_STORAGE],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
        ).stdout  # fmt: skip
        running = [line for line in status.splitlines() if line.startswith("running   trial")]
        seen = [line for line in running if "slurm job" in line]
    print("\n".join(seen))
    held = all_three_running()
    cancelled, killed, requeued = sorted(held)
    cluster.run("scancel", cancelled)
    os.kill(
        int(held[killed].user_attrs["worker"].rsplit(":", 1)[1]), signal.SIGKILL
    )  # inside its job
    requeued_at = time.time()
    cluster.run("scontrol", "requeue", requeued)
    proc.wait(timeout=500)
    out = log.read_text()
    assert proc.returncode == 0, out[-3000:]
    assert f"other jobs met study.n_trials={N_TRIALS}" in out
    failed = [
        f"{a['slurm_array_job_id']}_{a['slurm_array_task_id']}"
        for a in (held[cancelled].user_attrs, held[killed].user_attrs)
    ]
    assert any(job_id in out for job_id in failed), out[-3000:]  # the failed job is named
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == N_TRIALS
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    # SIGKILL is at once; scancel and requeue send SIGTERM first (submitit lets the running
    # trial go on until SIGKILL, KillWait later), so their trial may finish or die then
    lost = [
        t
        for t in study.get_trials(states=(TrialState.FAIL,))
        if not str(t.user_attrs.get("fail_reason", "")).startswith("over budget")
    ]
    # The killed worker's running trial is lost: the one held when it was picked, or a later
    # one when it finished that trial in the moment before the kill (tiny trials are fast).
    killed_worker = held[killed].user_attrs["worker"]
    assert any(t.user_attrs.get("worker") == killed_worker for t in lost), [
        (t.number, t.user_attrs.get("worker")) for t in lost
    ]
    for t in lost:
        retry = [r for r in study.trials if r.system_attrs.get("failed_trial") == t.number]
        assert len(retry) == 1  # same params (killed mid-suggestion: those it had)
        assert t.params.items() <= retry[0].params.items()
        assert retry[0].state == TrialState.COMPLETE
    for job in (cancelled, requeued):
        assert study.trials[held[job].number].state in (TrialState.COMPLETE, TrialState.FAIL)
    back = [
        t
        for t in finished
        if t.user_attrs.get("slurm_job_id") == requeued
        and t.datetime_start is not None
        and t.datetime_start.timestamp() > requeued_at
    ]
    assert back, "the requeued job came back and ran trials"
