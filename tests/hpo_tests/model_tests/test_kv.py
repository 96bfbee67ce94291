"""Where a forward chunk sits in the sequence, on every transformers version: the KV cache is
found by type under any keyword (transformers 5.24 renamed `past_key_values` to `cache`), else
read off the attention mask; the steering hooks see the same positions either way."""

from __future__ import annotations

import pytest
import torch

from hpo.model.kv import cache_keyword, output_cache, past_length, with_cache
from hpo.model.loading import LoadedModel
from hpo.steering.application import Application
from hpo.steering.hooks import steer
from tests.conftest import tokens, unit


def _prefilled(tiny: LoadedModel, ids: torch.Tensor) -> object:
    with torch.inference_mode():
        out = tiny.model(input_ids=ids, use_cache=True)
    cache = output_cache(out)
    assert cache is not None and cache.get_seq_length() == ids.shape[1]
    return cache


@pytest.mark.parametrize("keyword", ["past_key_values", "cache", "some_future_name"])
def test_past_length_finds_the_cache_under_any_keyword(tiny: LoadedModel, keyword: str) -> None:
    ids = torch.tensor(tokens(tiny, "The cat sat on the mat"))
    cache = _prefilled(tiny, ids)
    kwargs = {"input_ids": ids[:, -1:], keyword: cache}
    assert past_length((), kwargs) == ids.shape[1]


def test_past_length_falls_back_to_the_attention_mask() -> None:
    ids = torch.ones((2, 1), dtype=torch.long)
    mask = torch.ones((2, 9), dtype=torch.long)
    assert past_length((), {"input_ids": ids, "attention_mask": mask}) == 8
    assert past_length((ids,), {"attention_mask": mask}) == 8
    assert past_length((), {"input_ids": torch.ones((2, 9), dtype=torch.long)}) == 0
    assert past_length((), {}) == 0


def test_the_cache_goes_in_under_the_keyword_the_forward_declares(tiny: LoadedModel) -> None:
    keyword = cache_keyword(tiny.model)
    assert keyword in ("cache", "past_key_values")
    assert list(with_cache(tiny.model, "x")) == [keyword]


@pytest.mark.parametrize("keyword", sorted({"past_key_values", "cache_keyword"}))
@pytest.mark.parametrize("positions", ["all", "prompt_end_onward", "generated"])
def test_steered_decoding_step_by_step_matches_one_uncached_pass(
    tiny: LoadedModel, keyword: str, positions: str
) -> None:
    """Prompt, then three tokens one at a time with the cache passed under the old name and
    under the current version's: each step's logits equal the uncached steered pass."""
    name = cache_keyword(tiny.model) if keyword == "cache_keyword" else keyword
    model, blocks = tiny.model, tiny.blocks
    full = torch.tensor(tokens(tiny, "The cat sat on the mat and then"))
    prompt_len = full.shape[1] - 3
    vectors = {1: unit(tiny.shape.hidden_size, 3)}
    with (
        torch.inference_mode(),
        steer(model, blocks, vectors, Application(alpha=4.0, positions=positions)) as handle,
    ):
        handle.prompt_length = prompt_len
        whole = model(input_ids=full, use_cache=False).logits
        out = model(input_ids=full[:, :prompt_len], use_cache=True)
        cache = output_cache(out)
        steps = [out.logits[:, -1]]
        for i in range(prompt_len, full.shape[1] - 1):
            out = model(input_ids=full[:, i : i + 1], use_cache=True, **{name: cache})
            cache = output_cache(out)
            steps.append(out.logits[:, -1])
    for k, logits in enumerate(steps):
        torch.testing.assert_close(logits, whole[:, prompt_len - 1 + k], rtol=1e-4, atol=1e-4)
