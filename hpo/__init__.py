"""steering-hpo: find the best activation-steering configuration for a model and ship it.

Public API: the config schemas, the errors, the vocabulary (all torch-free, imported at once),
`load_bundle` to apply an exported bundle to a transformers model, and the batching and
KV-cache helpers; the torch-bound names load on first use, so `import hpo` (and `hpo --help`)
stays light.

Subpackages, one role each: `core` (torch-free base and the study record), `model`, `steering`,
`run` (study, worker, trial), `export` (bundles), `monitor` (report, status, dashboard), `cli`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from hpo.core.config import (
    ExportConfig,
    ExportRule,
    FluencyConfig,
    GenerateConfig,
    KLConfig,
    ModelConfig,
    ModelDiffConfig,
    ObjectiveConfig,
    RunConfig,
    SearchSpaceConfig,
    SplitConfig,
    StorageConfig,
    StudyConfig,
    TaskConfig,
)
from hpo.core.errors import TrialFailure, UserError
from hpo.core.progress import progress
from hpo.core.version import __version__
from hpo.core.vocabulary import (
    ADD_MODES,
    AGGREGATIONS,
    ALPHA_SCALES,
    METHODS,
    MODES,
    POSITIONS,
)

if TYPE_CHECKING:
    from hpo.export.bundle import Bundle, BundleError, load_bundle
    from hpo.model.batching import length_sorted_batches, pad_left
    from hpo.model.kv import output_cache, scratch_cache, with_cache

# Public names that need torch: loaded from their module on first access (PEP 562).
_LAZY = {
    "Bundle": "hpo.export.bundle",
    "BundleError": "hpo.export.bundle",
    "load_bundle": "hpo.export.bundle",
    "length_sorted_batches": "hpo.model.batching",
    "pad_left": "hpo.model.batching",
    "output_cache": "hpo.model.kv",
    "scratch_cache": "hpo.model.kv",
    "with_cache": "hpo.model.kv",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hpo' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "ADD_MODES",
    "AGGREGATIONS",
    "ALPHA_SCALES",
    "METHODS",
    "MODES",
    "POSITIONS",
    "Bundle",
    "BundleError",
    "ExportConfig",
    "ExportRule",
    "FluencyConfig",
    "GenerateConfig",
    "KLConfig",
    "ModelConfig",
    "ModelDiffConfig",
    "ObjectiveConfig",
    "RunConfig",
    "SearchSpaceConfig",
    "SplitConfig",
    "StorageConfig",
    "StudyConfig",
    "TaskConfig",
    "TrialFailure",
    "UserError",
    "__version__",
    "length_sorted_batches",
    "load_bundle",
    "output_cache",
    "pad_left",
    "progress",
    "scratch_cache",
    "with_cache",
]
