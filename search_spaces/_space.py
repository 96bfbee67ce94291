"""Search space config -> Optuna distributions and `suggest(trial)`, as pure functions.

The space is conditional: `alpha` is sampled only for the add modes (`ablate` removes a
direction and has no strength to search), so TPE should run with `group=True`. Trial params
hold only what was sampled; `resolve` completes them (defaults of absent dimensions, derived
params) and is the one function a trial and an export both call, so a bundle replays the trial.

The head-steering (CREST) and gate dimensions are sampled only when the space asks for them (a
space without them samples exactly as before): `site` first (`residual` or `heads`); a heads
trial samples `head_ratio` (or `heads_top_k`), `head_point` and `head_mode` instead of layer,
window, method and mode. The gates (`trigger`, `probe_gate` and its `gate_threshold`) apply to
both sites.
"""

from __future__ import annotations

from collections.abc import Collection
from functools import lru_cache
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from hpo.core.config import SearchSpaceConfig
from hpo.core.directions import METHODS
from hpo.core.errors import UserError
from hpo.core.modes import MODES, head_modes, mode_named
from hpo.core.positions import POSITIONS, positions_named
from hpo.core.prompting import NONE
from hpo.core.vocabulary import AGGREGATIONS, ALPHA_SCALES, HEAD_POINTS, PROBE_GATES, SITES
from search_spaces._derived import Derived, layer_scale, parse_derived

PARAMS = ("layer", "window", "mode", "alpha", "aggregation", "method", "positions")
HEAD_PARAMS = ("site", "head_ratio", "heads_top_k", "head_point", "head_mode")
GATE_PARAMS = ("trigger", "probe_gate", "gate_threshold")
# Sampled last, and only when searched: `none` or `instruction` (`hpo.core.prompting`).
PROMPTING_PARAM = "prompting"
LAYER_ALPHA = "layer_alpha"
# Alpha of an `ablate` trial: the whole component along the direction is removed.
ABLATE_ALPHA = 1.0


def _check_subset(name: str, values: list[str], allowed: Collection[str]) -> None:
    if not values:
        raise UserError(f"search_space.{name} must list at least one of {list(allowed)}, got []")
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise UserError(f"search_space.{name} must be among {list(allowed)}, got {unknown}")


def set_name(layers: list[int]) -> str:
    """A layer set as a categorical choice: `"8,10,12"`."""
    return ",".join(str(x) for x in layers)


@lru_cache(maxsize=64)
def _parsed(name: str, text: str) -> Derived:
    return parse_derived(name, text)


def derived_params(space: SearchSpaceConfig) -> list[Derived]:
    """The space's derived params, parsed once (cached) and checked."""
    out = [_parsed(name, text) for name, text in space.derived.items()]
    for d in out:
        if d.name == LAYER_ALPHA:
            layer_scale(d)
    return out


def _validate_layers(space: SearchSpaceConfig, num_layers: int) -> None:
    if space.layer_sets:
        for chosen in space.layer_sets:
            bad = [x for x in chosen if not 0 <= x < num_layers]
            if not chosen or bad or len(set(chosen)) != len(chosen):
                raise UserError(
                    "search_space.layer_sets must hold non-empty sets of distinct layers in "
                    f"[0, {num_layers - 1}] for this model, got {list(chosen)}"
                )
        return
    layers, window = space.layers, space.window
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
    if not 1 <= window.low <= window.high:
        raise UserError(
            "search_space.window must satisfy 1 <= low <= high, "
            f"got low={window.low}, high={window.high}"
        )
    if layers.high + window.high - 1 >= num_layers:
        raise UserError(
            "search_space.layers.high + window.high - 1 must be a layer of this model "
            f"(<= {num_layers - 1}), got {layers.high} + {window.high} - 1 = "
            f"{layers.high + window.high - 1}"
        )


