"""Reusing the unsteered prompt prefix in generation and in the KL side metric is exact: steered
continuations are the same token for token with and without the reused prefix, for every
position mode that allows it, with and without stop strings and left padding, and the shared
prefix is left as it was."""

from __future__ import annotations

import pytest
import torch

from hpo.core.vocabulary import PREFIX_POSITIONS
from hpo.model.batching import pad_left
from hpo.model.decoding import chat_prompt, generate_ids, prompt_prefix
from hpo.model.loading import LoadedModel
from hpo.steering.application import Application
from hpo.steering.hooks import steer
from objectives.fluency import perplexities, perplexities_from_prefix
from objectives.kl import build_reference, kl_per_prompt
from tests.conftest import tokens, unit

# Different lengths: the batch is left-padded.
TEXTS = ("The cat sat on the mat and looked out of the window", "Hello", "One two three four")


def _prefix(loaded: LoadedModel, ids: list[list[int]]) -> object:
    pad = loaded.tokenizer.pad_token_id
    return prompt_prefix(loaded.model, pad_left(ids, pad, loaded.model.device))


def _continuations(
    loaded: LoadedModel,
    ids: list[list[int]],
    positions: str,
    stop: list[str] | None,
    mode: str = "add",
) -> dict[str, list[list[int]]]:
    """Steered continuations without the cache, with it, and from the reused prefix (twice)."""
    vector = unit(loaded.shape.hidden_size, 3) * 6.0
    prefix = _prefix(loaded, ids)
    out = {}
    with steer(
        loaded.model, loaded.blocks, {1: vector}, Application(1.0, positions, mode)
    ) as handle:
        out["no cache"] = generate_ids(
            loaded.model, loaded.tokenizer, ids, 12, handle, False, stop
        )
        out["cache"] = generate_ids(loaded.model, loaded.tokenizer, ids, 12, stop_strings=stop)
        for name in ("prefix", "prefix again"):
            out[name] = generate_ids(
                loaded.model, loaded.tokenizer, ids, 12, stop_strings=stop, prefix=prefix
            )
    out["unsteered"] = generate_ids(loaded.model, loaded.tokenizer, ids, 12, stop_strings=stop)
    return out


@pytest.mark.parametrize("positions", PREFIX_POSITIONS)
@pytest.mark.parametrize("stopped", [False, True])
def test_steered_generation_from_the_reused_prefix_matches_token_for_token(
    tiny: LoadedModel, positions: str, stopped: bool
) -> None:
    ids = tokens(tiny, *TEXTS)
    stop = None
    if stopped:  # the text of the first row's 4th steered token: that row stops early
        first = _continuations(tiny, ids, positions, None)["cache"][0]
        stop = [tiny.tokenizer.decode(first[3:4])]
    out = _continuations(tiny, ids, positions, stop)
    assert out["prefix"] == out["cache"] == out["no cache"]
    assert out["prefix again"] == out["prefix"]  # the shared prefix came back unchanged
    assert out["prefix"] != out["unsteered"]  # the steering did act
    if stop:  # the first row stopped (padded after the stop) before max_new_tokens
        assert len(out["prefix"][0]) < 12 or out["prefix"][0][-1] == tiny.tokenizer.pad_token_id


@pytest.mark.parametrize("mode", ["add_norm_preserving", "ablate"])
def test_every_mode_matches_from_the_reused_prefix(tiny: LoadedModel, mode: str) -> None:
    ids = tokens(tiny, *TEXTS)
    out = _continuations(tiny, ids, "prompt_end_onward", None, mode=mode)
    assert out["prefix"] == out["cache"] == out["no cache"]


def test_generated_positions_leave_the_last_prompt_token_unsteered_from_the_prefix(
    tiny: LoadedModel,
) -> None:
    """The first new token is predicted by the prompt's last position: `generated` must leave it
    as the unsteered model has it, `prompt_end_onward` steers it, also from the reused prefix."""
    ids = tokens(tiny, *TEXTS)
    vector = unit(tiny.shape.hidden_size, 3) * 40.0
    prefix = _prefix(tiny, ids)
    plain = generate_ids(tiny.model, tiny.tokenizer, ids, 1)
    first = {}
    for positions in PREFIX_POSITIONS:
        with steer(tiny.model, tiny.blocks, {2: vector}, Application(1.0, positions)):
            first[positions] = generate_ids(tiny.model, tiny.tokenizer, ids, 1, prefix=prefix)
    assert first["generated"] == plain
    assert first["prompt_end_onward"] != plain


