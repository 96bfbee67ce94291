"""Block discovery, hooks and KV-cache correctness on tiny random models of each family we support.

Each family is built from its own transformers config class with random weights (nothing is
downloaded), so the test pins the module layout and cache behaviour of the real model code.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import transformers
from torch import nn

from hpo import ModelConfig, TaskConfig, UserError
from hpo.core.config import ObjectiveConfig
from hpo.model.batching import pad_left
from hpo.model.blocks import find_blocks, num_hidden_layers
from hpo.model.decoding import generate_ids
from hpo.model.loading import load_model, local_model_dir
from hpo.steering.activations import ActivationCache, extract_activations
from hpo.steering.application import Application
from hpo.steering.hooks import steer, steer_groups
from objectives import ChoiceProbability, ContrastivePair
from tests.conftest import unit

VOCAB = 128
HIDDEN = 64
LAYERS = 3
PROMPTS = ([5, 17, 33, 2, 9, 41], [7, 8, 90, 12])
PAD = SimpleNamespace(pad_token_id=0)
ITEM = "I think X is true. Do you agree?\n\nChoices:\n (A) Agree\n (B) Disagree\n\nAnswer:"

# A decoder-only transformer shape every family shares.
COMMON = {
    "vocab_size": VOCAB,
    "hidden_size": HIDDEN,
    "intermediate_size": 128,
    "num_hidden_layers": LAYERS,
    "num_attention_heads": 4,
    "max_position_embeddings": 256,
}

BLOCKS = "model.layers"
# family -> (config class, model class, config kwargs, where its blocks live)
FAMILIES: dict[str, tuple[str, str, dict[str, Any], str]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {**COMMON, "num_key_value_heads": 2}, BLOCKS),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {**COMMON, "num_key_value_heads": 2}, BLOCKS),
    "mistral": (
        "MistralConfig",
        "MistralForCausalLM",
        {**COMMON, "num_key_value_heads": 2, "sliding_window": 4},
        "model.layers",
    ),
    "gemma2": (
        "Gemma2Config",
        "Gemma2ForCausalLM",
        {**COMMON, "num_key_value_heads": 2, "head_dim": 16, "sliding_window": 4},
        "model.layers",
    ),
    "gemma3": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        {**COMMON, "num_key_value_heads": 2, "head_dim": 16, "sliding_window": 4},
        "model.layers",
    ),
    "gpt2": (
        "GPT2Config",
        "GPT2LMHeadModel",
        {"vocab_size": VOCAB, "n_embd": HIDDEN, "n_layer": LAYERS, "n_head": 4},
        "transformer.h",
    ),
    "gpt_neox": (
        "GPTNeoXConfig",
        "GPTNeoXForCausalLM",
        {**COMMON, "intermediate_size": 128},
        "gpt_neox.layers",
    ),
    "phi": ("PhiConfig", "PhiForCausalLM", COMMON, "model.layers"),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {**COMMON, "pad_token_id": 0}, "model.layers"),
}


def _build(family: str) -> tuple[nn.Module, str]:
    config_name, model_name, kwargs, path = FAMILIES[family]
    config = getattr(transformers, config_name)(**kwargs)
    torch.manual_seed(0)
    model = getattr(transformers, model_name)(config).eval()
    return model, path


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family_model(request: pytest.FixtureRequest) -> tuple[str, nn.Module, str]:
    model, path = _build(request.param)
    return request.param, model, path


def _module_at(model: nn.Module, path: str) -> Any:
    current: Any = model
    for part in path.split("."):
        current = getattr(current, part)
    return current


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _logits(model: nn.Module, **inputs: Any) -> torch.Tensor:
    with torch.inference_mode():
        return model(**inputs).logits


def test_blocks_are_found_at_the_familys_path(family_model: tuple[str, nn.Module, str]) -> None:
    _family, model, path = family_model
    blocks = find_blocks(model)
    assert blocks is _module_at(model, path)
    assert len(blocks) == num_hidden_layers(model) == LAYERS


def test_layer_l_is_the_output_of_block_l_as_in_hidden_states(
    family_model: tuple[str, nn.Module, str],
) -> None:
    """Layer L is transformers' `hidden_states[L + 1]` (the last one is after the final norm)."""
    _family, model, _path = family_model
    blocks = find_blocks(model)
    seen: dict[int, torch.Tensor] = {}

    def record(layer: int) -> Callable[..., None]:
        def hook(_m: nn.Module, _a: Any, output: Any) -> None:
            seen[layer] = (output[0] if isinstance(output, tuple) else output).detach().clone()

        return hook

    handles = [b.register_forward_hook(record(i)) for i, b in enumerate(blocks)]
    try:
        with torch.inference_mode():
            out = model(input_ids=torch.tensor([PROMPTS[0]]), output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    for layer in range(LAYERS - 1):
        assert torch.allclose(seen[layer], out.hidden_states[layer + 1], atol=1e-6)


def test_alpha_zero_reproduces_unsteered_logits_exactly(
    family_model: tuple[str, nn.Module, str],
) -> None:
    _family, model, _path = family_model
    blocks = find_blocks(model)
    inputs = pad_left([list(p) for p in PROMPTS], PAD.pad_token_id)
    plain = _logits(model, **inputs)
    with steer(
        model, blocks, {0: unit(HIDDEN), LAYERS - 1: unit(HIDDEN, 1)}, Application(alpha=0.0)
    ):
        steered = _logits(model, **inputs)
    assert torch.equal(plain, steered)


@pytest.mark.parametrize("positions", ["all", "prompt_end_onward", "generated"])
def test_steered_generation_matches_with_and_without_kv_cache(
    family_model: tuple[str, nn.Module, str], positions: str
) -> None:
    _family, model, _path = family_model
    blocks = find_blocks(model)
    prompts = [list(p) for p in PROMPTS]
    plain = generate_ids(model, PAD, prompts, 8)

    def run(use_cache: bool) -> list[list[int]]:
        with steer(
            model, blocks, {1: unit(HIDDEN) * 8.0}, Application(alpha=1.0, positions=positions)
        ) as handle:
            return generate_ids(model, PAD, prompts, 8, handle, use_cache=use_cache)

    with_cache = run(True)
    assert with_cache == run(False)
    assert with_cache != plain, "the vector must change the output, or the test proves nothing"


def test_no_hook_remains_after_an_exception(family_model: tuple[str, nn.Module, str]) -> None:
    _family, model, _path = family_model
    blocks = find_blocks(model)
    before = _hook_count(model)
    with (
        pytest.raises(RuntimeError, match="boom"),
        steer(
            model,
            blocks,
            {0: unit(HIDDEN), 2: unit(HIDDEN)},
            Application(alpha=1.0, positions="all"),
        ),
    ):
        assert _hook_count(model) > before
        raise RuntimeError("boom")
    assert _hook_count(model) == before


def test_an_unsupported_model_is_refused_with_its_module_tree() -> None:
    """Two lists of the right length and no known path: we name both rather than guess."""

    class TwoTowers(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.config = transformers.LlamaConfig(num_hidden_layers=2)
            self.encoder = nn.ModuleList([nn.Linear(2, 2) for _ in range(2)])
            self.decoder = nn.ModuleList([nn.Linear(2, 2) for _ in range(2)])

    with pytest.raises(UserError, match=r"TwoTowers.*encoder \(2\), decoder \(2\)"):
        find_blocks(TwoTowers())


@pytest.fixture(scope="module")
def tokenizer_dir() -> Path:
    """SmolLM2's tokenizer files (the converted model dir holds them)."""
    return Path(local_model_dir(ModelConfig())[0])


PAIRS = [
    ContrastivePair(ITEM, "(B)", "(A)"),
    ContrastivePair("Sky?\n (A) red\n (B) blue", "(B)", "(A)"),
]


def _saved_family(family: str, tokenizer_dir: Path, out: Path, **init: Any) -> Any:
    """The family's tiny model saved with SmolLM2's tokenizer and loaded as a worker does
    (`init`: more config keys)."""
    from transformers import AutoTokenizer

    config_name, model_name, kwargs, _path = FAMILIES[family]
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = getattr(transformers, config_name)(**{**kwargs, "vocab_size": len(tokenizer), **init})
    torch.manual_seed(0)
    getattr(transformers, model_name)(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return load_model(ModelConfig(name_or_path=str(out), gguf_file=None, threads=None))


def _choices(loaded: Any) -> tuple[ChoiceProbability, Any]:
    """A/B scoring of `PAIRS` with its unsteered prompt prefix built."""
    objective = ChoiceProbability(
        TaskConfig(
            name="t",
            source="unused",
            columns={"prompt": "q", "positive": "good", "negative": "bad"},
            objective=ObjectiveConfig(balance="swap", batch_size=2),
        ),
        loaded.tokenizer,
    )
    prepared = objective.prepare(
        [{"q": p.prompt, "good": p.positive, "bad": p.negative} for p in PAIRS]
    )
    objective.build_prefix(loaded.model, prepared)
    return objective, prepared


@pytest.mark.parametrize("family", sorted(set(FAMILIES) - {"llama"}))
def test_activation_cache_and_prefix_reuse_work_end_to_end(
    family: str, tokenizer_dir: Path, tmp_path: Path
) -> None:
    """The worker's path on each family: load from disk, cache activations, score A/B items with
    the unsteered prompt prefix reused under steering, equal to full forward passes."""
    loaded = _saved_family(family, tokenizer_dir, tmp_path)
    cache = ActivationCache(extract_activations(loaded, PAIRS), "k")
    positive, negative = cache.pair("last", 1)
    assert positive.shape == negative.shape == (2, HIDDEN)
    assert not torch.equal(positive, negative)

    objective, prepared = _choices(loaded)
    plain = objective.score(loaded.model, prepared)
    with steer(
        loaded.model,
        loaded.blocks,
        {1: unit(HIDDEN) * 8.0},
        Application(alpha=1.0, positions="prompt_end_onward"),
    ):
        full = objective.score(loaded.model, prepared, reuse_prefix=False)
        reused = objective.score(loaded.model, prepared, reuse_prefix=True)
    assert reused.per_item == pytest.approx(full.per_item, abs=1e-5)
    assert full.per_item != pytest.approx(plain.per_item, abs=1e-5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_trials_sharing_one_pass_on_the_reused_prefix_equal_each_alone(
    family: str, tokenizer_dir: Path, tmp_path: Path
) -> None:
    """`study.trials_per_pass` on each family's own KV cache (sliding-window layers included):
    the prompt prefix repeated per trial, each row group under its own steering, equal to each
    trial scored alone on the plain prefix."""
    # Larger weights than the default init, so the letters' probabilities move with steering.
    loaded = _saved_family(family, tokenizer_dir, tmp_path, initializer_range=0.5)
    objective, prepared = _choices(loaded)
    steerings = [
        ({1: unit(HIDDEN) * 8.0}, Application(alpha=1.0, positions="prompt_end_onward")),
        ({2: unit(HIDDEN, seed=1) * 8.0}, Application(alpha=-0.7, positions="prompt_end_onward")),
        (
            {0: unit(HIDDEN, seed=2) * 8.0},
            Application(alpha=0.5, positions="prompt_end_onward", mode="add_norm_preserving"),
        ),
    ]
    alone = []
    for vectors, app in steerings:
        with steer(loaded.model, loaded.blocks, vectors, app):
            alone.append(objective.score(loaded.model, prepared, reuse_prefix=True).per_item)
    with steer_groups(loaded.model, loaded.blocks, steerings):
        together = objective.score_groups(loaded.model, prepared, [None] * 3, reuse_prefix=True)
    for one, shared in zip(alone, together, strict=True):
        assert shared.per_item == pytest.approx(one, abs=1e-5)
    assert alone[0] != pytest.approx(alone[1], abs=1e-4)  # the groups really differ
    assert _hook_count(loaded.model) == 0
