"""Derived expressions cannot ask for unbounded work: every case returns at once."""

from __future__ import annotations

import time

import pytest

from hpo import UserError
from hpo.core.config import FloatRange, IntRange, SearchSpaceConfig
from search_spaces import parse_derived, validate


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alpha * 10**10**10**10", r"exponents must be numbers of magnitude <= 64"),
        ("alpha * 2**65", r"exponents must be numbers of magnitude <= 64"),
        ("alpha * (10**60)**60", r"a constant power must fit a float"),
        ("alpha * 1e999", r"may only use finite numbers"),
        ("alpha" + " + 1" * 100, r"must be at most 200 characters"),
        ("alpha * " + "(" * 150 + "1" + ")" * 150, r"must be at most 200 characters"),
    ],
)
def test_expressions_asking_for_unbounded_work_are_refused_at_once(
    text: str, message: str
) -> None:
    started = time.monotonic()
    with pytest.raises(UserError, match=message):
        parse_derived("boost", text)
    assert time.monotonic() - started < 2


@pytest.mark.parametrize(
    ("text", "values"),
    [
        ("alpha * exp(exp(exp(layer)))", {"alpha": 1.0, "layer": 30, "window": 1}),
        ("alpha * 2 ** (layer * 1000)", {"alpha": 1.0, "layer": 30, "window": 1}),
        ("alpha * layer ** (layer ** layer)", {"alpha": 1.0, "layer": 30, "window": 1}),
        ("alpha / (window - 1)", {"alpha": 1.0, "layer": 3, "window": 1}),
        ("sqrt(alpha - 2)", {"alpha": 1.0, "layer": 3, "window": 1}),
    ],
)
def test_a_value_that_is_not_a_finite_real_number_is_refused_quickly(
    text: str, values: dict[str, float]
) -> None:
    derived = parse_derived("boost", text)
    started = time.monotonic()
    with pytest.raises(UserError, match="must be a finite real number"):
        derived.evaluate(values)
    assert time.monotonic() - started < 2


def test_ordinary_expressions_keep_their_exact_values() -> None:
    d = parse_derived("layer_alpha", "alpha / window")
    assert d.evaluate({"alpha": 0.9, "window": 3, "layer": 1}) == 0.9 / 3
    d = parse_derived("x", "alpha * 2 ** 64 / 2 ** 64 + log(exp(layer))")
    assert d.evaluate({"alpha": 0.5, "window": 1, "layer": 2}) == pytest.approx(2.5)


def test_validate_checks_every_derived_value_at_the_corners_of_the_space() -> None:
    space = SearchSpaceConfig(
        layers=IntRange(0, 3),
        alpha=FloatRange(0.5, 1.0),
        derived={"layer_alpha": "alpha / window", "boost": "alpha * exp(layer * 300)"},
    )
    with pytest.raises(UserError, match=r"boost .* must be a finite real number"):
        validate(space, num_layers=4)
    space.derived = {"layer_alpha": "alpha / window", "boost": "log(alpha)"}
    with pytest.raises(UserError, match=r"boost .* must be a finite real number.*'alpha': 0.0"):
        validate(space, num_layers=4)  # alpha = 0 is the baseline trial
