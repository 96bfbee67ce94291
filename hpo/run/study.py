"""Create or join a study, prepare a worker once, and run trials until the exact budget is met."""

from __future__ import annotations

import dataclasses
import gc
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
from optuna.exceptions import ExperimentalWarning, StorageInternalError
from optuna.pruners import NopPruner
from optuna.study import StudyDirection
from sqlalchemy.exc import SQLAlchemyError

from hpo.core.config import CHARS_PER_TOKEN, RunConfig, TaskConfig
from hpo.core.errors import UserError
from hpo.core.objective_metrics import study_metrics
from hpo.core.record import BASELINE_ATTR, CONFIG_ATTR, metric_label
from hpo.core.selection import parse_rule
from hpo.model.loading import ModelShape, load_model, read_shape
from hpo.run import budget
from hpo.run.tasks import TaskSplits, load_task
from hpo.run.trial import Publish, SteeringObjective
from hpo.run.worker import Worker
from hpo.steering.activations import ActivationCache, load_or_build
from objectives import check_rows, check_task, make_objective
from search_spaces import baseline_params, validate
from storage import create_storage, default_sqlite_url, mask_url, sqlite_path

log = logging.getLogger(__name__)

# What must match for a worker to join a study: the same model, task and search space.
FINGERPRINT_KEYS = ("model", "model_diff", "task", "search_space")
# Settings that can run code on this machine. Never taken from the study database (anyone who
# can write a shared study could set them): each process uses its own config's value.
SECURITY_KEYS = ("model.trust_remote_code", "model_diff.trust_remote_code")
# How a worker runs, not what it computes: may differ between workers of one study.
PER_WORKER_KEYS = {
    "model.threads",
    "model.device",
    "task.objective.batch_size",
    "task.max_prompt_tokens",
    *SECURITY_KEYS,
}
MAX_CONSECUTIVE_FAILURES = 10


def storage_url(cfg: RunConfig) -> str:
    """`storage.url`, or the embedded default SQLite file in `output_dir`."""
    return cfg.storage.url or default_sqlite_url(cfg.output_dir)


def config_record(cfg: RunConfig) -> dict[str, Any]:
    """The resolved config as plain data, with the storage URL's password masked."""
    record = dataclasses.asdict(cfg)
    record["storage"]["url"] = mask_url(storage_url(cfg))
    return record


def _differences(stored: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(stored) | set(current)):
        a, b = stored.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b and f"{prefix}{key}" not in PER_WORKER_KEYS:
            out.append(f"{prefix}{key}: study has {a!r}, this run has {b!r}")
    return out


