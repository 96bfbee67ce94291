"""The activation cache: one extraction, then reuse by every trial and every later run."""

from __future__ import annotations

from pathlib import Path
from unittest import mock

import pytest
import torch

from hpo.model.loading import LoadedModel
from hpo.steering import activations
from hpo.steering.activations import load_or_build
from hpo.steering.methods import build_vector, caa
from objectives import ContrastivePair

PAIRS = [
    ContrastivePair("Question: is the sky green?\nAnswer: (", "A)", "B)"),
    ContrastivePair("Question: is water wet?\nAnswer: (", "B)", "A)"),
    ContrastivePair("Question: do cats bark?\nAnswer: (", "A)", "B)"),
]


def test_cache_is_extracted_once_then_reused_across_loads(
    tiny: LoadedModel, hpo_cache_dir: Path
) -> None:
    pairs = [*PAIRS, ContrastivePair("unique prompt for this test (", "A)", "B)")]
    spy = mock.patch.object(
        activations, "extract_activations", wraps=activations.extract_activations
    )
    with spy as extract:
        first = load_or_build(tiny, pairs)
        second = load_or_build(tiny, pairs)
    assert extract.call_count == 1
    assert (hpo_cache_dir / "activations" / f"{first.key}.safetensors").is_file()
    for name, tensor in first.tensors.items():
        assert torch.equal(tensor, second.tensors[name])
    assert not list((hpo_cache_dir / "activations").glob("*.tmp"))


def test_cached_activations_have_one_row_per_pair_and_layer(tiny: LoadedModel) -> None:
    cache = load_or_build(tiny, PAIRS)
    for agg in ("last", "mean", "choice"):
        assert cache.tensors[f"positive.{agg}"].shape == (3, 4, 64)
    assert cache.num_pairs == 3
    # choice = the letter token, last = the ")" after it: different positions, different values
    assert not torch.equal(cache.tensors["positive.choice"], cache.tensors["positive.last"])


def test_choice_aggregation_matches_a_manual_forward_pass(tiny: LoadedModel) -> None:
    cache = load_or_build(tiny, PAIRS)
    tok = tiny.tokenizer
    prompt = tok.encode(PAIRS[1].prompt)
    ids = prompt + tok.encode(PAIRS[1].positive, add_special_tokens=False)
    captured: dict[str, torch.Tensor] = {}
    handle = tiny.blocks[2].register_forward_hook(
        lambda _m, _a, out: captured.setdefault("h", out[0] if isinstance(out, tuple) else out)
    )
    try:
        with torch.inference_mode():
            tiny.model(torch.tensor([ids]))
    finally:
        handle.remove()
    expected = captured["h"][0, len(prompt)]
    assert torch.allclose(cache.pair("choice", 2)[0][1], expected, atol=1e-5)


def test_cache_key_changes_with_the_data(tiny: LoadedModel) -> None:
    other = [*PAIRS[:2], ContrastivePair("Question: do dogs meow?\nAnswer: (", "A)", "B)")]
    assert activations.cache_key(tiny, PAIRS) != activations.cache_key(tiny, other)


def test_caa_is_the_mean_difference() -> None:
    pos = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    neg = torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    assert torch.equal(caa(pos, neg), torch.tensor([1.5, 2.0]))


def test_relative_vector_is_sized_to_the_layer_mean_norm(tiny: LoadedModel) -> None:
    cache = load_or_build(tiny, PAIRS)
    relative = build_vector(cache, "caa", "choice", 1, "relative")
    absolute = build_vector(cache, "caa", "choice", 1, "absolute")
    assert relative.norm().item() == pytest.approx(cache.mean_norm("choice", 1), rel=1e-5)
    cos = torch.nn.functional.cosine_similarity(relative, absolute, dim=0)
    assert cos.item() == pytest.approx(1.0, abs=1e-6)
