"""Search space -> Optuna distributions, and the rules a spec must follow."""

from __future__ import annotations

import warnings
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from hpo import SearchSpaceConfig, UserError
from hpo.core.config import FloatRange, IntRange
from search_spaces import (
    baseline_params,
    distributions,
    layer_scales,
    resolve,
    steered_layers,
    suggest,
    validate,
)


def space(**kw: object) -> SearchSpaceConfig:
    base: dict[str, object] = {
        "layers": IntRange(3, 27),
        "alpha": FloatRange(-1.0, 1.0),
        "aggregation": ["choice", "last"],
        "method": ["caa"],
        "positions": ["all"],
    }
    base.update(kw)
    return SearchSpaceConfig(**base)  # type: ignore[arg-type]


def test_distributions_map_each_dimension() -> None:
    d = distributions(space(alpha=FloatRange(0.05, 1.5, log=True)))
    assert d["layer"] == IntDistribution(3, 27)
    assert d["window"] == IntDistribution(1, 1)
    assert d["mode"] == CategoricalDistribution(["add"])
    assert d["alpha"] == FloatDistribution(0.05, 1.5, log=True)
    assert d["aggregation"] == CategoricalDistribution(["choice", "last"])


def test_suggest_stays_inside_the_space() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        params = suggest(study.ask(), space())
        assert 3 <= params["layer"] <= 27
        assert -1.0 <= params["alpha"] <= 1.0
        assert params["aggregation"] in ("choice", "last")


def test_baseline_is_alpha_zero_inside_the_layer_range() -> None:
    params = baseline_params(space())
    assert params["alpha"] == 0.0
    assert params["layer"] == 15


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            space(layers=IntRange(3, 31)),
            r"layers must lie in \[0, 29\] for this model, got high=31",
        ),
        (space(layers=IntRange(20, 10)), r"layers.low <= high must hold, got low=20, high=10"),
        (space(alpha=FloatRange(1.0, -1.0)), r"alpha.low <= high must hold, got low=1.0"),
        (space(alpha=FloatRange(0.0, 1.0, log=True)), r"alpha.log needs alpha.low > 0"),
        (space(aggregation=["median"]), r"aggregation must be among .*got \['median'\]"),
        (space(method=["magic"]), r"method must be among .*got \['magic'\]"),
        (space(positions=[]), r"positions must list at least one"),
        (space(alpha_scale="huge"), r"alpha_scale must be one of"),
        (space(mode=["rotate"]), r"mode must be among .*got \['rotate'\]"),
        (space(window=IntRange(0, 2)), r"window must satisfy 1 <= low <= high, got low=0"),
        (
            space(layers=IntRange(3, 27), window=IntRange(1, 4)),
            r"layers.high \+ window.high - 1 must be a layer of this model \(<= 29\), "
            r"got 27 \+ 4 - 1 = 30",
        ),
        (space(layer_sets=[[3, 30]]), r"layer_sets must hold .* in \[0, 29\].*got \[3, 30\]"),
        (space(layer_sets=[[]]), r"layer_sets must hold non-empty sets"),
        (space(derived={"layer_alpha": "alpha + 1"}), r"must be alpha times an expression"),
        (space(derived={"k": "alpha * depth"}), r"may only use the symbols"),
    ],
)
def test_invalid_specs_fail_with_the_rule_and_the_value(
    spec: SearchSpaceConfig, message: str
) -> None:
    with pytest.raises(UserError, match=message):
        validate(spec, num_layers=30)


