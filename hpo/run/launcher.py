"""`hpo optimize workers=N`: N local `hpo worker` processes on one study, supervised.

One process per GPU (`CUDA_VISIBLE_DEVICES`), or CPU processes sharing the cores. A worker that
crashes is restarted with back-off while the budget is unmet; stale trials of dead workers are
failed (and retried by the storage's retry callback). Ctrl-C / SIGTERM is forwarded to every
worker, which marks its running trial FAIL and exits; nothing is left RUNNING.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

import optuna
import torch

from hpo.core.config import RunConfig
from hpo.core.errors import UserError
from hpo.run.budget import fail_stale_trials, finished_trials

log = logging.getLogger(__name__)

MAX_RESTARTS = 3
USER_ERROR = 2
STOP_TIMEOUT_S = 60.0


def worker_command(args: Sequence[str], rank: int, threads: int | None) -> list[str]:
    """The `hpo worker` command line of one rank (same overrides as the parent)."""
    own = ("workers=", "worker_rank=", "model.threads=")
    kept = [a for a in args if not a.lstrip("+~").startswith(own)]
    cmd = [sys.executable, "-m", "hpo", "worker", *kept, "workers=1", f"worker_rank={rank}"]
    if threads is not None:
        cmd.append(f"model.threads={threads}")
    return cmd


def worker_env(rank: int, gpus: int) -> dict[str, str]:
    """Environment of one rank: its own GPU when there are GPUs."""
    env = dict(os.environ)
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = str(rank % gpus)
    return env


def _stop(procs: dict[int, subprocess.Popen[bytes]]) -> None:
    for p in procs.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    for p in procs.values():
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def run_workers(
    cfg: RunConfig, study: optuna.Study, args: Sequence[str], poll_s: float = 1.0
) -> None:
    """Spawn `cfg.workers` workers, supervise them until the study's budget is met.

    Raises:
        UserError: every worker refused the config (exit code 2) or kept crashing.
    """
    n = cfg.workers
    gpus = torch.cuda.device_count()
    threads = None if gpus else max(1, (os.cpu_count() or 1) // n)
    if cfg.model.threads is not None:
        threads = cfg.model.threads
    log.info("starting %d workers (%s)", n, f"{gpus} GPUs" if gpus else f"{threads} threads each")

    # Ranks first..first+n-1: `open_study` made `cfg.worker_rank` 0 when this process created
    # the study, else a rank of its own, so a second `hpo optimize` on it seeds its workers apart.
    first = cfg.worker_rank or 0

    def spawn(rank: int) -> subprocess.Popen[bytes]:
        command = worker_command(args, first + rank, threads)
        return subprocess.Popen(command, env=worker_env(rank, gpus))

    procs = {rank: spawn(rank) for rank in range(n)}
    restarts = dict.fromkeys(procs, 0)
    refused = 0
    try:
        while procs:
            time.sleep(poll_s)
            fail_stale_trials(study)
            for rank, proc in list(procs.items()):
                code = proc.poll()
                if code is None:
                    continue
                del procs[rank]
                if code == 0 or finished_trials(study) >= cfg.study.n_trials:
                    continue
                if code == USER_ERROR:
                    refused += 1
                    continue
                if restarts[rank] >= MAX_RESTARTS:
                    log.error("worker %d crashed %d times; giving up on it", rank, MAX_RESTARTS)
                    continue
                delay = min(2.0 ** restarts[rank], 30.0)
                log.warning("worker %d exited with %d; restarting in %.0fs", rank, code, delay)
                time.sleep(delay)
                restarts[rank] += 1
                procs[rank] = spawn(rank)
    except BaseException:
        _stop(procs)
        raise
    done = finished_trials(study)
    if done < cfg.study.n_trials:
        why = "refused the config" if refused == n else "stopped or crashed"
        raise UserError(
            f"workers {why} with {done} of study.n_trials={cfg.study.n_trials} trials finished; "
            "see the log above"
        )
