"""Derived params: sympy expressions from the YAML, parsed without eval, checked, evaluated."""

from __future__ import annotations

import pytest

from hpo import UserError
from search_spaces import parse_derived
from search_spaces._derived import layer_scale


def test_an_expression_of_declared_symbols_evaluates_per_trial() -> None:
    d = parse_derived("layer_alpha", "alpha / window")
    assert d.symbols == {"alpha", "window"}
    assert d.evaluate({"alpha": 0.9, "window": 3, "layer": 7}) == pytest.approx(0.3)


def test_functions_and_powers_are_allowed() -> None:
    d = parse_derived("x", "alpha / sqrt(window) + 2 ** -1 * max(layer, 4)")
    assert d.evaluate({"alpha": 1.0, "window": 4, "layer": 2}) == pytest.approx(0.5 + 2.0)


def test_a_symbol_absent_from_the_trial_leaves_the_param_unset() -> None:
    # alpha is not sampled under mode=ablate: its derived params are skipped, not guessed.
    assert parse_derived("layer_alpha", "alpha / window").evaluate({"window": 2}) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("alpha / depth", r"may only use the symbols \['alpha', 'layer', 'window'\], got "),
        ("alpha /", r"is not a valid expression"),
        ("__import__('os').system('true')", r"may use numbers, .*got \"__import__"),
        ("alpha.real", r"got 'alpha.real'"),
        ("open(alpha)", r"got 'open\(alpha\)'"),
        ("'text'", r"got \"'text'\""),
        ("alpha if window else 0", r"got 'alpha if window else 0'"),
    ],
)
def test_bad_expressions_are_user_errors_naming_the_rule(text: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_derived("layer_alpha", text)


def test_a_derived_name_may_not_shadow_a_sampled_param() -> None:
    with pytest.raises(UserError, match=r"needs a new identifier .*got 'alpha'"):
        parse_derived("alpha", "2 * alpha")


def test_layer_alpha_must_be_alpha_times_something_free_of_alpha() -> None:
    assert str(layer_scale(parse_derived("layer_alpha", "alpha / window"))) == "1/window"
    assert layer_scale(parse_derived("layer_alpha", "alpha")) == 1
    for text in ("alpha / window + 0.1", "alpha ** 2", "1 / window"):
        with pytest.raises(UserError, match="must be alpha times an expression"):
            layer_scale(parse_derived("layer_alpha", text))
