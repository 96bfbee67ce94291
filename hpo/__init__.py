"""steering-hpo: find the best activation-steering configuration for a model and ship it.

Public API: the config schemas, the errors, the vocabulary, the batching and KV-cache helpers
shared with `objectives/`, and `load_bundle` to apply an exported bundle to a transformers model.
"""

from __future__ import annotations

from hpo.batching import length_sorted_batches, pad_left
from hpo.bundle import Bundle, BundleError, load_bundle
from hpo.config import (
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
from hpo.errors import TrialFailure, UserError
from hpo.kv import output_cache, scratch_cache, with_cache
from hpo.progress import progress
from hpo.vocabulary import ADD_MODES, AGGREGATIONS, ALPHA_SCALES, METHODS, MODES, POSITIONS

__version__ = "0.1.0"


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
