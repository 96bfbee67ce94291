"""Search space -> Optuna distributions, and the rules a spec must follow."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from hpo import SearchSpaceConfig, UserError
from hpo.config import FloatRange, IntRange
from search_spaces import baseline_params, distributions, suggest, validate


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
    ],
)
def test_invalid_specs_fail_with_the_rule_and_the_value(
    spec: SearchSpaceConfig, message: str
) -> None:
    with pytest.raises(UserError, match=message):
        validate(spec, num_layers=30)
