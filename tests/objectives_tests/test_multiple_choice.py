"""Multiple choice by option log-likelihood: the KV-cache shortcut equals a plain forward pass,
every option order is scored (letter-balanced), and the shipped BBQ task scores on SmolLM2."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from hpo import UserError
from hpo.model.loading import LoadedModel
from hpo.run.tasks import load_task
from objectives import make_objective
from objectives.multiple_choice import MultipleChoice
from tests.conftest import compose_run

ROWS: list[dict[str, Any]] = [
    {
        "text": "Q: Which is a fruit?\nA) an apple\nB) a brick\nC) a cloud\nAnswer:",
        "answers": ["an apple", "a brick", "a cloud"],
        "correct_idx": 0,
        "target_idx": 2,
    },
    {
        "text": "Q: What is 2 + 2?\nA) three\nB) four\nC) five\nAnswer:",
        "answers": ["three", "four", "five"],
        "correct_idx": "B",
        "target_idx": None,
    },
]


def _objective(tokenizer: Any, **objective: Any) -> MultipleChoice:
    task = compose_run("task=bbq").task
    task = dataclasses.replace(task, objective=dataclasses.replace(task.objective, **objective))
    return MultipleChoice(task, tokenizer)


def test_every_item_is_scored_in_every_option_order(tiny: LoadedModel) -> None:
    objective = _objective(tiny.tokenizer)
    variants = objective.variants(ROWS)
    assert len(variants) == 6  # 2 items x 3 cyclic orders
    first = [v for v in variants if v.item == 0]
    assert sorted(v.letters[v.correct] for v in first) == ["A", "B", "C"]
    for v in first:  # the text shown at each letter is the text scored at that letter
        for letter, option in zip(v.letters, v.options, strict=True):
            assert f"\n{letter}) {option}\n" in v.prompt
    assert objective.train_pairs(ROWS)[0].negative == " a cloud"  # target_idx
    assert objective.train_pairs(ROWS)[3].negative == " five"  # default: the next option
    assert len(_objective(tiny.tokenizer, balance="none").variants(ROWS)) == 2


@pytest.mark.parametrize("loglik", ["sum", "mean"])
def test_cached_option_logliks_equal_a_plain_forward_pass(tiny: LoadedModel, loglik: str) -> None:
    objective = _objective(tiny.tokenizer, loglik=loglik, batch_size=4)
    prepared = objective.prepare(ROWS)
    for batch in prepared.batches:
        got = objective._logliks(tiny.model, prepared, batch)
        for row, i in enumerate(batch):
            prompt = prepared.prompt_ids[i]
            for j, option in enumerate(prepared.option_ids[i]):
                with torch.inference_mode():
                    logits = tiny.model(torch.tensor([prompt + option])).logits[0].float()
                logp = torch.log_softmax(logits, dim=-1)
                lls = [float(logp[len(prompt) - 1 + k, t]) for k, t in enumerate(option)]
                want = sum(lls) / (len(lls) if loglik == "mean" else 1)
                assert got[row][j] == pytest.approx(want, abs=1e-4)


def test_score_reports_probability_accuracy_and_per_letter(tiny: LoadedModel) -> None:
    objective = _objective(tiny.tokenizer)
    result = objective.score(tiny.model, objective.prepare(ROWS))
    assert result.n == 2
    assert 0.0 < result.value < 1.0
    assert set(result.per_letter) == {"A", "B", "C"}
    assert result.accuracy is not None and 0.0 <= result.accuracy <= 1.0
    assert result.per_item_accuracy is not None and len(result.per_item_accuracy) == 2


def test_a_bad_answer_column_is_a_user_error(tiny: LoadedModel) -> None:
    objective = _objective(tiny.tokenizer)
    with pytest.raises(UserError, match=r"option index in \[0, 2\] or a letter, got 7"):
        objective.variants([{**ROWS[0], "correct_idx": 7}])
    with pytest.raises(UserError, match="list of >= 2 option texts"):
        objective.variants([{**ROWS[0], "answers": "just one"}])


def test_bbq_on_smollm2_is_letter_balanced_near_chance(smollm2: LoadedModel) -> None:
    cfg = compose_run("task=bbq")
    rows = load_task(cfg.task).validation[:4]
    objective = make_objective(cfg.task, smollm2.tokenizer)
    result = objective.score(smollm2.model, objective.prepare(rows))
    # measured: the 135M model is near chance (1/3) on BBQ, with no letter far from the others
    assert 0.2 < result.value < 0.6, result
    assert set(result.per_letter) == {"A", "B", "C"}
    assert max(result.per_letter.values()) - min(result.per_letter.values()) < 0.2
