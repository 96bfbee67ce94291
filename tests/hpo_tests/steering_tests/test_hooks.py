"""Steering hooks: KV-cache equality, alpha = 0 identity, positions, cleanup on exceptions."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from hpo import UserError
from hpo.model.batching import pad_left
from hpo.model.blocks import find_blocks
from hpo.model.decoding import generate_ids
from hpo.model.loading import LoadedModel
from hpo.steering.application import Application
from hpo.steering.hooks import steer
from tests.conftest import tokens, unit

PROMPTS = ("The weather today is", "My favourite food is a very long")


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _steered_generation(loaded: LoadedModel, positions: str, use_cache: bool) -> list[list[int]]:
    layer = loaded.shape.num_layers // 2
    vector = unit(loaded.shape.hidden_size) * 4.0
    with steer(
        loaded.model, loaded.blocks, {layer: vector}, Application(alpha=1.0, positions=positions)
    ) as handle:
        return generate_ids(
            loaded.model,
            loaded.tokenizer,
            tokens(loaded, *PROMPTS),
            12,
            handle,
            use_cache=use_cache,
        )


@pytest.mark.parametrize("positions", ["all", "prompt_end_onward", "generated"])
def test_steered_generation_matches_with_and_without_kv_cache_on_tiny_model(
    tiny: LoadedModel, positions: str
) -> None:
    plain = generate_ids(tiny.model, tiny.tokenizer, tokens(tiny, *PROMPTS), 12)
    with_cache = _steered_generation(tiny, positions, use_cache=True)
    without_cache = _steered_generation(tiny, positions, use_cache=False)
    assert with_cache == without_cache
    assert with_cache != plain, "the vector must change the output, or the test proves nothing"


@pytest.mark.parametrize("positions", ["all", "prompt_end_onward"])
def test_steered_generation_matches_with_and_without_kv_cache_on_smollm2(
    smollm2: LoadedModel, positions: str
) -> None:
    with_cache = _steered_generation(smollm2, positions, use_cache=True)
    without_cache = _steered_generation(smollm2, positions, use_cache=False)
    assert with_cache == without_cache


def test_alpha_zero_reproduces_unsteered_logits_exactly(smollm2: LoadedModel) -> None:
    inputs = pad_left(tokens(smollm2, *PROMPTS), smollm2.tokenizer.pad_token_id)
    with torch.inference_mode():
        plain = smollm2.model(**inputs).logits
        vectors = {3: unit(576), 15: unit(576, 1)}
        with steer(smollm2.model, smollm2.blocks, vectors, Application(alpha=0.0)):
            steered = smollm2.model(**inputs).logits
    assert torch.equal(plain, steered)


def test_prompt_end_onward_leaves_earlier_positions_unchanged(tiny: LoadedModel) -> None:
    inputs = pad_left(tokens(tiny, PROMPTS[1]), tiny.tokenizer.pad_token_id)
    with torch.inference_mode():
        plain = tiny.model(**inputs).logits
        with steer(
            tiny.model,
            tiny.blocks,
            {1: unit(64) * 5},
            Application(alpha=1.0, positions="prompt_end_onward"),
        ):
            steered = tiny.model(**inputs).logits
    assert torch.equal(plain[:, :-1], steered[:, :-1])
    assert not torch.allclose(plain[:, -1], steered[:, -1])


def test_no_hook_remains_after_an_exception_inside_the_context(tiny: LoadedModel) -> None:
    before = _hook_count(tiny.model)
    with (
        pytest.raises(RuntimeError, match="boom"),
        steer(
            tiny.model,
            tiny.blocks,
            {0: unit(64), 2: unit(64)},
            Application(alpha=1.0, positions="all"),
        ),
    ):
        assert _hook_count(tiny.model) == before + 3
        raise RuntimeError("boom")
    assert _hook_count(tiny.model) == before


def test_disabled_handle_runs_the_model_unsteered(tiny: LoadedModel) -> None:
    inputs = pad_left(tokens(tiny, PROMPTS[0]), tiny.tokenizer.pad_token_id)
    with torch.inference_mode():
        plain = tiny.model(**inputs).logits
        with steer(tiny.model, tiny.blocks, {1: unit(64) * 5}) as handle:
            handle.enabled = False
            off = tiny.model(**inputs).logits
            handle.enabled = True
            on = tiny.model(**inputs).logits
    assert torch.equal(plain, off)
    assert not torch.allclose(plain, on)


def test_steering_rejects_a_layer_outside_the_model(tiny: LoadedModel) -> None:
    with (
        pytest.raises(UserError, match=r"layer must lie in \[0, 3\], got 7"),
        steer(tiny.model, tiny.blocks, {7: unit(64)}),
    ):
        pass


def test_gpt2_blocks_are_found_and_kv_cache_equality_holds() -> None:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=120)).eval()
    blocks = find_blocks(model)
    assert blocks is model.transformer.h
    prompt = [[5, 17, 33, 2, 9]]

    def run(use_cache: bool) -> list[int]:
        with steer(
            model, blocks, {1: unit(32) * 3}, Application(alpha=1.0, positions="prompt_end_onward")
        ) as handle:
            handle.prompt_length = 5
            with torch.inference_mode():
                out = model.generate(
                    torch.tensor(prompt),
                    attention_mask=torch.ones(1, 5, dtype=torch.long),
                    max_new_tokens=8,
                    do_sample=False,
                    use_cache=use_cache,
                    pad_token_id=0,
                )
        return list(out[0].tolist())

    assert run(True) == run(False)


def test_find_blocks_lists_the_module_lists_it_saw() -> None:
    class Odd(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = GPT2Config(n_layer=3)
            self.stuff = torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(2)])

    with pytest.raises(UserError, match=r"cannot find the 3 decoder blocks of Odd.*stuff \(2\)"):
        find_blocks(Odd())