def validate(space: SearchSpaceConfig, num_layers: int) -> None:
    """Check every dimension against its rule and the model's layer count.

    Raises:
        UserError: the first rule broken, with the value that broke it.
    """
    _validate_layers(space, num_layers)
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
    _check_subset("mode", space.mode, MODES)
    if space.alpha_scale not in ALPHA_SCALES:
        raise UserError(
            f"search_space.alpha_scale must be one of {list(ALPHA_SCALES)}, "
            f"got {space.alpha_scale!r}"
        )
    for derived in derived_params(space):
        for values in _corners(space):
            derived.evaluate(values)
    _validate_heads_and_gates(space)


def _validate_heads_and_gates(space: SearchSpaceConfig) -> None:
    _check_subset("site", space.site, SITES)
    _check_subset("head_point", space.head_point, HEAD_POINTS)
    _check_subset("head_mode", space.head_mode, head_modes())
    _check_subset("probe_gate", space.probe_gate, PROBE_GATES)
    ratio = space.head_ratio
    if not 0.0 < ratio.low <= ratio.high <= 1.0:
        raise UserError(
            "search_space.head_ratio must satisfy 0 < low <= high <= 1, "
            f"got low={ratio.low}, high={ratio.high}"
        )
    top_k = space.heads_top_k
    if top_k is not None and not 1 <= top_k.low <= top_k.high:
        raise UserError(
            "search_space.heads_top_k must satisfy 1 <= low <= high, "
            f"got low={top_k.low}, high={top_k.high}"
        )
    threshold = space.gate_threshold
    if not 0.0 < threshold.low <= threshold.high < 1.0:
        raise UserError(
            "search_space.gate_threshold must satisfy 0 < low <= high < 1, "
            f"got low={threshold.low}, high={threshold.high}"
        )
    if not space.trigger or len(set(space.trigger)) != len(space.trigger):
        raise UserError(
            "search_space.trigger must list distinct patterns ('' = no trigger), "
            f"got {space.trigger}"
        )


def _searched(values: list[str], default: str) -> bool:
    """Whether a seed-003 dimension is in the space (anything but its one default value)."""
    return list(values) != [default]


def _corners(space: SearchSpaceConfig) -> list[dict[str, float]]:
    """The extreme values of every symbol (alpha 0 is the baseline): where a derived param is
    checked to be a finite real number before the study starts."""
    if space.layer_sets:
        shapes = {(min(s), len(s)) for s in space.layer_sets}
    else:
        shapes = {
            (layer, window)
            for layer in (space.layers.low, space.layers.high)
            for window in (space.window.low, space.window.high)
        }
    alphas = sorted({space.alpha.low, space.alpha.high, 0.0})
    return [
        {"alpha": a, "layer": layer, "window": window}
        for a in alphas
        for layer, window in sorted(shapes)
    ]


def distributions(space: SearchSpaceConfig) -> dict[str, BaseDistribution]:
    """The Optuna distribution of every trial parameter (`alpha`: add modes only)."""
    out: dict[str, BaseDistribution] = {}
    if space.layer_sets:
        out["layer_set"] = CategoricalDistribution([set_name(s) for s in space.layer_sets])
    else:
        out["layer"] = IntDistribution(space.layers.low, space.layers.high, step=space.layers.step)
        out["window"] = IntDistribution(space.window.low, space.window.high)
    out["aggregation"] = CategoricalDistribution(list(space.aggregation))
    out["method"] = CategoricalDistribution(list(space.method))
    out["positions"] = CategoricalDistribution(list(space.positions))
    out["mode"] = CategoricalDistribution(list(space.mode))
    out["alpha"] = FloatDistribution(space.alpha.low, space.alpha.high, log=space.alpha.log)
    if _searched(space.site, "residual"):
        out["site"] = CategoricalDistribution(list(space.site))
    if "heads" in space.site:
        if space.heads_top_k is not None:
            out["heads_top_k"] = IntDistribution(space.heads_top_k.low, space.heads_top_k.high)
        else:
            out["head_ratio"] = FloatDistribution(space.head_ratio.low, space.head_ratio.high)
        out["head_point"] = CategoricalDistribution(list(space.head_point))
        out["head_mode"] = CategoricalDistribution(list(space.head_mode))
    if _searched(space.trigger, ""):
        out["trigger"] = CategoricalDistribution(list(space.trigger))
    if _searched(space.probe_gate, "off"):
        out["probe_gate"] = CategoricalDistribution(list(space.probe_gate))
        low, high = space.gate_threshold.low, space.gate_threshold.high
        out["gate_threshold"] = FloatDistribution(low, high)
    if _searched(space.prompting, NONE):
        out[PROMPTING_PARAM] = CategoricalDistribution(list(space.prompting))
    return out


