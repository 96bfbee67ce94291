"""Several trials in one batched pass (`study.trials_per_pass`): each row group steered by its
own trial equals that trial alone, for every site, mode, positions rule and gate.

The hooks are checked position by position on tiny random models (forward logits and greedy

score, KL, fluency) and on the tiny Llama (A/B letters and multiple-choice options).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hpo.model.blocks import find_blocks
from hpo.model.decoding import generate_ids
from hpo.model.kv import RepeatedPrefixes, output_cache, repeat_rows
from hpo.steering.application import Application
from hpo.steering.gates import Gate
from hpo.steering.handle import RowGroup
from hpo.steering.heads import head_shape
from hpo.steering.hooks import steer, steer_groups
from tests.hpo_tests.model_tests.test_architectures import (
    HIDDEN,
    PAD,
    PROMPTS,
    _build,
    _hook_count,
)

LAYER = 1


def _steerings(model: nn.Module) -> list[tuple[dict[int, torch.Tensor], Application]]:
    """Five trials' steering, as different as the hook layer allows: both sites, every mode,
    every positions rule, a trigger gate and a probe gate."""
    n_heads, head_dim = head_shape(model, find_blocks(model))
    g = torch.Generator().manual_seed(7)
    v = [torch.randn(HIDDEN, generator=g) * 2 for _ in range(3)]
    head_vector = torch.randn(n_heads * head_dim, generator=g) * 3
    probe = {LAYER: (torch.randn(HIDDEN, generator=g), 0.0)}
    heads: dict[int, tuple[int, ...]] = {LAYER: (0, 2)}
    return [
        ({LAYER: v[0]}, Application(alpha=1.5, positions="all", mode="add")),
        (
            {0: v[1], 2: v[2]},
            Application(alpha=0.8, positions="prompt_end_onward", mode="add_norm_preserving"),
        ),
        (
            {LAYER: v[2]},
            Application(
                positions="all",
                mode="ablate",
                gate=Gate(trigger="x", trigger_ids=torch.tensor([17, 90])),
            ),
        ),
        (
            {LAYER: head_vector},
            Application(alpha=1.2, site="heads", heads=heads, head_dim=head_dim, n_heads=n_heads),
        ),
        (
            {LAYER: v[0]},
            Application(
                alpha=-1.0,
                positions="generated",
                gate=Gate(probe="present", threshold=0.5, probes=probe),
            ),
        ),
        (
            {LAYER: head_vector},
            Application(
                alpha=0.7,
                positions="all",
                mode="add_norm_preserving",
                site="heads",
                heads=heads,
                head_dim=head_dim,
                n_heads=n_heads,
                head_point="post_o_proj",
            ),
        ),
    ]


def _padded(rows: list[list[int]]) -> dict[str, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("family", ["llama", "gpt2", "mistral"])
def test_each_row_group_steered_by_its_trial_equals_that_trial_alone(family: str) -> None:
    model, _ = _build(family)
    blocks = find_blocks(model)
    steerings = _steerings(model)
    k = len(steerings)
    prompts = [list(p) for p in PROMPTS]
    alone_logits, alone_text = [], []
    with torch.inference_mode():
        plain = model(**_padded(prompts)).logits
        plain_text = generate_ids(model, PAD, prompts, 6)
        for vectors, app in steerings:
            with steer(model, blocks, vectors, app):
                alone_logits.append(model(**_padded(prompts)).logits)
                alone_text.append(generate_ids(model, PAD, prompts, 6))
        tiled = [p for p in prompts for _ in range(k)]
        with steer_groups(model, blocks, steerings) as handles:
            assert [h.group for h in handles] == [RowGroup(g, k) for g in range(k)]
            together = model(**_padded(tiled)).logits
            texts = generate_ids(model, PAD, tiled, 6)
    assert _hook_count(model) == 0
    for g in range(k):
        torch.testing.assert_close(together[g::k], alone_logits[g], atol=2e-5, rtol=1e-4)
        assert texts[g::k] == alone_text[g], f"trial {g}: greedy text differs"
        # Every trial really steers (its logits or its text), so a dropped group is caught.
        moved = not torch.allclose(alone_logits[g], plain) or alone_text[g] != plain_text
        assert moved, f"trial {g} does not steer"
    # The trials really differ, so a swapped group would be caught.
    assert len({tuple(map(tuple, t)) for t in alone_text}) > 2


def test_one_steering_in_steer_groups_is_plain_steer() -> None:
    model, _ = _build("llama")
    vectors, app = _steerings(model)[0]
    inputs = _padded([list(p) for p in PROMPTS])
    with torch.inference_mode():
        with steer(model, find_blocks(model), vectors, app):
            alone = model(**inputs).logits
        with steer_groups(model, find_blocks(model), [(vectors, app)]) as [handle]:
            assert handle.group is None
            grouped = model(**inputs).logits
    assert torch.equal(alone, grouped)


def test_a_batch_that_does_not_hold_its_groups_is_refused() -> None:
    model, _ = _build("llama")
    steerings = _steerings(model)[:3]
    with (
        torch.inference_mode(),
        steer_groups(model, find_blocks(model), steerings),
        pytest.raises(RuntimeError, match="does not hold 3 interleaved groups"),
    ):
        model(**_padded([list(PROMPTS[0])] * 4))
    assert _hook_count(model) == 0


def test_repeated_prefix_rows_interleave_and_keep_the_original() -> None:
    model, _ = _build("llama")
    with torch.inference_mode():
        out = model(**_padded([list(p) for p in PROMPTS]), use_cache=True)
    cache = output_cache(out)
    before = cache.layers[0].keys.clone()
    repeated = repeat_rows(cache, 3)
    assert repeated.layers[0].keys.shape[0] == 6
    torch.testing.assert_close(repeated.layers[0].keys[4], cache.layers[0].keys[1])
    assert torch.equal(cache.layers[0].keys, before)
    made = RepeatedPrefixes()
    assert made.get([cache], 0, 3) is made.get([cache], 0, 3)
    assert made.get([cache], 0, 1) is cache
