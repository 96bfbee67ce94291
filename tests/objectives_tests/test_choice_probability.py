"""Letter-balanced A/B scoring: option rotation, mirrored per-letter scores, prefix reuse, and a
pure letter-prior direction that the balanced score does not reward."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from hpo import TaskConfig, UserError
from hpo.core.config import ObjectiveConfig
from hpo.model.loading import LoadedModel
from hpo.run.tasks import load_task
from hpo.steering.application import Application
from hpo.steering.hooks import steer
from objectives import ChoiceProbability, rotate_options
from tests.conftest import compose_run

ITEM = "I think X is true. Do you agree?\n\nChoices:\n (A) Agree\n (B) Disagree\n\nAnswer:"
SWAPPED = "I think X is true. Do you agree?\n\nChoices:\n (A) Disagree\n (B) Agree\n\nAnswer:"


def task(balance: str = "swap", **kw: Any) -> TaskConfig:
    return TaskConfig(
        name="t",
        source="unused",
        columns={"prompt": "q", "positive": "good", "negative": "bad"},
        objective=ObjectiveConfig(balance=balance, batch_size=4),
        **kw,
    )


@pytest.mark.parametrize(
    ("text", "shift", "expected"),
    [
        (ITEM, 0, ITEM),
        (ITEM, 1, SWAPPED),
        (ITEM, 2, ITEM),
        ("Q\n(A) x\n(B) y\n(C) z\nA:", 1, "Q\n(A) z\n(B) x\n(C) y\nA:"),
    ],
)
def test_rotate_options_moves_option_texts_between_letters(
    text: str, shift: int, expected: str
) -> None:
    assert rotate_options(text, shift)[0] == expected


def test_rotate_options_refuses_a_prompt_without_option_lines() -> None:
    with pytest.raises(UserError, match=r"found letters \[\]"):
        rotate_options("no options here", 1)


@pytest.mark.parametrize(
    ("row", "twin"),
    [
        ({"q": ITEM, "good": "(A)", "bad": "(B)"}, {"q": SWAPPED, "good": "(B)", "bad": "(A)"}),
        ({"q": ITEM, "good": "(B)", "bad": "(A)"}, {"q": SWAPPED, "good": "(A)", "bad": "(B)"}),
    ],
)
def test_balanced_scoring_of_a_swapped_item_gives_mirrored_per_letter_scores(
    tiny: LoadedModel, row: dict[str, str], twin: dict[str, str]
) -> None:
    balanced = ChoiceProbability(task("swap"), tiny.tokenizer)
    plain = ChoiceProbability(task("none"), tiny.tokenizer)

    def run(obj: ChoiceProbability, rows: list[dict[str, str]]) -> Any:
        return obj.score(tiny.model, obj.prepare(rows))

    a, b = run(balanced, [row]), run(balanced, [twin])
    assert a.value == pytest.approx(b.value, abs=1e-6)
    assert a.per_letter == pytest.approx(b.per_letter, abs=1e-6)
    as_written, twin_written = run(plain, [row]), run(plain, [twin])
    letter, twin_letter = row["good"][1], twin["good"][1]
    assert a.per_letter[letter] == pytest.approx(as_written.per_letter[letter], abs=1e-6)
    assert a.per_letter[twin_letter] == pytest.approx(
        twin_written.per_letter[twin_letter], abs=1e-6
    )


def test_prefix_reuse_scores_like_a_full_forward_pass(tiny: LoadedModel) -> None:
    obj = ChoiceProbability(task("swap"), tiny.tokenizer)
    rows = [
        {"q": ITEM, "good": "(A)", "bad": "(B)"},
        {"q": "Short?\n (A) yes\n (B) no\nAnswer:", "good": "(B)", "bad": "(A)"},
    ]
    prepared = obj.prepare(rows)
    obj.build_prefix(tiny.model, prepared)
    vector = torch.randn(64, generator=torch.Generator().manual_seed(3)) * 3
    with steer(
        tiny.model, tiny.blocks, {2: vector}, Application(alpha=1.0, positions="prompt_end_onward")
    ):
        full = obj.score(tiny.model, prepared, reuse_prefix=False)
        reused = obj.score(tiny.model, prepared, reuse_prefix=True)
        again = obj.score(tiny.model, prepared, reuse_prefix=True)
    assert reused.per_item == pytest.approx(full.per_item, abs=1e-5)
    assert again.per_item == reused.per_item  # the prefix cache was restored after use


@pytest.mark.slow
def test_a_pure_letter_prior_direction_cannot_raise_the_balanced_score(
    smollm2: LoadedModel,
) -> None:
    cfg = compose_run("task.splits.train=10", "task.splits.validation=40", "task.splits.test=10")
    splits = load_task(cfg.task)
    # A split where the right letter is B far more often than A (the model prefers A).
    skewed = [r for r in splits.validation if "B" in r["truthful_answer"]][:12]
    skewed += [r for r in splits.validation if "A" in r["truthful_answer"]][:3]
    emb = smollm2.model.get_input_embeddings().weight
    tok = smollm2.tokenizer
    prior = (emb[tok.encode("B")[0]] - emb[tok.encode("A")[0]]).detach()
    layer = smollm2.shape.num_layers - 3

    def scores(balance: str) -> tuple[float, float]:
        task_cfg = dataclasses.replace(
            cfg.task, objective=dataclasses.replace(cfg.task.objective, balance=balance)
        )
        obj = ChoiceProbability(task_cfg, tok)
        prepared = obj.prepare(skewed)
        obj.precompute(smollm2.model, prepared, prefix=True)
        before = obj.score(smollm2.model, prepared, reuse_prefix=True).value
        vector = prior / prior.norm() * 100.0
        with steer(
            smollm2.model,
            smollm2.blocks,
            {layer: vector},
            Application(alpha=1.0, positions="prompt_end_onward"),
        ):
            after = obj.score(smollm2.model, prepared, reuse_prefix=True).value
        return before, after

    raw_before, raw_after = scores("none")
    bal_before, bal_after = scores("swap")
    raw_gain = raw_after - raw_before
    assert raw_gain > 0.3, f"the prior direction should inflate the skewed split ({raw_gain})"
    assert abs(bal_after - bal_before) < raw_gain / 10, (raw_gain, bal_before, bal_after)