def test_the_prefix_is_restored_when_generation_raises(tiny: LoadedModel) -> None:
    ids = tokens(tiny, *TEXTS)
    prefix = _prefix(tiny, ids)
    width = prefix.get_seq_length()  # type: ignore[attr-defined]

    calls = []

    def boom(*_args: object) -> None:  # the second decoding step fails mid-generation
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")

    hook = tiny.blocks[0].register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            generate_ids(tiny.model, tiny.tokenizer, ids, 6, prefix=prefix)
    finally:
        hook.remove()
    assert prefix.get_seq_length() == width  # type: ignore[attr-defined]


def test_kl_from_the_reused_prefix_matches_the_full_pass_and_is_zero_at_alpha_zero(
    tiny: LoadedModel,
) -> None:
    ids = tokens(tiny, *TEXTS)
    full = build_reference(tiny.model, tiny.tokenizer, ids, 6, batch_size=2)
    reused = build_reference(tiny.model, tiny.tokenizer, ids, 6, batch_size=2, prefix=True)
    vector = unit(tiny.shape.hidden_size, 4) * 6.0
    for positions in (*PREFIX_POSITIONS, "all"):
        for alpha in (0.0, 1.0):
            with steer(
                tiny.model, tiny.blocks, {1: vector}, Application(alpha, positions)
            ) as handle:
                a = kl_per_prompt(tiny.model, full, handle)
                b = kl_per_prompt(tiny.model, reused, handle)
            assert b == pytest.approx(a, abs=1e-5), (positions, alpha)
            if alpha == 0.0:
                assert b == [0.0] * len(TEXTS)
            else:
                assert min(b) > 0.0


def test_smollm2_steered_chat_generation_matches_from_the_reused_prefix(
    smollm2: LoadedModel,
) -> None:
    tok, model = smollm2.tokenizer, smollm2.model
    prompts = (
        "Tell me about your morning.",
        "What is a cup?",
        "Describe a quiet street at night.",
    )
    ids = [tok.encode(chat_prompt(tok, p)) for p in prompts]
    prefix = _prefix(smollm2, ids)
    vector = unit(smollm2.shape.hidden_size, 3) * 8.0
    plain = generate_ids(model, tok, ids, 8, stop_strings=["."])
    for positions in PREFIX_POSITIONS:
        with steer(model, smollm2.blocks, {10: vector}, Application(1.0, positions)):
            cached = generate_ids(model, tok, ids, 8, stop_strings=["."])
            reused = generate_ids(model, tok, ids, 8, stop_strings=["."], prefix=prefix)
        assert reused == cached != plain, positions


def test_a_one_token_prompt_batch_has_no_prefix(tiny: LoadedModel) -> None:
    ids = [tokens(tiny, "Hello")[0][:1]]
    assert _prefix(tiny, ids) is None
    assert torch.equal(
        torch.tensor(generate_ids(tiny.model, tiny.tokenizer, ids, 3, prefix=None)),
        torch.tensor(generate_ids(tiny.model, tiny.tokenizer, ids, 3)),
    )


def test_fluency_from_the_reused_prefix_equals_the_full_pass(tiny: LoadedModel) -> None:
    ids = tokens(tiny, *TEXTS, "A fourth prompt, in its own batch")
    batches = [[0, 1, 2], [3]]
    pad = tiny.tokenizer.pad_token_id
    prefixes = [_prefix(tiny, [ids[i] for i in batch]) for batch in batches]
    # One continuation empty, the others of different lengths (right-padded in the pass).
    conts = [[5, 17, 33, 2], [], [9, 41, 7, 8, 12, 15], [90, 12]]
    full = perplexities(tiny.model, pad, ids, conts)
    fast = perplexities_from_prefix(tiny.model, pad, ids, batches, prefixes, conts)
    assert fast == pytest.approx(full, rel=1e-5)
    assert fast[1] == 1.0 and len({round(x, 3) for x in fast}) == 4
    # The shared prefixes are left as they were: a second pass gives the same values.
    again = perplexities_from_prefix(tiny.model, pad, ids, batches, prefixes, conts)
    assert again == fast
