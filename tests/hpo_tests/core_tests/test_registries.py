"""The vocabulary registries: a mode and a method added at run time (one entry each, in the
block of docs/search-space.md only) pass config validation, are sampled, build a vector and
steer the tiny Llama."""

from __future__ import annotations

import re
from collections.abc import Iterator

import optuna
import pytest
import torch

from hpo import UserError
from hpo.core.directions import METHODS
from hpo.core.modes import MODES
from hpo.core.positions import POSITIONS, positions_named
from hpo.model.loading import LoadedModel
from hpo.steering.activations import ActivationCache
from hpo.steering.application import Application
from hpo.steering.hooks import steer
from hpo.steering.methods import VectorBuilder
from search_spaces import layer_scales, suggest, validate
from tests.conftest import compose_run, doc_text, tokens


@pytest.fixture
def toys() -> Iterator[None]:
    """The how-to-extend block of docs/search-space.md, run as it is: a toy mode and method."""
    block = re.search(r"```python\n(from hpo.core.directions .*?)```", doc_text(), re.S)
    assert block, "docs/search-space.md lost its how-to-extend example"
    try:
        exec(block.group(1), {})
        yield
    finally:
        MODES.pop("subtract", None)
        METHODS.pop("positive_mean", None)


def _cache(layers: int, hidden: int) -> ActivationCache:
    g = torch.Generator().manual_seed(0)
    tensors = {
        f"{side}.{agg}": torch.randn(6, layers, hidden, generator=g)
        for side in ("positive", "negative")
        for agg in ("last", "mean", "choice")
    }
    return ActivationCache(tensors, "synthetic")


@pytest.mark.usefixtures("toys")
def test_a_mode_and_a_method_added_at_run_time_compose_from_config_to_hook(
    tiny: LoadedModel,
) -> None:
    cfg = compose_run(
        "search_space.mode=[subtract]",
        "search_space.method=[positive_mean]",
        "search_space.positions=[prompt_end_onward]",
        "search_space.layers.low=1",
        "search_space.layers.high=2",
    )
    space = cfg.search_space
    validate(space, len(tiny.blocks))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    params = suggest(study.ask(), space)
    assert params["mode"] == "subtract" and params["method"] == "positive_mean"
    assert "alpha" in params  # a mode with alpha: the sampler draws it

    cache = _cache(len(tiny.blocks), tiny.model.config.hidden_size)
    layers = list(range(params["layer"], params["layer"] + params["window"]))
    vectors = VectorBuilder(cache).vectors(
        "positive_mean", params["aggregation"], layers, "absolute"
    )
    for layer in layers:
        assert torch.equal(vectors[layer], cache.pair(params["aggregation"], layer)[0].mean(0))
    scales = layer_scales(params, space)
    app = Application(params["alpha"], params["positions"], params["mode"], scales)
    assert app.record()["mode"] == "subtract"

    ids = torch.tensor(tokens(tiny, "Hello there, how are you?"))
    against = Application(-params["alpha"], params["positions"], "add", scales)
    with torch.inference_mode():
        plain = tiny.model(ids).logits
        with steer(tiny.model, tiny.blocks, vectors, app):
            toy = tiny.model(ids).logits
        with steer(tiny.model, tiny.blocks, vectors, against):
            added = tiny.model(ids).logits
    assert torch.equal(toy, added)  # h - a v is h + (-a) v, bit for bit
    assert not torch.equal(toy, plain)


def test_names_outside_the_registries_are_refused_listing_them() -> None:
    with pytest.raises(UserError, match=r"mode must be one of \['add', .*got 'subtract'"):
        Application(mode="subtract")
    with pytest.raises(UserError, match=r"search_space.method must be among \['caa'"):
        validate(compose_run("search_space.method=[positive_mean]").search_space, 30)


def test_positions_answer_where_steering_starts() -> None:
    assert [positions_named(p).first(5) for p in POSITIONS] == [0, 4, 5]
    end = positions_named("prompt_end_onward")
    assert end.first_steered(5, 0, 5) == 4  # the prompt pass
    assert end.first_steered(5, 5, 1) == 0  # a decoding step
    assert end.first_steered(None, 0, 7) == 6  # an unannounced prompt: the whole input
    # Both leave the prompt (but its last token) unsteered in every trial: its KV is reused.
    assert [p for p, rule in POSITIONS.items() if rule.reuses_prompt_prefix] == [
        "prompt_end_onward",
        "generated",
    ]
