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
from optuna.exceptions import DuplicatedStudyError, ExperimentalWarning, StorageInternalError
from optuna.pruners import NopPruner
from optuna.study import StudyDirection
from optuna.trial import TrialState
from sqlalchemy.exc import SQLAlchemyError

from hpo.core.config import CHARS_PER_TOKEN, RunConfig, TaskConfig
from hpo.core.errors import UserError
from hpo.core.objective_metrics import study_metrics
from hpo.core.record import BASELINE_ATTR, CONFIG_ATTR, PROMPTED_ATTR, metric_label
from hpo.core.selection import parse_rule
from hpo.model.loading import ModelShape, load_model, read_shape
from hpo.run import budget
from hpo.run.layer_selection import candidate_layers, select_layers
from hpo.run.preflight import check_study_file, check_triggers
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
# How long a process that found a study just created by another waits for its config record.
CREATION_WAIT_S = 60.0


def storage_url(cfg: RunConfig) -> str:
    """`storage.url`, or the embedded default SQLite file in `output_dir`."""
    return cfg.storage.url or default_sqlite_url(cfg.output_dir)


def config_record(cfg: RunConfig) -> dict[str, Any]:
    """The resolved config as plain data, with the storage URL's password masked."""
    record = dataclasses.asdict(cfg)
    record["storage"]["url"] = mask_url(storage_url(cfg))
    return record


# The config every key defaults to: a study recorded before a key existed ran with its default.
DEFAULTS: dict[str, Any] = dataclasses.asdict(RunConfig())


def _with_defaults(stored: dict[str, Any], defaults: Any) -> dict[str, Any]:
    """`stored` with every key it lacks taken from `defaults` (recursively), so a study made
    by an older version, before a search-space or task key existed, still admits workers that
    leave that key at its default."""
    if not isinstance(defaults, dict):
        return stored
    out = dict(stored)
    for key, value in defaults.items():
        if key not in out:
            out[key] = value
        elif isinstance(out[key], dict):
            out[key] = _with_defaults(out[key], value)
    return out


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
    cache = load_or_build(loaded, pairs, heads="heads" in cfg.search_space.site)
    finetuned = None
    if "model_diff" in cfg.search_space.method:
        finetuned = finetuned_cache(cfg, pairs)
    worker = Worker(cfg, loaded, objective, cache, None, finetuned)
    column = cfg.task.columns.get("prompt")
    if column:
        worker.prompts = [str(row[column]) for row in task.validation]
    worker.validation_rows = list(task.validation)
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
    if cfg.search_space.layer_selection.mode != "none":
        candidate_layers(cfg.search_space)
    check_model_diff(cfg, shape)
    parse_rule(cfg.export.rule, cfg.task.objective)  # checks the metrics too
    splits = load_task(cfg.task)
    check_rows(cfg.task, splits.validation + ([] if cfg.task.train_source else splits.train))
    # the test split too (its length only): an over-long row must not wait for the export
    prompts = splits.test_prompts(cfg.task.columns.get("prompt"))
    check_prompt_chars(cfg.task, [*splits.train, *splits.validation, *prompts])
    check_triggers(cfg)
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
    with _storage_errors(storage_url(worker.cfg)):  # the server lost mid-study: one line
        select_layers(study, worker)  # search_space.layer_selection: narrow or enqueue first
        objective = SteeringObjective(worker, publish)
        budget.run_trials(study, objective, n_trials, MAX_CONSECUTIVE_FAILURES)
