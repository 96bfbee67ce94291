"""Faults on real `hpo optimize` processes and a real SQLite study: SIGTERM during the baseline,
a worker stopped (SIGSTOP) past the heartbeat grace period and resumed, and processes that open
one new study at the same moment."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from hpo.core.selection import pick_trial
from tests.conftest import REPO, tiny_overrides
from tests.test_cli import hpo_cli
from tests.test_workers_cli import load, running_count, stale_retries

pytestmark = pytest.mark.slow

STUDY = "sycophancy"  # the study name tiny_overrides gives
SIGTERMED = "worker stopped (signal SIGTERM)"


Start = Callable[..., "subprocess.Popen[str]"]


@pytest.fixture
def start() -> Iterator[Start]:
    """`start(log, verb, *args)`: `hpo <verb> args` in the background, stdout and stderr into
    `log` (a pipe nobody reads while the test waits would fill and stall the process). Each
    runs in its own process group, killed whole (workers too) if the test leaves it running."""
    procs: list[subprocess.Popen[str]] = []

    def run(log: Path, verb: str, *args: str) -> subprocess.Popen[str]:
        with log.open("w") as sink:
            proc = subprocess.Popen(
                [sys.executable, "-m", "hpo", verb, *args, "log_level=INFO"],
                cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, text=True,
                start_new_session=True,
            )  # fmt: skip
        procs.append(proc)
        return proc

    yield run
    for proc in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def finish(proc: subprocess.Popen[str], log: Path, timeout_s: float = 600) -> str:
    """Wait for the process; its output."""
    proc.wait(timeout=timeout_s)
    return log.read_text()


def first_running(proc: subprocess.Popen[str], out: Path, timeout_s: float = 300) -> FrozenTrial:
    """The first RUNNING trial that records its worker (its objective has started)."""
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.poll() is None, f"exited with {proc.returncode} before a trial ran"
        assert time.monotonic() < deadline, "no trial started"
        time.sleep(0.1)
        if not running_count(out):
            continue
        running = load(out, STUDY).get_trials(states=(TrialState.RUNNING,))
        found = next((t for t in running if "worker" in t.user_attrs), None)
        if found is not None:
            return found


def state_of(out: Path, number: int) -> TrialState:
    return load(out, STUDY).trials[number].state


def assert_exact_budget(study: optuna.Study, n_trials: int) -> None:
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == n_trials
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))


def test_sigterm_during_the_baseline_enqueues_it_again_and_a_rerun_completes_the_study(
    tiny_model_dir: Path, tmp_path: Path, start: Start
) -> None:
    args = [*tiny_overrides(tiny_model_dir, tmp_path), "study.n_trials=4", "export.enabled=false"]
    log = tmp_path / "first.log"
    first = start(log, "optimize", *args)
    baseline = first_running(first, tmp_path)
    assert baseline.number == 0 and baseline.user_attrs["baseline"] is True
    first.send_signal(signal.SIGTERM)
    err = finish(first, log, 120)
    assert first.returncode == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]

    study = load(tmp_path, STUDY)
    [failed] = study.get_trials(states=(TrialState.FAIL,))
    assert failed.number == 0 and failed.user_attrs["fail_reason"] == SIGTERMED
    [again] = study.get_trials(states=(TrialState.WAITING,))
    assert again.user_attrs["baseline"] is True
    assert again.system_attrs["failed_trial"] == 0
    assert not study.get_trials(states=(TrialState.RUNNING,))

    rerun = hpo_cli("optimize", *args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    study = load(tmp_path, STUDY)
    assert_exact_budget(study, 4)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    [done] = [t for t in complete if t.user_attrs.get("baseline")]
    assert done.params["alpha"] == 0.0
    assert done.system_attrs["failed_trial"] == 0
    assert [t.number for t in study.get_trials(states=(TrialState.FAIL,))] == [0]

    status = hpo_cli("status", *args, cwd=tmp_path)
    assert status.returncode == 0, status.stderr[-2000:]
    assert re.search(r"^baseline\s+\d\.\d{4} \(alpha = 0\)$", status.stdout, re.M), status.stdout
    assert "n/a" not in status.stdout


def stop_until_failed_elsewhere(
    parent: subprocess.Popen[str], out: Path, grace_s: int
) -> tuple[FrozenTrial, int]:
    """SIGSTOP the worker of a running trial until the others fail that trial as stale.

    A worker stopped while it holds SQLite's write lock (a heartbeat being written) or just as
    its trial ends cannot lose the trial: it is resumed and another running trial is tried.
    """
    for _ in range(4):
        victim = first_running(parent, out)
        pid = int(victim.user_attrs["worker"].rsplit(":", 1)[1])
        os.kill(pid, signal.SIGSTOP)
        deadline = time.monotonic() + grace_s + 30
        while time.monotonic() < deadline:
            if state_of(out, victim.number) != TrialState.RUNNING:
                break
            time.sleep(0.3)
        if state_of(out, victim.number) == TrialState.FAIL:
            return victim, pid
        os.kill(pid, signal.SIGCONT)
    pytest.fail("no running trial was failed while its worker was stopped")


def test_a_worker_stopped_past_the_grace_period_discards_its_trial_and_carries_on(
    tiny_model_dir: Path, tmp_path: Path, start: Start
) -> None:
    grace_s = 3
    args = [
        *tiny_overrides(tiny_model_dir, tmp_path),
        "study.n_trials=8",
        "workers=2",
        "export.enabled=false",
        "storage.heartbeat_interval=1",
        f"storage.grace_period={grace_s}",
    ]
    log = tmp_path / "optimize.log"
    parent = start(log, "optimize", *args)
    victim, pid = stop_until_failed_elsewhere(parent, tmp_path, grace_s)
    time.sleep(1)
    os.kill(pid, signal.SIGCONT)
    err = finish(parent, log)
    assert parent.returncode == 0, err[-3000:]
    assert "Cannot tell" not in err and "Traceback" not in err, err[-3000:]
    assert "restarting in" not in err, "the resumed worker crashed"
    assert f"trial {victim.number} was failed by another worker while this one was stopped" in err

    study = load(tmp_path, STUDY)
    assert_exact_budget(study, 8)
    # an aborted attempt (the worker held SQLite's write lock) may fail more trials as stale
    retry = stale_retries(study, victim.number)[victim.number]
    assert victim.params.items() <= retry.params.items()
    # The resumed worker carried on (exit 0, no restart above); whether budget was left for it
    # to run another trial depends on how fast the other worker was, so that is not asserted.


def test_two_optimize_at_once_on_a_new_study_both_finish_it_with_distinct_seeds(
    tiny_model_dir: Path, tmp_path: Path, start: Start
) -> None:
    # both export the same winner into one export.dir: the second finds the first's bundle
    args = [*tiny_overrides(tiny_model_dir, tmp_path), "study.n_trials=12"]
    logs = [tmp_path / f"optimize{i}.log" for i in range(2)]
    procs = [start(log, "optimize", *args) for log in logs]
    errs = [finish(p, log) for p, log in zip(procs, logs, strict=True)]
    for p, err in zip(procs, errs, strict=True):
        assert p.returncode == 0, err[-3000:]
        assert "already exists" not in err and "Traceback" not in err, err[-3000:]
    seeds = [re.findall(r"worker rank (\d+): sampler seed (\d+)", err) for err in errs]
    assert all(len(s) == 1 for s in seeds), seeds
    assert seeds[0][0][1] != seeds[1][0][1]
    assert sorted(s[0][0] for s in seeds)[0] == "0"  # the creator keeps rank 0

    study = load(tmp_path, STUDY)
    assert_exact_budget(study, 12)
    baselines = [t for t in study.trials if t.user_attrs.get("baseline")]
    assert [t.state for t in baselines] == [TrialState.COMPLETE]
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert {t.user_attrs["worker"].rsplit(":", 1)[1] for t in complete} == {
        str(p.pid) for p in procs
    }
    steered = [tuple(sorted(t.params.items())) for t in complete if t not in baselines]
    assert len(set(steered)) == len(steered), "the two processes proposed the same params"
    meta = json.loads((tmp_path / "bundle" / "steering.json").read_text())
    assert meta["study"]["name"] == STUDY
    assert meta["study"]["trial"] == pick_trial(study, None).number


OPEN_AT_ONCE = """
import sys, time
from pathlib import Path
from tests.conftest import compose_run
from hpo.run.study import open_study
go, out = Path(sys.argv[1]), sys.argv[2]
# The unsteered baseline alone (the prompted one is enqueued the same way, right after it).
cfg = compose_run("study.name=s", f"output_dir={out}", "task.instruction=null")
Path(sys.argv[3]).touch()
while not go.exists():
    time.sleep(0.005)
