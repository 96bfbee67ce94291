"""A worker process with a trivial objective, for the multi-process storage tests.

python -m tests.storage_tests.trivial_worker STUDY N_TRIALS SLEEP_S [pooler]
(URL in HPO_STORAGE_URL; `pooler`: it points at PgBouncer in transaction mode)
"""

from __future__ import annotations

import os
import sys
import time

import optuna

from hpo import StorageConfig
from hpo.run.budget import run_trials
from storage import create_storage


def main() -> None:
    name, n_trials, sleep_s = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    pooler = sys.argv[4:] == ["pooler"]
    cfg = StorageConfig(heartbeat_interval=1, grace_period=3, pooler=pooler)
    storage = create_storage(cfg, os.environ["HPO_STORAGE_URL"])
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(
        study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler()
    )

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        trial.set_user_attr("pid", os.getpid())
        time.sleep(sleep_s)
        return x

    run_trials(study, objective, n_trials)


if __name__ == "__main__":
    main()
