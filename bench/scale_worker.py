"""One light worker of `bench.scale`: the real storage factory and trial loop (budget, retry,
stale-trial reaping), an objective that sleeps and reports, no model. Forked from the bench's
process after the imports, so each costs only its own pages (measured: PSS per worker)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import optuna

from hpo.core.config import StorageConfig
from hpo.core.errors import UserError
from hpo.core.placement import placement
from hpo.run.budget import run_trials
from storage import create_storage

REFUSED = 2


def serve(url: str, name: str, n_trials: int, sleep_s: float, pooler: bool, out: Path) -> int:
    """Run trials until the study's budget is met; write per-trial storage latencies to
    `out` (JSON). 2 when the server refused the connections (the ceiling)."""
    cfg = StorageConfig(heartbeat_interval=2, grace_period=6, pooler=pooler)
    try:
        storage = create_storage(cfg, url)
    except UserError as e:
        out.write_text(json.dumps({"refused": str(e)}))
        return REFUSED
    study = optuna.load_study(
        study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler()
    )
    gaps: list[float] = []  # objective end -> next objective start: tell + budget + ask
    last_end: list[float] = []

    def objective(trial: optuna.Trial) -> float:
        start = time.perf_counter()
        if last_end:
            gaps.append(start - last_end[-1])
        trial.set_user_attr("worker", placement()["worker"])
        trial.set_user_attr("pid", os.getpid())
        x = trial.suggest_float("x", 0.0, 1.0)
        time.sleep(sleep_s / 2)
        trial.report(x, 0)
        time.sleep(sleep_s / 2)
        last_end.append(time.perf_counter())
        return x

    run_trials(study, objective, n_trials)
    out.write_text(json.dumps({"gaps": gaps}))
    return 0


def child(url: str, name: str, n_trials: int, sleep_s: float, pooler: bool, out: Path) -> None:
    """The forked child's body: never returns (os._exit skips the parent's inherited state)."""
    code = 1
    try:
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        code = serve(url, name, n_trials, sleep_s, pooler, out)
    except BaseException as e:  # reported to the parent through the file
        out.write_text(json.dumps({"error": f"{type(e).__name__}: {e}"}))
    finally:
        os._exit(code)
