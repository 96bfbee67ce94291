"""Objectives own their kind: what differs by kind is asked of the objective class, not of a
kind string (layer attribution, prompt fields, the bundle's section, the format-bias cause)."""

from __future__ import annotations

import pytest

from hpo.core.chance import format_bias_message
from objectives import (
    KINDS,
    BaseObjective,
    ChoiceProbability,
    Generation,
    MultipleChoice,
    kind_named,
    make_objective,
    prompt_fields,
)
from tests.conftest import compose_run


def test_every_kind_is_a_base_objective_named_by_its_own_kind() -> None:
    assert all(issubclass(cls, BaseObjective) and cls.kind == k for k, cls in KINDS.items())
    assert kind_named("multiple_choice") is MultipleChoice


def test_each_kind_says_what_layer_attribution_differentiates() -> None:
    choice = make_objective(compose_run("task=sycophancy").task, None)
    mc_cfg = compose_run("task=bbq", "task.objective.loglik=sum").task
    generation = make_objective(compose_run("task=sentiment").task, None)
    assert isinstance(choice, ChoiceProbability) and choice.attribution == ("letter", "sum")
    assert make_objective(mc_cfg, None).attribution == ("loglik", "sum")
    mean = make_objective(compose_run("task=bbq", "task.objective.loglik=mean").task, None)
    assert mean.attribution == ("loglik", "mean")
    assert isinstance(generation, Generation) and generation.attribution == ("loglik", "sum")


def test_only_multiple_choice_fills_options_into_the_template_or_lists_columns() -> None:
    assert prompt_fields("multiple_choice") == {"options"}
    assert prompt_fields("choice_probability") == prompt_fields("generation") == frozenset()
    assert prompt_fields("no_such_kind") == frozenset()  # check_task refuses it, with the list
    assert [k for k, cls in KINDS.items() if cls.lists_columns] == ["multiple_choice"]


def test_only_generation_writes_its_decoding_into_the_bundle() -> None:
    task = compose_run("task=sentiment", "task.objective.max_new_tokens=7").task
    record = make_objective(task, None).bundle_record()
    assert record == {
        "max_new_tokens": 7,
        "stop": list(task.objective.stop),
        "chat_template": task.chat_template,
    }
    assert make_objective(compose_run("task=sycophancy").task, None).bundle_record() is None
    assert make_objective(compose_run("task=bbq").task, None).bundle_record() is None


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (("task=sycophancy",), "a letter prior"),
        (("task=bbq", "task.objective.loglik=mean"), "task.objective.loglik=mean favours long"),
        (("task=bbq", "task.objective.loglik=sum"), "try task.objective.loglik=mean"),
    ],
)
def test_a_below_chance_message_names_the_kinds_own_likely_cause(
    overrides: tuple[str, ...], named: str
) -> None:
    cause = make_objective(compose_run(*overrides).task, None).bias_cause()
    assert named in cause
    message = format_bias_message(0.2, 0.5, (-0.4, -0.2), cause)
    assert message.startswith("the unsteered baseline 0.2000 is below chance 0.5000")
    assert f"; {cause}. Steering that only breaks the model" in message
