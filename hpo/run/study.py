"""Create or join a study, prepare a worker once, and run trials until the exact budget is met."""

from __future__ import annotations

import gc
import logging
import warnings
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning

from hpo.core.config import CHARS_PER_TOKEN, RunConfig, TaskConfig
from hpo.core.errors import UserError
from hpo.core.selection import parse_rule
from hpo.model.loading import ModelShape, load_model, read_shape
from hpo.run import budget
from hpo.run.layer_selection import candidate_layers, select_layers
from hpo.run.passes import run_passes
from hpo.run.preflight import check_triggers
from hpo.run.study_creation import (
    CREATION_WAIT_S,
    _await_config,
    _create,
    _initialise,
    _instantiate,
    _name_metric,
    _open_study,
    _pruner,
    _seeded,
    _storage_errors,
    open_study,
    worker_rank,
)
from hpo.run.study_record import (
    DEFAULTS,
    FINGERPRINT_KEYS,
    PER_WORKER_KEYS,
    SECURITY_KEYS,
    _differences,
    _with_defaults,
    config_record,
    security_notes,
    storage_url,
    stored_config,
)
from hpo.run.tasks import TaskSplits, load_task
from hpo.run.trial import Publish, TrialRunner
from hpo.run.worker import Worker
from hpo.steering.activations import ActivationCache, load_or_build
from objectives import check_rows, check_task, make_objective
from search_spaces import validate

__all__ = [
    "CREATION_WAIT_S",
    "DEFAULTS",
    "FINGERPRINT_KEYS",
    "MAX_CONSECUTIVE_FAILURES",
    "PER_WORKER_KEYS",
    "SECURITY_KEYS",
    "_await_config",
    "_create",
    "_differences",
    "_initialise",
    "_instantiate",
    "_name_metric",
    "_open_study",
    "_pruner",
    "_seeded",
    "_storage_errors",
    "_with_defaults",
    "check_config",
    "check_model_diff",
    "check_prompt_chars",
    "config_record",
    "finetuned_cache",
    "open_study",
    "prepare_worker",
    "run_trials",
    "security_notes",
    "storage_url",
    "stored_config",
    "worker_rank",
]

log = logging.getLogger(__name__)

MAX_CONSECUTIVE_FAILURES = 10


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
    rows = list(task.validation) if validation else None
    return Worker(cfg, loaded, objective, cache, rows, finetuned)


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
        # search_space.layer_selection: enqueue the top layers first, or narrow the space
        space = select_layers(study, worker)
        runner = TrialRunner(worker, publish, space)
        per_pass = worker.cfg.study.trials_per_pass
        if per_pass > 1:
            run_passes(study, runner, n_trials, per_pass, MAX_CONSECUTIVE_FAILURES)
        else:
            budget.run_trials(study, runner, n_trials, MAX_CONSECUTIVE_FAILURES)
