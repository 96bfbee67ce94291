"""Search space config -> Optuna distributions and `suggest(trial)`, as pure functions."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from hpo import (
    AGGREGATIONS,
    ALPHA_SCALES,
    METHODS,
    POSITIONS,
    SearchSpaceConfig,
    UserError,
)

PARAMS = ("layer", "alpha", "aggregation", "method", "positions")


def _check_subset(name: str, values: list[str], allowed: tuple[str, ...]) -> None:
    if not values:
        raise UserError(f"search_space.{name} must list at least one of {list(allowed)}, got []")
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise UserError(f"search_space.{name} must be among {list(allowed)}, got {unknown}")


def validate(space: SearchSpaceConfig, num_layers: int) -> None:
    """Check every dimension against its rule and the model's layer count.

    Raises:
        UserError: the first rule broken, with the value that broke it.
    """
    layers = space.layers
    if layers.low > layers.high:
        raise UserError(
            f"search_space.layers.low <= high must hold, got low={layers.low}, high={layers.high}"
        )
    for key in ("low", "high"):
        value = getattr(layers, key)
        if not 0 <= value < num_layers:
            raise UserError(
                f"search_space.layers must lie in [0, {num_layers - 1}] for this model, "
                f"got {key}={value}"
            )
    if layers.step < 1:
        raise UserError(f"search_space.layers.step must be >= 1, got {layers.step}")
    alpha = space.alpha
    if alpha.low > alpha.high:
        raise UserError(
            f"search_space.alpha.low <= high must hold, got low={alpha.low}, high={alpha.high}"
        )
    if alpha.log and alpha.low <= 0:
        raise UserError(f"search_space.alpha.log needs alpha.low > 0, got low={alpha.low}")
    _check_subset("aggregation", space.aggregation, AGGREGATIONS)
    _check_subset("method", space.method, METHODS)
    _check_subset("positions", space.positions, POSITIONS)
    if space.alpha_scale not in ALPHA_SCALES:
        raise UserError(
            f"search_space.alpha_scale must be one of {list(ALPHA_SCALES)}, "
            f"got {space.alpha_scale!r}"
        )


def distributions(space: SearchSpaceConfig) -> dict[str, BaseDistribution]:
    """The Optuna distribution of every trial parameter."""
    return {
        "layer": IntDistribution(space.layers.low, space.layers.high, step=space.layers.step),
        "alpha": FloatDistribution(space.alpha.low, space.alpha.high, log=space.alpha.log),
        "aggregation": CategoricalDistribution(list(space.aggregation)),
        "method": CategoricalDistribution(list(space.method)),
        "positions": CategoricalDistribution(list(space.positions)),
    }


def suggest(trial: optuna.Trial, space: SearchSpaceConfig) -> dict[str, Any]:
    """Ask the trial for one value of every parameter, in a fixed order."""
    return {
        "layer": trial.suggest_int(
            "layer", space.layers.low, space.layers.high, step=space.layers.step
        ),
        "alpha": trial.suggest_float(
            "alpha", space.alpha.low, space.alpha.high, log=space.alpha.log
        ),
        "aggregation": trial.suggest_categorical("aggregation", list(space.aggregation)),
        "method": trial.suggest_categorical("method", list(space.method)),
        "positions": trial.suggest_categorical("positions", list(space.positions)),
    }


def baseline_params(space: SearchSpaceConfig) -> dict[str, Any]:
    """Params of the unsteered baseline trial: alpha = 0, the rest at a cheap valid value."""
    return {
        "layer": (space.layers.low + space.layers.high) // 2,
        "alpha": 0.0,
        "aggregation": space.aggregation[0],
        "method": space.method[0],
        # alpha = 0 steers nothing: take the positions whose scoring is cheapest.
        "positions": "prompt_end_onward"
        if "prompt_end_onward" in space.positions
        else space.positions[0],
    }