def suggest(
    trial: optuna.Trial,
    space: SearchSpaceConfig,
    baseline: bool = False,
    prompting: str | None = None,
) -> dict[str, Any]:
    """Ask the trial for every dimension that applies, in a fixed order; return `resolve`d params.

    `baseline`: an enqueued unsteered trial, which asks for its fixed alpha = 0 in any mode.
    `prompting`: a reference trial's fixed prompt (`none` for the unsteered baseline,
    `instruction` for the prompted one), recorded in the result instead of sampled.
    """
    params = _suggest_steering(trial, space, baseline)
    if prompting is not None:
        return params | {PROMPTING_PARAM: prompting}
    if _searched(space.prompting, NONE):
        trial.suggest_categorical(PROMPTING_PARAM, list(space.prompting))
        return resolve(trial.params, space)
    return params


def _suggest_steering(
    trial: optuna.Trial, space: SearchSpaceConfig, baseline: bool
) -> dict[str, Any]:
    site = "residual"
    if _searched(space.site, "residual"):
        site = trial.suggest_categorical("site", list(space.site))
    if site == "heads":
        if space.heads_top_k is not None:
            trial.suggest_int("heads_top_k", space.heads_top_k.low, space.heads_top_k.high)
        else:
            trial.suggest_float("head_ratio", space.head_ratio.low, space.head_ratio.high)
        trial.suggest_categorical("head_point", list(space.head_point))
        trial.suggest_categorical("head_mode", list(space.head_mode))
        trial.suggest_float("alpha", space.alpha.low, space.alpha.high, log=space.alpha.log)
        trial.suggest_categorical("aggregation", list(space.aggregation))
        trial.suggest_categorical("positions", list(space.positions))
        _suggest_gates(trial, space)
        return resolve(trial.params, space)
    if space.layer_sets:
        trial.suggest_categorical("layer_set", [set_name(s) for s in space.layer_sets])
    else:
        trial.suggest_int("layer", space.layers.low, space.layers.high, step=space.layers.step)
        trial.suggest_int("window", space.window.low, space.window.high)
    # mode before alpha (alpha depends on it); a one-value dimension draws nothing from the
    # sampler, so a space without new dimensions samples exactly as before they existed.
    mode = trial.suggest_categorical("mode", list(space.mode))
    if mode_named(mode).has_alpha or baseline:
        trial.suggest_float("alpha", space.alpha.low, space.alpha.high, log=space.alpha.log)
    trial.suggest_categorical("aggregation", list(space.aggregation))
    trial.suggest_categorical("method", list(space.method))
    trial.suggest_categorical("positions", list(space.positions))
    _suggest_gates(trial, space)
    return resolve(trial.params, space)


def _suggest_gates(trial: optuna.Trial, space: SearchSpaceConfig) -> None:
    if _searched(space.trigger, ""):
        trial.suggest_categorical("trigger", list(space.trigger))
    if _searched(space.probe_gate, "off"):
        gate = trial.suggest_categorical("probe_gate", list(space.probe_gate))
        if gate != "off":
            low, high = space.gate_threshold.low, space.gate_threshold.high
            trial.suggest_float("gate_threshold", low, high)


def steered_layers(params: dict[str, Any]) -> list[int]:
    """The layers a resolved trial steers, ascending."""
    if "layer_set" in params:
        return sorted(int(x) for x in str(params["layer_set"]).split(","))
    first = int(params["layer"])
    return list(range(first, first + int(params.get("window", 1))))


