"""Scoring above the steered layer from cached block outputs equals full forward passes exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from hpo.model.batching import pad_left
from hpo.model.blocks import find_blocks
from hpo.model.loading import LoadedModel, ModelShape
from hpo.run.study import prepare_worker
from hpo.run.worker import Worker
from hpo.steering.application import Application
from hpo.steering.hooks import steer
from hpo.steering.residual import ResidualCache, SteeredAbove
from tests.conftest import compose_run, tiny_overrides
from tests.hpo_tests.model_tests.test_architectures import FAMILIES, _build


def _worker(*overrides: str) -> Worker:
    return prepare_worker(compose_run(*overrides, "search_space.positions=[all]"))


def _scores_both_ways(worker: Worker, layer: int, alpha: float) -> tuple[list[float], list[float]]:
    params = {
        "layer": layer,
        "alpha": alpha,
        "aggregation": "choice",
        "method": "caa",
        "positions": "all",
    }
    residual = worker.residual
    cached = worker.score(params, worker.validation).per_item
    worker.residual = None
    try:
        full = worker.score(params, worker.validation).per_item
    finally:
        worker.residual = residual
    return cached, full


def test_cached_block_outputs_give_the_full_forward_scores_on_the_tiny_model(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    worker = _worker(*tiny_overrides(tiny_model_dir, tmp_path), "task.splits.validation=3")
    residual = worker.residual
    assert residual is not None
    blocks_before = list(worker.loaded.blocks)
    for layer in range(4):
        for alpha in (0.0, 0.7, -1.3):
            cached, full = _scores_both_ways(worker, layer, alpha)
            assert cached == full, (layer, alpha)
    assert residual.exact is True
    assert residual.hits > residual.misses > 0  # later trials at a layer reuse its outputs
    assert list(worker.loaded.blocks) == blocks_before
    assert worker.loaded.model.model.layers is worker.loaded.blocks


def test_cached_block_outputs_give_the_full_forward_scores_on_smollm2(tmp_path: Path) -> None:
    worker = _worker(
        "experiment=sycophancy",
        "task.splits.train=2",
        "task.splits.validation=2",
        f"output_dir={tmp_path}",
    )
    for layer, alpha in ((4, 0.8), (20, -0.5)):
        cached, full = _scores_both_ways(worker, layer, alpha)
        assert cached == full, (layer, alpha)
    assert worker.residual is not None and worker.residual.exact is True


def test_an_exception_while_scoring_restores_the_model_and_leaves_no_hook(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    worker = _worker(*tiny_overrides(tiny_model_dir, tmp_path), "task.splits.validation=2")
    params = {"layer": 1, "alpha": 0.5, "aggregation": "choice", "method": "caa"}

    def report(step: int, value: float, items: object = None) -> None:
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        worker.score({**params, "positions": "all"}, worker.validation, report)
    model = worker.loaded.model
    assert model.model.layers is worker.loaded.blocks
    assert sum(len(m._forward_hooks) for m in model.modules()) == 0


def test_a_model_whose_forward_changes_inputs_embeds_falls_back_to_full_passes() -> None:
    # GPT-2 adds position embeddings to `inputs_embeds`: the check must catch the mismatch.
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=120)).eval()
    blocks = find_blocks(model)
    loaded = LoadedModel(model, None, blocks, ModelShape(3, 32, "gpt2"), "x", torch.device("cpu"))
    residual = ResidualCache(loaded)
    inputs = pad_left([[5, 17, 33, 2, 9], [7, 8]], 0)
    vector = torch.randn(32)
    stand_in = SteeredAbove(residual, 1, vector, 2.0)
    got = stand_in(inputs["input_ids"], inputs["attention_mask"], inputs["position_ids"]).logits
    with (
        steer(model, blocks, {1: vector}, Application(alpha=2.0, positions="all")),
        torch.inference_mode(),
    ):
        want = model(**inputs, use_cache=False).logits
    assert residual.exact is False
    assert not residual.applies(Application(positions="all"), {1: vector})
    assert torch.equal(got, want)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_every_family_scores_the_same_above_the_layer_or_falls_back(family: str) -> None:
    model, _path = _build(family)
    blocks = find_blocks(model)
    config: Any = model.config
    hidden = config.get_text_config().hidden_size
    loaded = LoadedModel(
        model, None, blocks, ModelShape(4, hidden, family), "x", torch.device("cpu")
    )
    residual = ResidualCache(loaded)
    inputs = pad_left([[5, 17, 33, 2, 9, 11], [7, 8, 3]], 0)
    vector = torch.randn(hidden, generator=torch.Generator().manual_seed(1))
    args = (inputs["input_ids"], inputs["attention_mask"], inputs["position_ids"])
    got = SteeredAbove(residual, 1, vector, 2.0)(*args).logits
    with (
        steer(model, blocks, {1: vector}, Application(alpha=2.0, positions="all")),
        torch.inference_mode(),
    ):
        want = model(**inputs, use_cache=False).logits
    assert torch.equal(got, want)
    # GPT-2 adds position embeddings to `inputs_embeds`, so it alone takes the full-forward path.
    assert residual.exact is (family != "gpt2")
    assert model.get_submodule(_path) is blocks
