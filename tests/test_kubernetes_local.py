"""The Kubernetes Job of docs/cluster.md without a cluster (none runs here): its container
command and environment (HPO_STORAGE_URL from the secret) as N local processes against a real
PostgreSQL,
with `restartPolicy: OnFailure` semantics (a killed pod's container is started again, up to
`backoffLimit`). The study still ends with the exact budget and nothing RUNNING."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from hpo import StorageConfig
from storage import create_storage
from tests.conftest import REPO, doc_text, tiny_overrides
from tests.pgserver import bindir, postgres_server

pytestmark = pytest.mark.slow

N_TRIALS = 6


def readme_job() -> dict[str, Any]:
    block = re.search(r"```yaml\n(apiVersion: batch/v1.*?)```", doc_text(), re.S)
    assert block, "docs/cluster.md has a Kubernetes Job example"
    job: dict[str, Any] = yaml.safe_load(block.group(1))
    return job


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    found = bindir()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries are missing (tests/system_deps.sh)")
        pytest.skip("PostgreSQL server binaries not installed")
    with postgres_server(found) as url:
        yield url


def pod_command(container: dict[str, Any], test_overrides: list[str]) -> list[str]:
    """The container's command, run by this Python; only `study.n_trials` is replaced (a small
    budget), and the tiny model stands in for the image's."""
    command = list(container["command"])
    assert command[:2] == ["hpo", "worker"]
    kept = [a for a in command[2:] if not a.startswith("study.n_trials=")]
    return [
        sys.executable,
        "-m",
        "hpo",
        "worker",
        *kept,
        f"study.n_trials={N_TRIALS}",
        *test_overrides,
    ]


def test_the_readme_job_as_local_pods_restarted_on_failure_meets_the_budget(
    pg_url: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    job = readme_job()
    spec = job["spec"]
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "OnFailure"
    container = pod["containers"][0]
    secrets = {"hpo-db": {"url": pg_url}}  # what `kubectl create secret` would hold
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for var in container["env"]:
        ref = var["valueFrom"]["secretKeyRef"]
        env[var["name"]] = secrets[ref["name"]][ref["key"]]
    name = next(a.split("=", 1)[1] for a in container["command"] if a.startswith("study.name="))
    overrides = [*tiny_overrides(tiny_model_dir, tmp_path), "storage.heartbeat_interval=1",
                 "storage.grace_period=5"]  # fmt: skip
    created = subprocess.run(
        [sys.executable, "-m", "hpo", "optimize", "storage=postgres", f"study.name={name}",
         *overrides, "study.n_trials=1", "export.enabled=false"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr[-3000:]
    cmd = pod_command(container, overrides)
    parallelism = min(int(spec["parallelism"]), 2)  # 2 cores: two pods stand for eight
    logs = [tmp_path / f"pod-{i}.log" for i in range(parallelism)]

    def start(i: int) -> subprocess.Popen[bytes]:
        with logs[i].open("ab") as sink:
            return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=sink, stderr=subprocess.STDOUT)

    pods = {i: start(i) for i in range(parallelism)}
    storage = create_storage(StorageConfig(), pg_url)
    study = optuna.load_study(study_name=name, storage=storage)
    restarts, killed = 0, False
    succeeded: set[int] = set()
    deadline = time.monotonic() + 600
    while len(succeeded) < parallelism:
        assert time.monotonic() < deadline, "pods did not finish"
        if not killed and study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            running = study.get_trials(states=(TrialState.RUNNING,))
            victim = next((t for t in running if "worker" in t.user_attrs), None)
            if victim is not None:
                pid = int(victim.user_attrs["worker"].rsplit(":", 1)[1])
                os.kill(pid, signal.SIGKILL)  # the node kills the container (OOM, eviction)
                killed = True
        for i, proc in pods.items():
            code = proc.poll()
            if code is None or i in succeeded:
                continue
            if code == 0:
                succeeded.add(i)
                continue
            restarts += 1  # restartPolicy: OnFailure, counted against backoffLimit
            assert restarts <= int(spec["backoffLimit"]), logs[i].read_text()[-3000:]
            pods[i] = start(i)
        time.sleep(0.3)
    assert killed and restarts >= 1
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == N_TRIALS
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))
    lost = [t for t in study.trials if t.state == TrialState.FAIL and "over budget" not in
            str(t.user_attrs.get("fail_reason", ""))]  # fmt: skip
    assert len(lost) == 1
    retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == lost[0].number]
    assert len(retry) == 1  # same params (a trial killed mid-suggestion: those it had)
    assert lost[0].params.items() <= retry[0].params.items()