def resolve(params: dict[str, Any], space: SearchSpaceConfig) -> dict[str, Any]:
    """Complete a trial's sampled params: absent dimensions get their fixed value, and every
    derived param is evaluated (those reading an absent symbol, e.g. alpha under ablate, skipped).

    Also accepts params of studies made before `mode` and `window` existed (add, one layer).
    A heads trial resolves to method `caa` and its `head_mode` (no layer, window or derived
    params: its layers come from the head ranking).
    """
    out = dict(params)
    # Absent gates and site stay absent: a residual, ungated trial resolves as it always did.
    if out.get("probe_gate", "off") != "off":
        out.setdefault("gate_threshold", space.gate_threshold.low)
    if out.get("site") == "heads":
        if "heads_top_k" not in out:
            out.setdefault("head_ratio", space.head_ratio.low)
        out.setdefault("head_point", space.head_point[0])
        out.setdefault("head_mode", space.head_mode[0])
        out["mode"] = out["head_mode"]
        out["method"] = "caa"
        return out
    out.setdefault("mode", "add")
    if not mode_named(out["mode"]).has_alpha:
        out.setdefault("alpha", ABLATE_ALPHA)
    layers = steered_layers(out)
    if "layer_set" in out:
        out["layer"] = layers[0]
    out["window"] = len(layers)
    numbers = {"layer": out["layer"], "window": out["window"]}
    if "alpha" in out and (mode_named(out["mode"]).has_alpha or "alpha" in params):
        numbers["alpha"] = out["alpha"]
    for d in derived_params(space):
        value = d.evaluate(numbers)
        if value is not None:
            out[d.name] = value
    return out


def layer_scales(params: dict[str, Any], space: SearchSpaceConfig) -> dict[int, float]:
    """Per-layer multiplier of alpha: `layer_alpha / alpha` (add modes), 1 for `ablate`."""
    layers = steered_layers(params)
    named = {d.name: d for d in derived_params(space)}
    if not mode_named(params.get("mode", "add")).has_alpha or LAYER_ALPHA not in named:
        return dict.fromkeys(layers, 1.0)
    scale = layer_scale(named[LAYER_ALPHA])
    values = {"layer": params["layer"], "window": len(layers)}
    number = Derived("scale", str(scale), scale).evaluate(values)
    assert number is not None
    return dict.fromkeys(layers, number)


def baseline_params(space: SearchSpaceConfig) -> dict[str, Any]:
    """Params of the unsteered baseline trial: alpha = 0, the rest at a cheap valid value."""
    out: dict[str, Any] = {}
    if "residual" not in space.site:
        out.update(site="heads", head_point=space.head_point[0], head_mode=space.head_mode[0])
        if space.heads_top_k is not None:
            out["heads_top_k"] = space.heads_top_k.low
        else:
            out["head_ratio"] = space.head_ratio.low
        out.update(
            aggregation=space.aggregation[0],
            positions=_cheapest_positions(space),
            alpha=0.0,
        )
        return out | _baseline_gates(space)
    if _searched(space.site, "residual"):
        out["site"] = "residual"
    if space.layer_sets:
        out["layer_set"] = set_name(space.layer_sets[0])
    else:
        out["layer"] = (space.layers.low + space.layers.high) // 2
        out["window"] = space.window.low
    adds = [m for m in space.mode if mode_named(m).has_alpha]
    out.update(
        aggregation=space.aggregation[0],
        method=space.method[0],
        positions=_cheapest_positions(space),
        mode=adds[0] if adds else space.mode[0],
        alpha=0.0,
    )
    return out | _baseline_gates(space)


def _cheapest_positions(space: SearchSpaceConfig) -> str:
    """alpha = 0 steers nothing: the positions whose scoring is cheapest (a reused prompt
    prefix), else the first listed."""
    reuse = [p for p in space.positions if positions_named(p).reuses_prompt_prefix]
    return reuse[0] if reuse else space.positions[0]


def _baseline_gates(space: SearchSpaceConfig) -> dict[str, Any]:
    """The baseline's gates, off where the space allows it (else TPE would sample them for a
    trial that steers nothing)."""
    out: dict[str, Any] = {}
    if _searched(space.trigger, "") and "" in space.trigger:
        out["trigger"] = ""
    if _searched(space.probe_gate, "off") and "off" in space.probe_gate:
        out["probe_gate"] = "off"
    return out
