"""Measure a winner on the held-out test split: steered vs unsteered with intervals, every side
metric, the recorded samples that replay token for token, what llama.cpp's every-position
control vector does, and whether the gain is shown at all. The test split is read here and
only here, after the winner is chosen.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from hpo.core.chance import CHANCE_BIAS_ATTR, chance_report
from hpo.core.errors import UserError
from hpo.core.objective_metrics import metric_values
from hpo.core.prompting import INSTRUCTION, NONE
from hpo.core.record import (
    BASELINE_METRICS_ATTR,
    BASELINE_VALUE_ATTR,
    PROMPTED_VALUE_ATTR,
    meets,
    per_letter,
)
from hpo.core.selection import values_of
from hpo.core.stats import bootstrap_diff_ci, shows_gain
from hpo.export.against_prompting import steerability, vs_prompting
from hpo.model.decoding import complete_each
from hpo.run.planner import Plan
from hpo.run.tasks import load_task
from hpo.run.worker import Worker
from hpo.steering.hooks import steer
from objectives import Generation, PreparedPrompts, PreparedSplit, ScoreResult
from search_spaces import PROMPTING_PARAM

# Test prompts whose continuations the bundle records (and `hpo generate replay=true` replays).
N_SAMPLES = 3


def _compare(
    steered: dict[str, float],
    baseline: dict[str, float],
    steered_items: dict[str, list[float]],
    baseline_items: dict[str, list[float]],
    seed: int,
) -> dict[str, dict[str, Any]]:
    """Per metric: steered, baseline, difference, n and (paired items on both sides) a 95% CI."""
    out: dict[str, dict[str, Any]] = {}
    for name, value in steered.items():
        entry: dict[str, Any] = {"steered": value, "baseline": baseline.get(name)}
        if entry["baseline"] is not None:
            entry["difference"] = value - entry["baseline"]
        a, b = steered_items.get(name), baseline_items.get(name)
        if a and b and len(a) == len(b):
            entry["n"] = len(a)
            entry["ci95"] = list(bootstrap_diff_ci(a, b, seed=seed))
        out[name] = entry
    return out


def _compare_all(
    steered: ScoreResult, baseline: ScoreResult, seed: int
) -> dict[str, dict[str, Any]]:
    """`_compare` over the score and every side metric of two results on the same items."""
    return _compare(
        metric_values(steered.value, steered.metrics),
        metric_values(baseline.value, baseline.metrics),
        {"score": steered.per_item, **steered.metric_items},
        {"score": baseline.per_item, **baseline.metric_items},
        seed,
    )


@dataclass
class TestSplit:
    """The held-out test split, read and prepared once per export, with its unsteered result
    (every measurement of the export compares with this one baseline) and, for a task with an
    instruction, the prompted baseline's (scored once, whatever the export measures)."""

    rows: list[Any]
    prepared: PreparedSplit
    baseline: ScoreResult
    prompted: PreparedSplit | None = None
    prompted_baseline: ScoreResult | None = None

    @classmethod
    def load(cls, worker: Worker) -> TestSplit:
        """Read the task's test rows, prepare them (tokenized; unsteered reference run) and
        score them unsteered, side metrics included; with an instruction, also prompted."""
        rows = load_task(worker.cfg.task).test()
        prepared = worker.prepare(rows)
        test = cls(rows, prepared, worker.baseline_result(prepared, "test"))
        if worker.cfg.task.instruction is not None:
            test.prompted = worker.prepare(rows, INSTRUCTION, like=prepared)
            test.prompted_baseline = worker.baseline_result(test.prompted, "test")
        return test

    def under(self, prompting: str) -> PreparedSplit:
        """The prepared split a trial of this `prompting` is scored on."""
        if prompting == NONE:
            return self.prepared
        if self.prompted is None:
            raise UserError(f"the winner was scored with prompting {prompting!r}: no instruction")
        return self.prompted


def prompting_of(plan: Plan) -> str:
    """The prompting a plan's trial was scored with (`none` for trials before it existed)."""
    return str(plan.resolved.get(PROMPTING_PARAM, NONE))


