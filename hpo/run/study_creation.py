"""Create or join a study: open its storage, create it exactly once (recording its config and
enqueueing the baselines), or check that a joining worker runs the same config."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import optuna
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf
from optuna.exceptions import DuplicatedStudyError, ExperimentalWarning, StorageInternalError
from optuna.pruners import NopPruner
from optuna.study import StudyDirection
from optuna.trial import TrialState
from sqlalchemy.exc import SQLAlchemyError

from hpo.core.config import RunConfig
from hpo.core.errors import UserError
from hpo.core.objective_metrics import study_metrics
from hpo.core.record import BASELINE_ATTR, CONFIG_ATTR, PROMPTED_ATTR, metric_label
from hpo.run.preflight import check_study_file
from hpo.run.study_record import (
    DEFAULTS,
    FINGERPRINT_KEYS,
    _differences,
    _with_defaults,
    config_record,
    security_notes,
    storage_url,
)
from search_spaces import baseline_params
from storage import create_storage, mask_url, sqlite_path

log = logging.getLogger(__name__)

# How long a process that found a study just created by another waits for its config record.
CREATION_WAIT_S = 60.0


def worker_rank(cfg: RunConfig) -> int:
    """This worker's rank: `worker_rank`, else a number derived from host and pid."""
    if cfg.worker_rank is not None:
        return cfg.worker_rank
    where = f"{socket.gethostname()}:{os.getpid()}"
    return int(hashlib.sha256(where.encode()).hexdigest()[:6], 16)


def _seeded(cfg: RunConfig) -> dict[str, Any]:
    sampler = dict(cfg.sampler)
    if "seed" in sampler and sampler["seed"] is not None:
        sampler["seed"] = int(sampler["seed"]) + worker_rank(cfg)
    return sampler


def open_study(
    cfg: RunConfig,
    create: bool = True,
    join: bool = True,
    on_create: Callable[[optuna.Study], None] | None = None,
) -> optuna.Study:
    """Load the study, or create it (recording its config and enqueueing the baseline).

    Args:
        cfg: the run's config.
        create: create the study when it does not exist (else refuse).
        join: this process will run trials: refuse a study made with another config, and seed
            the sampler by worker rank so workers do not propose the same points. A
            `cfg.worker_rank` of None is set here: 0 for the process that creates the study,
            else a rank derived from host and pid (two processes joining at once differ).

    Raises:
        UserError: the study does not exist and `create` is False, or `join` and it exists with
            a different model, task or search space (the differences are spelled out), or the
            database cannot be read (or, to run trials, written).
    """
    with _storage_errors(storage_url(cfg)):
        return _open_study(cfg, create, join, on_create)


@contextmanager
def _storage_errors(url: str) -> Iterator[None]:
    """A database that refuses a read or write (read-only file, lost server): one line."""
    try:
        yield
    except UserError:
        raise
    except Exception as e:
        # Optuna may raise another error while handling the lost connection (its own bug)
        found: BaseException | None = e
        while found is not None and not isinstance(found, SQLAlchemyError | StorageInternalError):
            found = found.__context__
        if found is None:
            raise
        cause: BaseException = found
        if isinstance(found, StorageInternalError) and found.__cause__:
            cause = found.__cause__
        reason = str(getattr(cause, "orig", None) or cause).splitlines() or [type(e).__name__]
        raise UserError(f"cannot use storage {mask_url(url)!r}: {reason[0]}") from e


def _open_study(
    cfg: RunConfig,
    create: bool,
    join: bool,
    on_create: Callable[[optuna.Study], None] | None,
) -> optuna.Study:
    url = storage_url(cfg)
    db = sqlite_path(url)
    if not create and db is not None and not db.is_file():
        # Opening it would leave an empty study.db behind a mistyped output_dir.
        raise UserError(
            f"no study named {cfg.study.name!r}: no study database at {db} "
            "(check output_dir or storage.url)"
        )
    if not create and db is not None:
        check_study_file(db)
    storage = create_storage(cfg.storage, url)
    metrics = study_metrics(cfg.task.objective)
    pruner = _pruner(cfg, [m.name for m in metrics], join)
    if not create:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        if cfg.study.name not in names:
            raise UserError(
                f"no study named {cfg.study.name!r} in {mask_url(url)}; studies there: {names}"
            )
    # Exactly one process creates a study (the storage refuses a duplicate name atomically):
    # it records the config and enqueues the baseline; any other waits for that record.
    created = create and _create(storage, cfg.study.name, [m.direction for m in metrics])
    if join and cfg.worker_rank is None:
        # The creator is rank 0 (a single-process study is reproducible); a process joining a
        # study that exists, maybe at the same moment as another, takes a rank of its own.
        cfg.worker_rank = 0 if created else worker_rank(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)  # TPE's `group` is experimental
        sampler = _instantiate("sampler", _seeded(cfg)) if cfg.sampler else None
    # reading only (status, report, export) never writes the database
    study = optuna.load_study(
        study_name=cfg.study.name, storage=storage, sampler=sampler, pruner=pruner
    )
    record = config_record(cfg)
    stored = study.user_attrs.get(CONFIG_ATTR)
    if stored is None and create and not created:
        stored = _await_config(study)
    if join and stored is not None:
        # A database this worker cannot write stops it here, before any model loads.
        storage.set_study_system_attr(
            storage.get_study_id_from_name(cfg.study.name),
            "hpo_last_join",
            f"{socket.gethostname()}:{os.getpid()}:{time.time()}",
        )
    if stored is None:
        if create or join:  # read-only verbs leave a study made by another tool as it is
            _initialise(study, cfg, record, on_create)
    elif join:
        for note in security_notes(stored, cfg):
            log.warning(note)
        diffs = [
            d
            for k in FINGERPRINT_KEYS
            for d in _differences(
                _with_defaults(stored.get(k) or {}, DEFAULTS[k]), record[k], f"{k}."
            )
        ]
        if diffs:
            raise UserError(
                f"study {cfg.study.name!r} was made with another config ({'; '.join(diffs)}); "
                "use another study.name or the same overrides"
            )
        theirs = str(study.user_attrs.get("optuna_version", "?"))
        if theirs.split(".")[0] != optuna.__version__.split(".")[0]:
            raise UserError(
                f"study {cfg.study.name!r} was made with Optuna {theirs}, this worker has "
                f"{optuna.__version__}: workers must share the Optuna major version"
            )
    if join:
        log.info(
            "worker rank %d: sampler seed %s", worker_rank(cfg), _seeded(cfg).get("seed", "none")
        )
    return study


