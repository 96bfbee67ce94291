"""Hydra search-space config -> Optuna distributions; `suggest(trial)` -> trial params."""

from __future__ import annotations

from search_spaces._space import PARAMS, baseline_params, distributions, suggest, validate

__all__ = ["PARAMS", "baseline_params", "distributions", "suggest", "validate"]