def measure(
    worker: Worker,
    trial: FrozenTrial,
    study: optuna.Study,
    test: TestSplit | None = None,
    plan: Plan | None = None,
) -> dict[str, Any]:
    """Validation (from the study) and held-out test metrics, steered vs unsteered.

    `steered` / `baseline` are the objective's score; `metrics` holds every named metric
    (score, kl, tokens, fluency) with its baseline and, on the test split, n and a bootstrap 95%
    interval of the difference where per-item values exist.
    """
    test = TestSplit.load(worker) if test is None else test
    plan = worker.plan(trial.params) if plan is None else plan
    prompting = prompting_of(plan)
    test_rows, prepared, baseline = test.rows, test.under(prompting), test.baseline
    steered = worker.score(plan, prepared, split="test")
    seed = worker.cfg.study.seed
    lo, hi = bootstrap_diff_ci(steered.per_item, baseline.per_item, seed=seed)
    per_letter_val = per_letter(trial)
    test_letters = {"steered": steered.per_letter, "baseline": baseline.per_letter}
    warnings = honesty_warnings(lo, hi, test_letters)
    chance = chance_report(
        worker.cfg.task.objective,
        steered.value,
        baseline.per_item,
        baseline.chance_items,
        seed,
        study.user_attrs.get(CHANCE_BIAS_ATTR),
        worker.objective.bias_cause(),
    )
    warnings += chance.pop("warnings", [])
    extra: dict[str, Any] = {}
    if steered.texts is not None:
        extra["samples"] = replay_samples(worker, plan, test_rows, prepared)
    if steered.counts is not None:  # answers that could not be parsed (scored as wrong)
        extra["unparsed"] = {"steered": steered.counts, "baseline": baseline.counts or {}}
    s_acc, b_acc = steered.per_item_accuracy, baseline.per_item_accuracy
    if s_acc is not None and b_acc is not None:
        a_lo, a_hi = bootstrap_diff_ci(s_acc, b_acc, seed=worker.cfg.study.seed)
        extra["accuracy"] = {
            "steered": steered.accuracy,
            "baseline": baseline.accuracy,
            "ci95": [a_lo, a_hi],
        }
    constraints = steered.constraints or {}
    feasible = meets(constraints)
    if steered.fluency is not None:
        extra["fluency"] = {
            "steered": steered.fluency,
            "baseline": prepared.reference,
            "feasible": feasible,
        }
    if not feasible:
        warnings.append(f"on the test split the winner breaks the constraints {constraints}")
    direction = worker.cfg.task.objective.direction
    extra["steerability"] = steerability(
        steered.per_item,
        baseline.per_item,
        direction,
        steered.item_noise,
        baseline.item_noise,
    )
    instruction = worker.cfg.task.instructed
    if test.prompted_baseline is not None and instruction is not None:
        extra["vs_prompting"] = vs_prompting(
            steered.per_item,
            baseline.per_item,
            test.prompted_baseline.per_item,
            direction,
            seed,
            instruction,
            prompting,
        )
        extra["vs_prompting"]["metrics"] = _compare_all(test.prompted_baseline, baseline, seed)
        extra["steerability"]["prompted"] = list(test.prompted_baseline.per_item)
    val_metrics = values_of(trial)
    val_base = study.user_attrs.get(BASELINE_METRICS_ATTR) or {}
    test_metrics = _compare_all(steered, baseline, seed)
    return {
        "warnings": warnings,
        **chance,
        "validation": {
            "steered": val_metrics.get("score", trial.values[0] if trial.values else None),
            "baseline": val_base.get("score", study.user_attrs.get(BASELINE_VALUE_ATTR)),
            "n": worker.cfg.task.splits.validation,
            "per_letter": per_letter_val,
            "metrics": _compare(val_metrics, val_base, {}, {}, seed),
            "prompted": study.user_attrs.get(PROMPTED_VALUE_ATTR),
            "prompting": prompting,
        },
        "test": {
            "steered": steered.value,
            "baseline": baseline.value,
            "n": steered.n,
            "difference": steered.value - baseline.value,
            "ci95": [lo, hi],
            "per_letter": test_letters,
            "gain_shown": shows_gain((lo, hi), worker.cfg.task.objective.direction),
            "metrics": test_metrics,
            **extra,
        },
    }


