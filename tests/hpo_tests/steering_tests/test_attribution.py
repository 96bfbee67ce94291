"""Attribution patching (`hpo.steering.attribution`): the gradient x vector estimate equals the
real first-order change, on a tiny random Llama, and predicts a real steered change on the
shipped model."""

from __future__ import annotations

import math

import pytest
import torch

from hpo.model.loading import LoadedModel
from hpo.run.tasks import load_task
from hpo.run.worker import Worker
from hpo.steering.activations import load_or_build
from hpo.steering.application import Application
from hpo.steering.attribution import attribute_layers, log_odds
from hpo.steering.hooks import steer
from objectives import ContrastivePair, make_objective
from tests.conftest import compose_run, unit

PAIRS = [
    ContrastivePair("Question: is the sky green?\nAnswer: (", "A)", "B)"),
    ContrastivePair("Is water wet? Pick one.\nAnswer: (", "B)", "A)"),
    ContrastivePair("The film was", " wonderful and warm.", " dull and cold."),
]


@pytest.mark.parametrize(
    ("quantity", "positions"),
    [("loglik", "all"), ("loglik", "generated"), ("letter", "prompt_end_onward")],
)
def test_attribution_equals_a_finite_difference_of_the_steered_quantity(
    tiny: LoadedModel, quantity: str, positions: str
) -> None:
    hidden = tiny.shape.hidden_size
    # Sized like the random model's hidden states (norm ~0.2), so h * v is a small step.
    vectors = {layer: 0.02 * unit(hidden, layer) for layer in range(tiny.shape.num_layers)}
    effects = attribute_layers(tiny, PAIRS, vectors, positions, quantity, batch_size=2)
    h = 1e-2

    def steered(alpha: float, layer: int) -> float:
        total = 0.0
        for pair in PAIRS:  # one pair at a time: the hooks' prompt length is the pair's
            with steer(
                tiny.model,
                tiny.blocks,
                {layer: vectors[layer]},
                Application(alpha=alpha, positions=positions),
            ) as s:
                s.prompt_length = len(tiny.tokenizer.encode(pair.prompt))
                total += log_odds(tiny, [pair], quantity)[0]
        return total / len(PAIRS)

    for e in effects:
        central = (steered(h, e.layer) - steered(-h, e.layer)) / (2 * h)
        assert e.effect == pytest.approx(central, rel=0.02, abs=1e-4)
    assert any(abs(e.effect) > 1e-2 for e in effects)  # the check above is not 0 == 0


def test_letter_attribution_is_zero_when_only_generated_tokens_are_steered(
    tiny: LoadedModel,
) -> None:
    """The answer letter is read before any generated token: nothing steered, nothing moves."""
    vectors = {0: unit(tiny.shape.hidden_size), 3: unit(tiny.shape.hidden_size, 1)}
    effects = attribute_layers(tiny, PAIRS[:2], vectors, "generated", "letter")
    assert [e.effect for e in effects] == [0.0, 0.0]


def test_attribution_leaves_no_hook_and_no_gradient_behind(tiny: LoadedModel) -> None:
    vectors = {layer: unit(tiny.shape.hidden_size, layer) for layer in range(4)}
    attribute_layers(tiny, PAIRS, vectors)
    assert all(not block._forward_hooks for block in tiny.blocks)
    assert all(p.grad is None for p in tiny.model.parameters())


@pytest.mark.slow
def test_top_layer_on_the_shipped_model_predicts_the_sign_of_a_real_steered_change(
    smollm2: LoadedModel,
) -> None:
    """Sentiment demo: every layer's effect is finite, and steering the top layer by a small
    alpha of the effect's sign moves both the attributed quantity and the scored behaviour
    (VADER of the greedy continuation) the predicted way."""
    cfg = compose_run(
        "experiment=demo",
        "task.splits.train=16",
        "task.splits.validation=4",
        "task.objective.max_new_tokens=12",
        "task.objective.kl.enabled=false",
    )
    task = load_task(cfg.task)
    objective = make_objective(cfg.task, smollm2.tokenizer)
    pairs = objective.train_pairs(task.train)
    worker = Worker(cfg, smollm2, objective, load_or_build(smollm2, pairs), None)
    vectors = {
        layer: worker.planner.builder.vector("caa", "mean", layer, "relative")
        for layer in range(smollm2.shape.num_layers)
    }
    effects = attribute_layers(smollm2, pairs, vectors, "all", "loglik")
    assert len(effects) == 30
    assert all(math.isfinite(e.effect) and math.isfinite(e.stderr) for e in effects)
    top = max(effects, key=lambda e: abs(e.effect))
    sign = 1.0 if top.effect > 0 else -1.0
    alpha = 0.3 * sign

    before = sum(log_odds(smollm2, pairs)) / len(pairs)
    with steer(
        smollm2.model, smollm2.blocks, {top.layer: vectors[top.layer]}, Application(alpha=alpha)
    ):
        after = sum(log_odds(smollm2, pairs)) / len(pairs)
    assert (after - before) * sign > 0

    validation = worker.prepare(task.validation)
    baseline = worker.baseline_result(validation, "validation").value
    params = {
        "layer": top.layer,
        "window": 1,
        "mode": "add",
        "alpha": alpha,
        "aggregation": "mean",
        "method": "caa",
        "positions": "all",
    }
    steered = worker.score(params, validation).value
    assert (steered - baseline) * sign > 0, (top.layer, baseline, steered)
    assert torch.is_grad_enabled()  # attribution restored autograd's global state
