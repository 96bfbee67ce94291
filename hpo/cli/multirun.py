"""`hpo worker -m ...`: a Hydra launcher (SLURM through submitit, ...) starts the workers."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from omegaconf import DictConfig

from hpo.cli.composition import _compose
from hpo.cli.log_setup import _setup_logging
from hpo.core.errors import UserError


def _multirun(
    verb: str,
    config_name: str,
    run: Callable[[DictConfig, Sequence[str]], int],
    overrides: list[str],
    config_dirs: list[str],
) -> int:
    """`hpo worker -m hydra/launcher=submitit_slurm ...`: let a Hydra launcher start the workers.

    Each launched job composes the same config and runs the verb; SLURM (through submitit) or
    any other Hydra launcher owns scheduling, we own nothing but the job body.
    """
    import hydra

    errors: list[str] = []

    @hydra.main(version_base="1.3", config_path="pkg://conf", config_name=config_name)
    def job(cfg: DictConfig) -> int:
        _setup_logging(str(cfg.get("log_level", "INFO")))
        try:
            return run(cfg, overrides)
        except UserError as e:
            errors.append(str(e))
            return 2

    extra = [f"--config-dir={Path(d).expanduser().resolve()}" for d in config_dirs]
    saved = sys.argv
    sys.argv = [f"hpo-{verb}", "--multirun", *extra, *overrides]
    try:
        job()
    except SystemExit as e:  # Hydra reported a launched job that failed (SLURM: which one)
        if e.code in (0, None) or verb != "worker":
            raise
        return _after_failed_job(config_name, overrides, config_dirs)
    finally:
        sys.argv = saved
    if errors:
        raise UserError(errors[0])
    return 0


REQUEUE_WAIT_S = 180.0


def _after_failed_job(config_name: str, overrides: list[str], config_dirs: list[str]) -> int:
    """0 when the other jobs still meet the study's budget, else one line and exit 2."""
    from hpo.core.config import to_run_config
    from hpo.run.budget import outlast_failed_job
    from hpo.run.study import open_study

    sweep = ("hydra/launcher=", "hydra.", "worker_rank=")
    kept = [o for o in overrides if not o.lstrip("+~").startswith(sweep)]
    cfg = to_run_config(_compose(config_name, kept, config_dirs))
    study = open_study(cfg, create=False)
    n = cfg.study.n_trials
    # long enough for a requeued job to queue, start and load the model again
    stall_s = max(2.0 * cfg.storage.grace_period, REQUEUE_WAIT_S)
    done = outlast_failed_job(study, n, stall_s)
    if done < n:
        raise UserError(
            f"a launched job failed (see above) and the study has {done} of study.n_trials={n} "
            f"finished trials after {stall_s:.0f}s without progress; run `hpo worker` again"
        )
    logging.getLogger(__name__).warning(
        "a launched job failed (see above); the other jobs met study.n_trials=%d", n
    )
    return 0