def security_notes(stored: dict[str, Any], cfg: RunConfig) -> list[str]:
    """One line per security setting the study's stored config asks for and this process's own
    config does not grant (it is not honoured)."""
    notes = []
    for key in SECURITY_KEYS:
        group, name = key.split(".")
        wanted = (stored.get(group) or {}).get(name)
        if wanted is True and not getattr(getattr(cfg, group), name):
            notes.append(
                f"the study's stored config sets {key}=true; not honoured: this process takes "
                f"{key} from its own config ({key}=false); set it there if you trust the model"
            )
    return notes


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
            the sampler by worker rank so workers do not propose the same points.

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
    except (SQLAlchemyError, StorageInternalError) as e:
        cause: BaseException = (
            e.__cause__ if isinstance(e, StorageInternalError) and e.__cause__ else e
        )
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
    storage = create_storage(cfg.storage, url)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)  # TPE's `group` is experimental
        sampler = _instantiate("sampler", _seeded(cfg)) if cfg.sampler else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)  # WilcoxonPruner is experimental
        pruner = _instantiate("pruner", cfg.pruner) if cfg.pruner else None
    metrics = study_metrics(cfg.task.objective)
    if len(metrics) > 1 and pruner is not None and not isinstance(pruner, NopPruner):
        log.log(
            logging.INFO if join else logging.DEBUG,
            "pruning disabled: Optuna does not prune multi-objective studies (metrics %s)",
            [m.name for m in metrics],
        )
        pruner = NopPruner()
    if not create:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        if cfg.study.name not in names:
            raise UserError(
                f"no study named {cfg.study.name!r} in {mask_url(url)}; studies there: {names}"
            )
    if create:
        study = optuna.create_study(
            study_name=cfg.study.name,
            storage=storage,
            sampler=sampler,
            pruner=pruner,
            directions=[StudyDirection[m.direction.upper()] for m in metrics],
            load_if_exists=True,
        )
    else:  # reading only: status, report and export never write the database
        study = optuna.load_study(
            study_name=cfg.study.name, storage=storage, sampler=sampler, pruner=pruner
        )
    record = config_record(cfg)
    stored = study.user_attrs.get(CONFIG_ATTR)
    if join and stored is not None:
        # A database this worker cannot write stops it here, before any model loads.
        storage.set_study_system_attr(
            storage.get_study_id_from_name(cfg.study.name),
            "hpo_last_join",
            f"{socket.gethostname()}:{os.getpid()}:{time.time()}",
        )
    if stored is None:
        names = [m.name for m in metrics]
        if names != ["score"]:  # a plain study keeps Optuna's unnamed value (report labels it)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                study.set_metric_names(names)
        study.set_user_attr(CONFIG_ATTR, record)
        study.set_user_attr("optuna_version", optuna.__version__)
        _name_metric(study, cfg)
        if on_create is not None:
            on_create(study)
        if cfg.study.baseline:
            study.enqueue_trial(
                baseline_params(cfg.search_space),
                user_attrs={BASELINE_ATTR: True},
                skip_if_exists=True,
            )
    elif join:
        for note in security_notes(stored, cfg):
            log.warning(note)
        diffs = [
            d
            for k in FINGERPRINT_KEYS
            for d in _differences(stored.get(k) or {}, record[k], f"{k}.")
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
    return study


def _name_metric(study: optuna.Study, cfg: RunConfig) -> None:
    """Name a single-objective study's value after what it measures (Optuna, dashboard)."""
    if len(study.directions) == 1 and not study.metric_names:
        objective = cfg.task.objective
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            study.set_metric_names([metric_label(objective.kind, objective.scorer)])


def stored_config(study: optuna.Study) -> dict[str, Any]:
    """The resolved config a study was created with."""
    record = study.user_attrs.get(CONFIG_ATTR)
    if not isinstance(record, dict):
        raise UserError(f"study {study.study_name!r} was not created by hpo (no {CONFIG_ATTR})")
    return record


def prepare_worker(
    cfg: RunConfig, task: TaskSplits | None = None, validation: bool = True
) -> Worker:
    """Load the model, task, activation cache and (unless `validation=False`, as export needs
    only the test split) the prepared validation split, once."""
    task = load_task(cfg.task) if task is None else task
    loaded = load_model(cfg.model)
    objective = make_objective(cfg.task, loaded.tokenizer)
    pairs = objective.train_pairs(task.train)
    cache = load_or_build(loaded, pairs)
    finetuned = None
    if "model_diff" in cfg.search_space.method:
        finetuned = finetuned_cache(cfg, pairs)
    worker = Worker(cfg, loaded, objective, cache, None, finetuned)
    column = cfg.task.columns.get("prompt")
    if column:
        worker.prompts = [str(row[column]) for row in task.validation]
    if validation:
        worker.validation = worker.prepare(task.validation)
    return worker


def finetuned_cache(cfg: RunConfig, pairs: list[Any]) -> ActivationCache:
    """The finetuned model's activations on the same pairs (loaded only to extract them)."""
    loaded = load_model(cfg.model_diff.model_config(cfg.model))
    try:
        return load_or_build(loaded, pairs)
    finally:
        del loaded
        gc.collect()


def check_model_diff(cfg: RunConfig, shape: ModelShape) -> None:
    """`model_diff` needs a second model of the same shape as the steered one."""
    if "model_diff" not in cfg.search_space.method:
        return
    other = read_shape(cfg.model_diff.model_config(cfg.model))
    if (other.num_layers, other.hidden_size) != (shape.num_layers, shape.hidden_size):
        raise UserError(
            "model_diff.name_or_path must have the steered model's shape "
            f"({shape.num_layers} layers x {shape.hidden_size}), got {other.num_layers} layers "
            f"x {other.hidden_size} for {cfg.model_diff.name_or_path!r}"
        )


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


def check_config(cfg: RunConfig) -> TaskSplits:
    """Check all that can be checked before a model loads or a study is created.

    The search space against the model's shape (read from metadata), the objective kind and the
    columns it needs, and the task's data and splits. Returns the loaded splits.
    """
    check_task(cfg.task)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        for group, node in (("sampler", cfg.sampler), ("pruner", cfg.pruner)):
            if node:
                _instantiate(group, dict(node))
    shape = read_shape(cfg.model)
    validate(cfg.search_space, shape.num_layers)
    check_model_diff(cfg, shape)
    parse_rule(cfg.export.rule, cfg.task.objective)  # checks the metrics too
    splits = load_task(cfg.task)
    check_rows(cfg.task, splits.validation + ([] if cfg.task.train_source else splits.train))
    check_prompt_chars(cfg.task, [*splits.train, *splits.validation])
    return splits


def check_prompt_chars(task: TaskConfig, rows: list[dict[str, Any]]) -> None:
    """Refuse a row far longer than `task.max_prompt_tokens` before any model loads (the token
    count itself is checked once the rows are tokenized, in `Worker.prepare`)."""
    limit = task.max_prompt_tokens * CHARS_PER_TOKEN
    column = task.columns.get("prompt")
    for i, row in enumerate(rows):
        text = row.get(column) if column else None
        if isinstance(text, str) and len(text) > limit:
            raise UserError(
                f"task {task.name!r}: a prompt ({len(text)} characters, row {i}) cannot fit "
                f"task.max_prompt_tokens={task.max_prompt_tokens} tokens; long rows are refused, "
                "not truncated: shorten them or raise the limit"
            )


def run_trials(
    study: optuna.Study, worker: Worker, n_trials: int, publish: Publish | None = None
) -> None:
    """Run steering trials until the study has `n_trials` finished ones (see `hpo.run.budget`);
    `publish` sees every completed trial (the CLI's `hpo.monitor.publisher.Publisher`)."""
    objective = SteeringObjective(worker, publish)
    budget.run_trials(study, objective, n_trials, MAX_CONSECUTIVE_FAILURES)
