"""One trial: suggest params, build the vector from the cache, steer, score the validation split.

The hot path is deliberately short (build vector -> hook -> score) and everything else a trial
needs (model, tokenized validation split, activation cache) is loaded once per worker.
"""

from __future__ import annotations

import logging
import math
import socket
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import optuna
import torch

from hpo.core.chance import CHANCE_ATTR, CHANCE_BIAS_ATTR, below_chance, format_bias_message
from hpo.core.errors import TrialFailure, UserError
from hpo.core.objective_metrics import SCORE, metric_values, pick_values, study_metrics
from hpo.core.placement import placement
from hpo.core.prompting import INSTRUCTION, NONE
from hpo.core.record import (
    BASELINE_ATTR,
    BASELINE_METRICS_ATTR,
    BASELINE_VALUE_ATTR,
    FEASIBLE_ATTR,
    METRICS_ATTR,
    PROMPTED_ATTR,
    PROMPTED_FEASIBLE_ATTR,
    PROMPTED_METRICS_ATTR,
    PROMPTED_VALUE_ATTR,
    PROMPTING_ATTR,
    format_params,
    record_constraints,
)
from hpo.run.worker import Worker
from objectives import ScoreResult
from search_spaces import PROMPTING_PARAM, suggest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrialOutcome:
    """What a finished trial hands to the publisher (dashboard note, best-trial artifacts)."""

    trial: optuna.Trial
    vectors: dict[int, torch.Tensor]
    result: ScoreResult
    is_baseline: bool
    feasible: bool
    # The validation prompts and the baseline's per-item scores, for per-item artifacts.
    prompts: list[str] | None
    baseline_items: list[float] | None


# Called after every completed trial; the CLI hands in `hpo.monitor.Publisher`. The trial loop
# itself imports no monitoring, dashboard or plotting code.
Publish = Callable[[TrialOutcome], None]


def feasible_now(result: ScoreResult) -> bool:
    """Whether a scored result meets its constraints (all values <= 0)."""
    return all(v <= 0 for v in result.extras.get("constraints", {}).values())