def _sampled(spec: SearchSpaceConfig, n: int = 60) -> list[dict[str, dict[str, Any]]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append({"resolved": suggest(trial, spec), "raw": dict(trial.params)})
        study.tell(trial, 0.0)
    return out


def test_ablate_trials_sample_no_alpha_and_add_trials_do() -> None:
    spec = space(mode=["add", "add_norm_preserving", "ablate"], window=IntRange(1, 3))
    runs = _sampled(spec)
    modes = {r["raw"]["mode"] for r in runs}
    assert modes == {"add", "add_norm_preserving", "ablate"}
    for r in runs:
        raw, resolved = r["raw"], r["resolved"]
        assert ("alpha" in raw) == (raw["mode"] != "ablate")
        if raw["mode"] == "ablate":
            assert resolved["alpha"] == 1.0
            assert "layer_alpha" not in resolved
        else:
            layer_alpha = raw["alpha"] / raw["window"]
            assert resolved["layer_alpha"] == pytest.approx(layer_alpha)


def test_a_window_steers_consecutive_layers_sharing_alpha() -> None:
    spec = space(window=IntRange(1, 3))
    params = resolve({"layer": 10, "window": 3, "alpha": 0.6, "mode": "add"}, spec)
    assert steered_layers(params) == [10, 11, 12]
    assert layer_scales(params, spec) == {10: pytest.approx(1 / 3)} | {
        11: pytest.approx(1 / 3),
        12: pytest.approx(1 / 3),
    }
    ablate = resolve({"layer": 10, "window": 2, "mode": "ablate"}, spec)
    assert layer_scales(ablate, spec) == {10: 1.0, 11: 1.0}


def test_explicit_layer_sets_replace_layer_and_window() -> None:
    spec = space(layer_sets=[[4, 8, 12], [20]])
    assert "layer" not in distributions(spec)
    runs = _sampled(spec, 10)
    assert {r["raw"]["layer_set"] for r in runs} == {"4,8,12", "20"}
    params = resolve({"layer_set": "4,8,12", "alpha": 0.3, "mode": "add"}, spec)
    assert steered_layers(params) == [4, 8, 12]
    assert params["window"] == 3 and params["layer"] == 4
    validate(spec, num_layers=30)


def test_old_params_without_mode_or_window_resolve_to_one_added_layer() -> None:
    params = resolve({"layer": 5, "alpha": 0.2, "aggregation": "last"}, space())
    assert params["mode"] == "add" and params["window"] == 1
    assert steered_layers(params) == [5]


def test_the_baseline_of_an_ablate_only_space_is_alpha_zero_ablation() -> None:
    params = baseline_params(space(mode=["ablate"]))
    assert params["mode"] == "ablate" and params["alpha"] == 0.0
    study = optuna.create_study()
    study.enqueue_trial(params)
    resolved = suggest(study.ask(), space(mode=["ablate"]), baseline=True)
    assert resolved["alpha"] == 0.0


def test_one_value_dimensions_do_not_change_what_the_sampler_draws() -> None:
    # The space as sampled before `window` and `mode` existed: studies made then (and the
    # README's demo numbers) replay unchanged when the new dimensions hold one value.
    spec = space(mode=["add"], window=IntRange(1, 1))

    def before(trial: optuna.Trial) -> list[object]:
        return [
            trial.suggest_int("layer", 3, 27),
            trial.suggest_float("alpha", -1.0, 1.0),
            trial.suggest_categorical("aggregation", ["choice", "last"]),
        ]

    def tpe() -> optuna.samplers.BaseSampler:  # conf/sampler/tpe.yaml's settings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=3, multivariate=True, group=True, n_startup_trials=5, constant_liar=True
            )

    for make in (lambda: optuna.samplers.RandomSampler(seed=3), tpe):
        old, new = (optuna.create_study(sampler=make()) for _ in range(2))
        for _ in range(15):
            a, b = old.ask(), new.ask()
            expected = before(a)
            params = suggest(b, spec)
            assert [params[k] for k in ("layer", "alpha", "aggregation")] == expected
            old.tell(a, float(expected[1]))  # type: ignore[arg-type]
            new.tell(b, float(params["alpha"]))


@pytest.mark.parametrize("name", ["default", "full", "gsm8k", "sentiment"])
def test_every_space_takes_the_head_and_gate_keys_as_plain_overrides(name: str) -> None:
    from tests.conftest import compose_run

    before = distributions(compose_run(f"search_space={name}").search_space)
    assert not {"site", "head_ratio", "head_point", "trigger", "probe_gate"} & set(before)
    cfg = compose_run(
        f"search_space={name}",
        "search_space.site=[residual,heads]",
        "search_space.probe_gate=[off,present]",
        "search_space.trigger=['','\\n\\n']",
    )
    after = distributions(cfg.search_space)
    assert after["site"] == CategoricalDistribution(["residual", "heads"])
    assert {"head_ratio", "probe_gate", "gate_threshold", "trigger"} <= set(after)


def test_the_baseline_turns_searched_gates_off() -> None:
    params = baseline_params(space(probe_gate=["present", "off"], trigger=["\n\n", ""]))
    assert params["probe_gate"] == "off" and params["trigger"] == ""
    assert "probe_gate" not in baseline_params(space())
    heads = baseline_params(space(site=["heads"], probe_gate=["off", "absent"]))
    assert heads["site"] == "heads" and heads["probe_gate"] == "off"