def replay_samples(
    worker: Worker, plan: Plan, rows: list[Any], prepared: PreparedSplit, n: int = N_SAMPLES
) -> list[dict[str, Any]]:
    """The first `n` test prompts generated unsteered and steered, one prompt at a time.

    Alone (no padding), so `hpo generate replay=true` and `load_bundle(...).apply(model)` +
    `model.generate` reproduce them token for token: each sample keeps the exact prompt text and
    both continuations' token ids. `correct` (tasks with a gold answer) scores these texts.
    Generation kinds only (the others generate no text).
    """
    cfg, loaded = worker.cfg, worker.loaded
    objective = worker.objective
    assert isinstance(objective, Generation), objective.kind
    assert isinstance(prepared, PreparedPrompts), type(prepared)
    ids = prepared.token_ids[:n]
    stop = cfg.task.objective.stop or None
    budget = cfg.task.objective.max_new_tokens
    plain = complete_each(loaded.model, loaded.tokenizer, ids, budget, stop_strings=stop)
    with steer(loaded.model, loaded.blocks, plan.vectors, plan.application) as handle:
        steered = complete_each(loaded.model, loaded.tokenizer, ids, budget, handle, stop)
    column = cfg.task.columns["prompt"]
    samples = []
    for i, (row, (u_ids, u_text), (s_ids, s_text)) in enumerate(
        zip(rows, plain, steered, strict=False)
    ):
        sample: dict[str, Any] = {
            "prompt": str(row[column]),
            "text": prepared.prompts[i],
            "unsteered": u_text.strip(),
            "steered": s_text.strip(),
            "unsteered_ids": u_ids,
            "steered_ids": s_ids,
        }
        refs = prepared.references
        if i < len(refs) and refs[i] is not None:
            sample["reference"] = refs[i]
            sample["correct"] = {
                "unsteered": objective.scorer(u_text, refs[i]).value,
                "steered": objective.scorer(s_text, refs[i]).value,
            }
        samples.append(sample)
    return samples


def measure_every_position(worker: Worker, plan: Plan, test: TestSplit) -> dict[str, Any]:
    """The winner scored on the test split with the vector at every position (`positions: all`).

    That is what llama.cpp's control vector does, whatever positions the study chose: its
    score, every side metric (KL, fluency) and feasibility, so a GGUF user knows what to expect.
    """
    prepared = test.under(prompting_of(plan))
    plan = dataclasses.replace(plan, application=plan.application.at("all"))
    steered, baseline = worker.score(plan, prepared, split="test"), test.baseline
    seed = worker.cfg.study.seed
    lo, hi = bootstrap_diff_ci(steered.per_item, baseline.per_item, seed=seed)
    constraints = steered.constraints or {}
    out: dict[str, Any] = {
        "positions": "all",
        "steered": steered.value,
        "baseline": baseline.value,
        "n": steered.n,
        "difference": steered.value - baseline.value,
        "ci95": [lo, hi],
        "feasible": meets(constraints),
        "metrics": _compare_all(steered, baseline, seed),
    }
    if steered.fluency is not None:
        out["fluency"] = steered.fluency
    if steered.texts is not None:
        column = worker.cfg.task.columns["prompt"]
        out["samples"] = [
            {"prompt": str(row[column]), "steered": text}
            for row, text in zip(test.rows[:N_SAMPLES], steered.texts, strict=False)
        ]
    return out


def honesty_warnings(
    lo: float, hi: float, per_letter: dict[str, dict[str, float]], tol: float = 0.02
) -> list[str]:
    """Why a user should not trust a gain: inside the noise, or a shifted letter prior."""
    warnings = []
    if lo <= 0.0 <= hi:
        warnings.append(
            f"the test difference's 95% interval [{lo:+.4f}, {hi:+.4f}] contains 0: "
            "the gain may be noise"
        )
    moves = {
        k: per_letter["steered"][k] - per_letter["baseline"].get(k, 0.0)
        for k in per_letter["steered"]
    }
    if any(m > tol for m in moves.values()) and any(m < -tol for m in moves.values()):
        shown = ", ".join(f"{k}: {m:+.3f}" for k, m in moves.items())
        warnings.append(
            f"per-letter scores move in opposite directions ({shown}): the vector shifts the "
            "letter prior rather than the behaviour"
        )
    return warnings


def no_gain_reason(metrics: dict[str, Any], direction: str, trial: int) -> str | None:
    """Why `export.require_gain` ships nothing, in one line (None when the gain is shown).

    The rule: the winner's held-out test difference (steered - unsteered, paired over the same
    items) must have a 95% bootstrap interval wholly on the better side of 0. The validation
    score chose the winner and so overstates it; only the test split can say it is real.
    """
    test, val = metrics["test"], metrics["validation"]
    lo, hi = test["ci95"]
    if shows_gain((lo, hi), direction):
        return None
    side = "above" if direction == "maximize" else "below"
    shown = "n/a" if val["steered"] is None else f"{val['steered']:.4f}"
    base = "n/a" if val["baseline"] is None else f"{val['baseline']:.4f}"
    return (
        f"the winner (trial {trial}) shows no gain over the unsteered model: validation "
        f"{base} -> {shown}, held-out test (n={test['n']}) {test['baseline']:.4f} -> "
        f"{test['steered']:.4f}, difference {test['difference']:+.4f} "
        f"[95% CI {lo:+.4f}, {hi:+.4f}], not wholly {side} 0; no bundle written "
        "(export.require_gain=false ships it anyway)"
    )