class SteeringObjective:
    """The callable handed to `study.optimize`."""

    def __init__(self, worker: Worker, publish: Publish | None = None) -> None:
        self.worker = worker
        self.publish = publish
        self.host = socket.gethostname()
        self.metrics = study_metrics(worker.cfg.task.objective)
        self.multi = len(self.metrics) > 1
        # Intermediate values are the score's: pruning needs a single objective that is the score.
        self.prunable = not self.multi and self.metrics[0].name == SCORE
        self._warned_no_items = False

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        worker = self.worker
        for key, value in placement(self.host).items():
            trial.set_user_attr(key, value)
        trial.set_user_attr("device", str(worker.loaded.device))
        try:
            return self._run(trial)
        except TrialFailure as e:
            trial.set_user_attr("fail_reason", str(e))
            log.warning("trial %d failed: %s", trial.number, e)
            raise

    def _reporter(self, trial: optuna.Trial, is_baseline: bool) -> Any:
        """The per-batch callback: running means for the median pruner, items for Wilcoxon."""
        per_item = isinstance(trial.study.pruner, optuna.pruners.WilcoxonPruner)

        def report(step: int, value: float, items: Mapping[int, float] | None = None) -> None:
            if not self.prunable:
                return
            if per_item:
                if items is None:
                    if not self._warned_no_items:
                        log.warning(
                            "pruner=wilcoxon needs per-item reports, objective kind %r gives "
                            "none: no pruning",
                            self.worker.objective.kind,
                        )
                        self._warned_no_items = True
                    return
                for item, item_value in items.items():
                    trial.report(item_value, item)  # step = the item's id, the same every trial
            else:
                trial.report(value, step)
            if not is_baseline and trial.should_prune():
                raise optuna.TrialPruned(f"pruned at batch {step} with running value {value:.4f}")

        return report

    def _check_chance(self, study: optuna.Study, result: ScoreResult) -> None:
        """Record the chance level at study start and report a baseline below it."""
        if "chance" not in result.extras:
            return
        study.set_user_attr(CHANCE_ATTR, float(result.extras["chance"]))
        cfg = self.worker.cfg
        below = below_chance(result.per_item, result.extras["chance_items"], cfg.study.seed)
        if below is not None:
            objective = cfg.task.objective
            chance = result.extras["chance"]
            message = format_bias_message(
                objective.kind, result.value, chance, below, objective.loglik
            )
            study.set_user_attr(CHANCE_BIAS_ATTR, message)
            log.warning("validation: %s", message)

    def _run(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        worker = self.worker
        is_prompted = bool(trial.user_attrs.get(PROMPTED_ATTR, False))
        # Both reference trials are unsteered (alpha = 0); the prompted one has the instruction.
        is_baseline = is_prompted or bool(trial.user_attrs.get(BASELINE_ATTR, False))
        fixed = (INSTRUCTION if is_prompted else NONE) if is_baseline else None
        with warnings.catch_warnings():
            # The baseline's alpha = 0 may lie outside the alpha range on purpose.
            warnings.filterwarnings("ignore", message="Fixed parameter", category=UserWarning)
            params = suggest(trial, worker.cfg.search_space, baseline=is_baseline, prompting=fixed)
        prompting = str(params.get(PROMPTING_PARAM, NONE))
        trial.set_user_attr(PROMPTING_ATTR, prompting)
        prepared = worker.validation_under(prompting)  # the first prompted trial prepares it
        started = time.perf_counter()
        plan = worker.plan(trial.params, resolved=params)
        vectors = plan.vectors
        built = time.perf_counter()

        try:
            result = worker.score(plan, prepared, self._reporter(trial, is_baseline))
        except optuna.TrialPruned as pruned:
            log.info("trial %d: %s -> %s", trial.number, format_params(params), pruned)
            raise
        scored = time.perf_counter()
        trial.set_user_attr("time_vector_s", round(built - started, 6))
        trial.set_user_attr("time_score_s", round(scored - built, 4))
        trial.set_user_attr("vector_norm", round(float(next(iter(vectors.values())).norm()), 4))
        trial.set_user_attr("layers", sorted(vectors))
        for name in worker.cfg.search_space.derived:
            if name in params:
                trial.set_user_attr(f"derived.{name}", params[name])
        for name, value in worker.builder.info.items():
            trial.set_user_attr(name, round(value, 6))
        for letter, value in result.per_letter.items():
            trial.set_user_attr(f"letter_{letter}", round(value, 6))
        for name, value in result.extras.get("fluency", {}).items():
            trial.set_user_attr(name, round(value, 4))
        for name, count in result.extras.get("counts", {}).items():
            trial.set_user_attr(
                name, int(count)
            )  # e.g. n_unparsed: answers that could not be read
        if "accuracy" in result.extras:
            trial.set_user_attr("accuracy", round(float(result.extras["accuracy"]), 6))
        if "chance" in result.extras:  # choice kinds: the score of uniform answers
            trial.set_user_attr("chance", round(float(result.extras["chance"]), 6))
        if "constraints" in result.extras:
            # Optuna's constrained optimization: samplers favour feasible trials (all <= 0).
            record_constraints(trial, result.extras["constraints"])
            ok = all(v <= 0 for v in result.extras["constraints"].values())
            trial.set_user_attr(FEASIBLE_ATTR, ok)
        named = metric_values(result.value, result.metrics)
        try:
            values = pick_values(named, self.metrics, worker.objective.kind)
        except UserError as e:
            raise TrialFailure(str(e)) from e
        bad = {
            m.name: v for m, v in zip(self.metrics, values, strict=True) if not math.isfinite(v)
        }
        if not math.isfinite(result.value):
            raise TrialFailure(f"objective is {result.value} (non-finite score)")
        if bad:
            raise TrialFailure(f"objective metrics are non-finite: {bad}")
        trial.set_user_attr(METRICS_ATTR, named)  # full precision: export rules compare them
        study = trial.study
        if is_prompted:
            study.set_user_attr(PROMPTED_VALUE_ATTR, values[0])
            study.set_user_attr(PROMPTED_METRICS_ATTR, named)
            if "constraints" in result.extras:
                study.set_user_attr(PROMPTED_FEASIBLE_ATTR, feasible_now(result))
        elif is_baseline:
            study.set_user_attr(BASELINE_VALUE_ATTR, values[0])
            study.set_user_attr(BASELINE_METRICS_ATTR, named)
            self._check_chance(study, result)
        base_metrics = study.user_attrs.get(BASELINE_METRICS_ATTR) or {}
        for name, value in named.items():
            if name != SCORE and name in base_metrics:
                trial.set_user_attr(f"delta_{name}", round(value - base_metrics[name], 6))
        baseline = study.user_attrs.get(BASELINE_VALUE_ATTR)
        delta = None if baseline is None else values[0] - baseline
        if delta is not None:
            trial.set_user_attr("delta_vs_baseline", round(delta, 6))
        prompted = study.user_attrs.get(PROMPTED_VALUE_ATTR)
        if prompted is not None and not is_prompted:
            trial.set_user_attr("delta_vs_prompted", round(values[0] - prompted, 6))
        feasible = trial.user_attrs.get(FEASIBLE_ATTR)
        if is_baseline and not is_prompted:
            worker.baseline_items = list(result.per_item)
        if self.publish is not None:
            self.publish(
                TrialOutcome(
                    trial,
                    vectors,
                    result,
                    is_baseline,
                    feasible is not False,
                    worker.prompts,
                    worker.baseline_items,
                )
            )
        side = " ".join(f"{k}={v:.4g}" for k, v in named.items() if k != SCORE)
        tag = " (prompted baseline)" if is_prompted else " (baseline)" if is_baseline else ""
        if prompted is not None and not is_prompted:
            side += f"{' ' if side else ''}vs prompted {values[0] - prompted:+.4f}"
        log.info(
            "trial %d%s: %s -> %s%s%s%s in %.2fs (vector %.1f ms)",
            trial.number,
            tag,
            format_params(params),
            " ".join(f"{m.name}={v:.4f}" for m, v in zip(self.metrics, values, strict=True)),
            f" [{side}]" if side else "",
            "" if delta is None else f" (delta {delta:+.4f})",
            "" if feasible is None else ("" if feasible else " INFEASIBLE"),
            scored - started,
            (built - started) * 1000,
        )
        return tuple(values) if self.multi else values[0]