def _pruner(cfg: RunConfig, metrics: list[str], join: bool) -> Any:
    """The configured pruner; none for a multi-objective study (Optuna does not prune those)."""
    if not cfg.pruner:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)  # WilcoxonPruner is experimental
        pruner = _instantiate("pruner", cfg.pruner)
    if len(metrics) > 1 and not isinstance(pruner, NopPruner):
        log.log(
            logging.INFO if join else logging.DEBUG,
            "pruning disabled: Optuna does not prune multi-objective studies (metrics %s)",
            metrics,
        )
        pruner = NopPruner()
    return pruner


def _create(storage: optuna.storages.BaseStorage, name: str, directions: list[str]) -> bool:
    """Create the study; False when it exists (maybe created by another process just now)."""
    try:
        storage.create_new_study([StudyDirection[d.upper()] for d in directions], name)
    except DuplicatedStudyError:
        return False
    return True


def _await_config(study: optuna.Study) -> dict[str, Any] | None:
    """The config record of a study another process is creating right now (it writes the
    record last); None at once for a study that has run trials without one, else after
    `CREATION_WAIT_S`."""
    deadline = time.monotonic() + CREATION_WAIT_S
    while True:
        stored = study.user_attrs.get(CONFIG_ATTR)
        if stored is not None:
            return dict(stored)
        started = any(t.state != TrialState.WAITING for t in study.get_trials(deepcopy=False))
        if started or time.monotonic() > deadline:
            return None
        time.sleep(0.2)


def _initialise(
    study: optuna.Study,
    cfg: RunConfig,
    record: dict[str, Any],
    on_create: Callable[[optuna.Study], None] | None,
) -> None:
    """Record a new study's metric names and config and enqueue its baseline (and, when the
    task has an instruction, the prompted baseline right after it).

    The config record comes last: a process that joins meanwhile waits for it, so it never
    runs a trial before the baseline is enqueued.
    """
    names = [m.name for m in study_metrics(cfg.task.objective)]
    if names != ["score"]:  # a plain study keeps Optuna's unnamed value (report labels it)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            study.set_metric_names(names)
    study.set_user_attr("optuna_version", optuna.__version__)
    _name_metric(study, cfg)
    if cfg.study.baseline:
        study.enqueue_trial(
            baseline_params(cfg.search_space),
            user_attrs={BASELINE_ATTR: True},
            skip_if_exists=True,
        )
        if cfg.task.instruction is not None and cfg.study.n_trials > 1:
            # The unsteered model asked in words: what a user would try before a vector. It
            # counts against study.n_trials like the unsteered baseline.
            study.enqueue_trial(
                baseline_params(cfg.search_space),
                user_attrs={PROMPTED_ATTR: True},
            )
    study.set_user_attr(CONFIG_ATTR, record)
    if on_create is not None:
        on_create(study)


def _name_metric(study: optuna.Study, cfg: RunConfig) -> None:
    """Name a single-objective study's value after what it measures (Optuna, dashboard)."""
    if len(study.directions) == 1 and not study.metric_names:
        objective = cfg.task.objective
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            study.set_metric_names([metric_label(objective.kind, objective.scorer)])


def _instantiate(group: str, node: dict[str, Any]) -> Any:
    """Build a sampler or pruner from its config; a key it does not take is a user error."""
    try:
        return instantiate(OmegaConf.create(node))
    except InstantiationException as e:
        cause = e.__cause__ or e
        raise UserError(
            f"{group} {node.get('_target_')} cannot be built from {group} config "
            f"{ {k: v for k, v in node.items() if k != '_target_'} }: {cause}"
        ) from e