study = open_study(cfg)
print("rank", cfg.worker_rank, "trials", len(study.trials))
"""


def test_processes_opening_one_new_study_at_once_create_it_once(tmp_path: Path) -> None:
    """Several processes released together into `open_study` on a new SQLite file: none fails
    on the schema or the study row, one records the config and enqueues the baseline."""
    go, out, n = tmp_path / "go", tmp_path / "run", 3
    env = {k: v for k, v in os.environ.items() if k != "HPO_STORAGE_URL"}
    ready = [tmp_path / f"ready{i}" for i in range(n)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_AT_ONCE, str(go), str(out), str(r)],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in ready
    ]
    deadline = time.monotonic() + 300
    while not all(r.exists() for r in ready):
        assert all(p.poll() is None for p in procs), [p.communicate()[1][-2000:] for p in procs]
        assert time.monotonic() < deadline
        time.sleep(0.05)
    go.touch()
    results = [p.communicate(timeout=300) for p in procs]
    for p, (stdout, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-3000:]
        assert re.fullmatch(r"rank \d+ trials 1\n", stdout), stdout
    ranks = [int(stdout.split()[1]) for stdout, _ in results]
    assert ranks.count(0) == 1 and len(set(ranks)) == n
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{out}/study.db")
    [baseline] = study.trials
    assert baseline.state == TrialState.WAITING and baseline.user_attrs["baseline"] is True
    assert "hpo_config" in study.user_attrs
