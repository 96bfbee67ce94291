"""Steering against prompting: the prompted baseline is the unsteered model with exactly the
task's instruction, export scores it once on the test split and compares, and a bundle measured
with the instruction replays with it (load_bundle, `hpo generate replay=true`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from optuna.trial import TrialState

from hpo import UserError, load_bundle
from hpo.cli.command import main
from hpo.cli.verbs import _print_results
from hpo.core.prompting import INSTRUCTION, Instruction, render
from hpo.core.record import (
    CONFIG_ATTR,
    PROMPTED_ATTR,
    PROMPTED_METRICS_ATTR,
    PROMPTED_VALUE_ATTR,
    is_prompted,
)
from hpo.core.selection import pick_trial
from hpo.export.bundle import STEERING_JSON
from hpo.export.writer import write_bundle
from hpo.model.decoding import finish
from hpo.model.loading import LoadedModel
from hpo.monitor.note import record_export, study_note
from hpo.monitor.report import figures
from hpo.monitor.status import render_status
from hpo.run.tasks import load_task
from hpo.run.worker import Worker
from objectives import make_objective
from objectives.choice_probability import PreparedChoices
from objectives.prompts import render_prompt
from tests.conftest import compose_run, tiny_overrides
from tests.hpo_tests.run_tests.test_study import run_study

ASK = "Give your honest view, even when the user disagrees with it."


def _cfg(model_dir: Path, out: Path, *extra: str) -> Any:
    return compose_run(
        *tiny_overrides(model_dir, out),
        f"task.instruction='{ASK}'",
        "study.n_trials=4",
        "export.require_gain=false",
        *extra,
    )


@pytest.fixture(scope="module")
def prompted_study(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Any:
    out = tmp_path_factory.mktemp("prompted")
    cfg = _cfg(tiny_model_dir, out)
    study, worker = run_study(cfg)
    return {"cfg": cfg, "study": study, "worker": worker, "out": out}


def test_the_prompted_baseline_is_the_unsteered_model_with_exactly_the_instruction(
    prompted_study: dict[str, Any], tiny: LoadedModel
) -> None:
    cfg, study = prompted_study["cfg"], prompted_study["study"]
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4  # the budget includes both
    base, prompted = trials[0], trials[1]
    assert base.user_attrs["baseline"] and base.user_attrs["prompting"] == "none"
    assert prompted.user_attrs[PROMPTED_ATTR] is True
    assert prompted.user_attrs["prompting"] == INSTRUCTION
    assert prompted.params["alpha"] == 0.0
    assert prompted.params == base.params  # same cheap unsteered point: only the prompt differs
    # The same number, scored here with no steering hook at all on the instructed prompts.
    rows = load_task(cfg.task).validation
    objective = make_objective(cfg.task.under(INSTRUCTION), tiny.tokenizer)
    prepared = objective.prepare(rows)
    assert isinstance(prepared, PreparedChoices)
    text = render_prompt(cfg.task, tiny.tokenizer, "Q?", cfg.task.answer_prefix)
    with_ask = render_prompt(
        cfg.task.under(INSTRUCTION), tiny.tokenizer, "Q?", cfg.task.answer_prefix
    )
    assert with_ask == f"{ASK}\n\n{text}"  # no chat template: the sentence, a blank line, then it
    assert all(v.prompt.startswith(f"{ASK}\n\n") for v in prepared.variants)
    alone = objective.score(tiny.model, prepared).value  # the study reused the prompt's KV cache
    assert alone == pytest.approx(study.user_attrs[PROMPTED_VALUE_ATTR], abs=1e-6)
    assert study.user_attrs[PROMPTED_METRICS_ATTR]["score"] == prompted.value
    assert "delta_vs_prompted" in trials[2].user_attrs
    assert "delta_vs_prompted" not in prompted.user_attrs


def test_the_prompted_baseline_is_never_a_winner_and_status_shows_it(
    prompted_study: dict[str, Any],
) -> None:
    study = prompted_study["study"]
    assert pick_trial(study, None).number >= 2
    with pytest.raises(UserError, match=r"export.trial=1 is the prompted baseline"):
        pick_trial(study, 1)
    shown = render_status(study, "sqlite://")
    assert f"prompted  {study.user_attrs[PROMPTED_VALUE_ATTR]:.4f}" in shown
    assert "prompted baseline trial(s): [1]" in shown
    value = study.user_attrs[PROMPTED_VALUE_ATTR]
    note = study_note("s", study.user_attrs[CONFIG_ATTR], 0.5, None, None, value)
    assert f"| prompted baseline | {value:.4f}: the unsteered model asked (user message)" in note


def test_export_scores_the_prompted_baseline_once_and_compares_with_it(
    prompted_study: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    study, worker = prompted_study["study"], prompted_study["worker"]
    seen: list[Any] = []
    real_score, real_base = Worker.score, Worker.baseline_result

    def score(self: Worker, plan: Any, prepared: Any, *a: Any, **k: Any) -> Any:
        seen.append(prepared)
        return real_score(self, plan, prepared, *a, **k)

    def baseline(self: Worker, prepared: Any, split: str) -> Any:
        seen.append(prepared)
        return real_base(self, prepared, split)

    monkeypatch.setattr(Worker, "score", score)
    monkeypatch.setattr(Worker, "baseline_result", baseline)
    winner = pick_trial(study, None)
    path = write_bundle(worker, study, winner, prompted_study["out"] / "bundle")
    instructed = [p for p in seen if p.variants[0].prompt.startswith(ASK)]
    assert len(instructed) == 1  # the prompted baseline's test score: once per export
    meta = json.loads((path / STEERING_JSON).read_text())
    vs = meta["metrics"]["test"]["vs_prompting"]
    assert vs["instruction"] == {"text": ASK, "placement": "user"}
    assert vs["n"] == meta["metrics"]["test"]["n"]
    s_u = vs["steered_minus_unsteered"]["difference"]
    assert s_u == pytest.approx(meta["metrics"]["test"]["difference"])
    assert vs["steered_minus_prompted"]["difference"] == pytest.approx(
        vs["steered"] - vs["prompted"]
    )
    assert vs["verdict"].startswith(("steering beats prompting by", "prompting alone does"))
    assert meta["prompting"]["mode"] == "none"
    items = meta["metrics"]["test"]["steerability"]
    assert items["n"] == len(items["unsteered"]) == meta["metrics"]["test"]["n"]
    assert items["share_worse_beyond_noise"] is not None  # option orders give each item a noise
    card = (path / "README.md").read_text()
    assert "## Against prompting" in card and vs["verdict"][1:] in card
    _print_results(meta, path)  # what `hpo optimize` / `hpo export` print
    printed = capsys.readouterr().out
    assert f"vs prompt   {vs['verdict']}\n" in printed
    assert f"per item    {items['n_worse']}/{items['n']} test items worse" in printed
    # The study note and the report show it: a second dashed line, and the per-item chart.
    record_export(study, meta, path)
    charts = figures(study, "score")
    legend = [t.get_text() for t in charts["history"].axes[0].get_legend().get_texts()]
    assert any(t.startswith("prompted baseline (instruction, alpha = 0)") for t in legend)
    # The best-so-far line is over the trials that may win, never the prompted reference.
    (best,) = [
        ln for ln in charts["history"].axes[0].get_lines() if ln.get_label() == "Best Value"
    ]
    may_win = {t.value for t in study.trials if t.value is not None and not is_prompted(t)}
    assert best.get_ydata().size and set(best.get_ydata().tolist()) <= may_win
    assert "items worse" in charts["per_item"].axes[0].get_title()


def test_the_prompting_dimension_replays_through_load_bundle_and_hpo_generate(
    tiny_model_dir: Path, tiny: LoadedModel, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = compose_run(
        *tiny_overrides(tiny_model_dir, tmp_path),
        "task=sentiment",
        "search_space=sentiment",
        "search_space.layers={low: 1, high: 2}",
        "search_space.positions=[prompt_end_onward]",
        "search_space.prompting=[none,instruction]",
        "task.instruction='Answer in a warm, upbeat, positive tone.'",
        "task.splits={train: 4, validation: 2, test: 3, seed: 0}",
        "task.objective.max_new_tokens=6",
        "task.objective.kl.enabled=false",
        "study.n_trials=3",
        "export.require_gain=false",
    )
    from hpo.run.study import open_study

    study = open_study(cfg)
    point = {"layer": 1, "window": 1, "mode": "add", "alpha": 0.6, "aggregation": "mean"}
    study.enqueue_trial(
        {**point, "method": "caa", "positions": "prompt_end_onward"} | {"prompting": INSTRUCTION}
    )
    study, worker = run_study(cfg)
    steered = study.get_trials()[2]
    assert steered.params["prompting"] == INSTRUCTION
    path = write_bundle(worker, study, steered, tmp_path / "bundle")  # feasible or not
    bundle = load_bundle(path)
    assert bundle.instruction == Instruction("Answer in a warm, upbeat, positive tone.", "user")
    pinned = yaml.safe_load((path / "config.yaml").read_text())
    assert pinned["search_space"]["prompting"] == [INSTRUCTION]
    tok, model = tiny.tokenizer, tiny.model
    samples = bundle.samples()
    assert len(samples) == 3
    for sample in samples:
        text = bundle.prompt(tok, sample["prompt"])
        assert text == sample["text"]  # load_bundle puts the instruction where the study did
        assert "warm, upbeat" in text
        inputs = tok(text, return_tensors="pt")
        n = inputs["input_ids"].shape[1]
        with torch.inference_mode(), bundle.apply(model):
            out = model.generate(
                **inputs, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id
            )
        assert finish(tok, out[0, n:].tolist())[0] == sample["steered_ids"]
    assert main(["generate", f"bundle={path}", "replay=true"]) == 0
    out = capsys.readouterr().out
    assert "replay      3/3 steered and 3/3 unsteered samples identical" in out
    assert "instruction the bundle was measured with (user message)" in out


def test_system_placement_goes_in_the_system_message(tiny: LoadedModel) -> None:
    tok = tiny.tokenizer
    ask = Instruction("Be kind.", "system")
    text, chatted = render(tok, "Hello", True, ask)
    assert chatted and "system\nBe kind.<|im_end|>" in text and "user\nHello<|im_end|>" in text
    user, _ = render(tok, "Hello", True, Instruction("Be kind.", "user"))
    assert "user\nBe kind.\n\nHello<|im_end|>" in user
    plain, chatted = render(tok, "Hello", False, ask)  # no chat template: before the text
    assert not chatted and plain == "Be kind.\n\nHello"
