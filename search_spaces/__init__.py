"""Hydra search-space config -> Optuna distributions; `suggest(trial)` -> trial params."""

from __future__ import annotations

from search_spaces._derived import SYMBOLS, Derived, parse_derived
from search_spaces._space import (
    ABLATE_ALPHA,
    PARAMS,
    PROMPTING_PARAM,
    baseline_params,
    derived_params,
    distributions,
    layer_scales,
    resolve,
    set_name,
    steered_layers,
    suggest,
    validate,
)

__all__ = [
    "ABLATE_ALPHA",
    "PARAMS",
    "PROMPTING_PARAM",
    "SYMBOLS",
    "Derived",
    "baseline_params",
    "derived_params",
    "distributions",
    "layer_scales",
    "parse_derived",
    "resolve",
    "set_name",
    "steered_layers",
    "suggest",
    "validate",
]
