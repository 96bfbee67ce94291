"""Typed configuration: Hydra composes, these dataclasses validate once, inner code sees only them.

`to_run_config` / `to_generate_config` are the only places a `DictConfig` is touched. Unknown
keys are rejected (the schemas are structured, hence struct) and every value is checked against
its rule here, so a bad config fails before any model loads.

The schemas live beside this module (`config_rules`, `task_config`, `search_space_config`,
`run_config`); every name stays importable from here.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hpo.core.config_rules import (
    BALANCES,
    CHARS_PER_TOKEN,
    DEFAULT_KL_MAX,
    DIRECTIONS,
    DTYPES,
    LOGLIKS,
    MAX_NEW_TOKENS,
    MAX_TRIALS,
)
from hpo.core.errors import UserError
from hpo.core.run_config import (
    DashboardConfig,
    ExportConfig,
    ExportRule,
    GenerateConfig,
    ModelConfig,
    ModelDiffConfig,
    ReportConfig,
    RunConfig,
    StorageConfig,
    StudyConfig,
)
from hpo.core.search_space_config import (
    LAYER_SELECTIONS,
    FloatRange,
    IntRange,
    LayerSelectionConfig,
    SearchSpaceConfig,
)
from hpo.core.task_config import (
    FluencyConfig,
    KLConfig,
    ObjectiveConfig,
    SplitConfig,
    TaskConfig,
)

__all__ = [
    "BALANCES",
    "CHARS_PER_TOKEN",
    "DEFAULT_KL_MAX",
    "DIRECTIONS",
    "DTYPES",
    "LAYER_SELECTIONS",
    "LOGLIKS",
    "MAX_NEW_TOKENS",
    "MAX_TRIALS",
    "DashboardConfig",
    "ExportConfig",
    "ExportRule",
    "FloatRange",
    "FluencyConfig",
    "GenerateConfig",
    "IntRange",
    "KLConfig",
    "LayerSelectionConfig",
    "ModelConfig",
    "ModelDiffConfig",
    "ObjectiveConfig",
    "ReportConfig",
    "RunConfig",
    "SearchSpaceConfig",
    "SplitConfig",
    "StorageConfig",
    "StudyConfig",
    "TaskConfig",
    "to_generate_config",
    "to_run_config",
]


def _to_object(schema: type, cfg: DictConfig) -> Any:
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), cfg)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        # OmegaConf messages are multi-line (full_key, object_type, ...): keep the first line.
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        key = getattr(e, "full_key", None)
        where = f" (at {key})" if key else ""
        raise UserError(f"invalid config{where}: {first}") from e


def to_run_config(cfg: DictConfig) -> RunConfig:
    """Validate a composed config into a `RunConfig` (unknown keys and bad values -> UserError)."""
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    data.pop("hydra", None)
    run = _to_object(RunConfig, OmegaConf.create(data))
    assert isinstance(run, RunConfig)
    return run


def to_generate_config(cfg: DictConfig) -> GenerateConfig:
    """Validate a composed `generate` config."""
    data = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(data, dict)
    data.pop("hydra", None)
    gen = _to_object(GenerateConfig, OmegaConf.create(data))
    assert isinstance(gen, GenerateConfig)
    return gen
