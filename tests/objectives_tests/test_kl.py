"""The KL side metric on the real model: exactly 0 unsteered, growing with alpha, and honest
about where position-restricted steering starts."""

from __future__ import annotations

import torch

from hpo.model.decoding import chat_prompt
from hpo.model.loading import LoadedModel
from hpo.steering.application import Application
from hpo.steering.hooks import steer
from objectives.kl import KLReference, build_reference, kl_per_prompt

PROMPTS = ["Tell me about your morning.", "What is a cup?"]


def _reference(loaded: LoadedModel) -> KLReference:
    tok = loaded.tokenizer
    ids = [tok.encode(chat_prompt(tok, p)) for p in PROMPTS]
    return build_reference(loaded.model, tok, ids, max_new_tokens=6, batch_size=2)


def _direction(loaded: LoadedModel, layer: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    v = torch.randn(loaded.shape.hidden_size, generator=g)
    return v / v.norm()


def test_kl_is_zero_at_alpha_zero_and_grows_with_alpha(smollm2: LoadedModel) -> None:
    ref = _reference(smollm2)
    layer = 12
    vector = _direction(smollm2, layer)
    means = []
    for alpha in (0.0, 4.0, 16.0, 32.0):
        with steer(
            smollm2.model,
            smollm2.blocks,
            {layer: vector},
            Application(alpha=alpha, positions="all"),
        ) as handle:
            items = kl_per_prompt(smollm2.model, ref, handle)
        assert len(items) == len(PROMPTS)
        means.append(sum(items) / len(items))
    assert means[0] == 0.0
    assert 0.0 < means[1] < means[2] < means[3], means
    assert means[3] > 0.05, means


def test_generated_positions_leave_the_first_prediction_unsteered(smollm2: LoadedModel) -> None:
    """One counted position (the prompt's last token, predicting the first new token): steering
    `generated` tokens cannot change it (KL exactly 0), `prompt_end_onward` does."""
    tok = smollm2.tokenizer
    ids = [tok.encode(chat_prompt(tok, p)) for p in PROMPTS]
    ref = build_reference(smollm2.model, tok, ids, max_new_tokens=1)
    vector = _direction(smollm2, 12) * 32.0
    out = {}
    for positions in ("generated", "prompt_end_onward"):
        with steer(
            smollm2.model,
            smollm2.blocks,
            {12: vector},
            Application(alpha=1.0, positions=positions),
        ) as handle:
            out[positions] = kl_per_prompt(smollm2.model, ref, handle)
        assert handle.prompt_length is None  # restored after every batch
    assert out["generated"] == [0.0, 0.0]
    assert all(v > 0 for v in out["prompt_end_onward"])
