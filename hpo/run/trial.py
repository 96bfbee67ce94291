"""One trial: suggest params, build the vector from the cache, steer, score the validation split.

The hot path is deliberately short (build vector -> hook -> score) and everything else a trial
needs (model, tokenized validation split, activation cache) is loaded once per worker. A trial
runs in three phases that a runner scoring several trials in one pass can also call apart:
`TrialRunner.begin` (params -> plan), `Worker.score` and `TrialRunner.finish` (the record and
the values Optuna gets).
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
from hpo.core.config import SearchSpaceConfig
from hpo.core.errors import TrialFailure, UserError
from hpo.core.objective_metrics import SCORE, metric_values, pick_values, study_metrics
from hpo.core.placement import placement
from hpo.core.prompting import INSTRUCTION, NONE
from hpo.core.record import (
    BASELINE_ATTR,
    FEASIBLE_ATTR,
    PROMPTED_ATTR,
    Deltas,
    TrialRecord,
    format_params,
    record_deltas,
    record_failure,
    record_metrics,
    record_placement,
    record_prompting,
    record_reference,
)
from hpo.run.planner import Plan
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


@dataclass(frozen=True)
class TrialStart:
    """A trial up to its scoring, as `TrialRunner.begin` resolved and built it.

    Attributes:
        params: the trial's params, resolved (fixed dimensions and derived values included).
        prompting: the prompt it is scored with (`hpo.core.prompting`).
        prepared: the validation split prepared under `prompting`.
        plan: its steering.
        is_baseline: a reference trial (unsteered, alpha = 0), prompted or not.
        is_prompted: the prompted baseline (the unsteered model asked in words).
        started: `time.perf_counter()` when the plan's build began.
        built: `time.perf_counter()` when it was built.
    """

    params: dict[str, Any]
    prompting: str
    prepared: Any
    plan: Plan
    is_baseline: bool
    is_prompted: bool
    started: float
    built: float


@dataclass(frozen=True)
class Timings:
    """Where a trial's time went: building its steering, and scoring the validation split."""

    vector_s: float
    score_s: float


class TrialRunner:
    """Runs trials: the callable handed to `study.optimize`.

    `__call__` is `begin` -> `Worker.score` -> `finish`, which a batched runner can call apart.
    `space` is the search space trials sample (the worker's own unless layer selection narrowed
    it).
    """

    def __init__(
        self,
        worker: Worker,
        publish: Publish | None = None,
        space: SearchSpaceConfig | None = None,
    ) -> None:
        self.worker = worker
        self.publish = publish
        self.space = worker.cfg.search_space if space is None else space
        self.host = socket.gethostname()
        self.metrics = study_metrics(worker.cfg.task.objective)
        self.multi = len(self.metrics) > 1
        # Intermediate values are the score's: pruning needs a single objective that is the score.
        self.prunable = not self.multi and self.metrics[0].name == SCORE
        self._warned_no_items = False
        # The unsteered baseline's per-item scores once this runner ran it, for artifacts.
        self.baseline_items: list[float] | None = None

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        try:
            start = self.begin(trial)
            report = self.reporter(trial, start.is_baseline)
            try:
                result = self.worker.score(start.plan, start.prepared, report)
            except optuna.TrialPruned as pruned:
                log.info("trial %d: %s -> %s", trial.number, format_params(start.params), pruned)
                raise
            timings = Timings(start.built - start.started, time.perf_counter() - start.built)
            return self.finish(trial, start, result, timings)
        except TrialFailure as e:
            record_failure(trial, str(e))
            log.warning("trial %d failed: %s", trial.number, e)
            raise

    def begin(self, trial: optuna.Trial) -> TrialStart:
        """Record where the trial runs, suggest its params, record its prompting, and build
        its plan."""
        worker = self.worker
        record_placement(trial, placement(self.host), str(worker.loaded.device))
        is_prompted = bool(trial.user_attrs.get(PROMPTED_ATTR, False))
        # Both reference trials are unsteered (alpha = 0); the prompted one has the instruction.
        is_baseline = is_prompted or bool(trial.user_attrs.get(BASELINE_ATTR, False))
        fixed = (INSTRUCTION if is_prompted else NONE) if is_baseline else None
        with warnings.catch_warnings():
            # The baseline's alpha = 0 may lie outside the alpha range on purpose.
            warnings.filterwarnings("ignore", message="Fixed parameter", category=UserWarning)
            params = suggest(trial, self.space, baseline=is_baseline, prompting=fixed)
        prompting = str(params.get(PROMPTING_PARAM, NONE))
        record_prompting(trial, prompting)
        prepared = worker.validation_under(prompting)  # the first prompted trial prepares it
        started = time.perf_counter()
        plan = worker.plan(trial.params, resolved=params)
        built = time.perf_counter()
        return TrialStart(
            params, prompting, prepared, plan, is_baseline, is_prompted, started, built
        )

    def reporter(self, trial: optuna.Trial, is_baseline: bool) -> Any:
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

    def finish(
        self, trial: optuna.Trial, start: TrialStart, result: ScoreResult, timings: Timings
    ) -> float | tuple[float, ...]:
        """Record a scored trial (its attributes; a reference's study attributes), publish it
        and return its values for Optuna.

        Raises:
            TrialFailure: a value is non-finite, or a metric the study optimizes is missing.
        """
        vectors = start.plan.vectors
        TrialRecord(
            time_vector_s=timings.vector_s,
            time_score_s=timings.score_s,
            vector_norm=float(next(iter(vectors.values())).norm()),
            layers=list(vectors),
            derived={n: start.params[n] for n in self.space.derived if n in start.params},
            info=start.plan.info,
            per_letter=result.per_letter,
            fluency=result.fluency or {},
            counts=result.counts or {},
            accuracy=result.accuracy,
            chance=result.chance,
            constraints=result.constraints,
        ).write(trial)
        named = metric_values(result.value, result.metrics)
        values = self._values(named, result.value)
        record_metrics(trial, named)
        study = trial.study
        if start.is_prompted:
            record_reference(study, True, values[0], named, result.constraints)
        elif start.is_baseline:
            record_reference(study, False, values[0], named)
            self._check_chance(study, result)
        deltas = record_deltas(trial, named, values[0], start.is_prompted)
        feasible = trial.user_attrs.get(FEASIBLE_ATTR)
        if start.is_baseline and not start.is_prompted:
            self.baseline_items = list(result.per_item)
        if self.publish is not None:
            self.publish(
                TrialOutcome(
                    trial,
                    vectors,
                    result,
                    start.is_baseline,
                    feasible is not False,
                    self.worker.prompts,
                    self.baseline_items,
                )
            )
        self._log(trial, start, named, values, deltas, feasible, timings)
        return tuple(values) if self.multi else values[0]

    def _values(self, named: dict[str, float], value: float) -> list[float]:
        """The values the study optimizes, all finite (else the trial fails)."""
        try:
            values = pick_values(named, self.metrics, self.worker.objective.kind)
        except UserError as e:
            raise TrialFailure(str(e)) from e
        bad = {
            m.name: v for m, v in zip(self.metrics, values, strict=True) if not math.isfinite(v)
        }
        if not math.isfinite(value):
            raise TrialFailure(f"objective is {value} (non-finite score)")
        if bad:
            raise TrialFailure(f"objective metrics are non-finite: {bad}")
        return values

    def _check_chance(self, study: optuna.Study, result: ScoreResult) -> None:
        """Record the chance level at study start and report a baseline below it."""
        chance, items = result.chance, result.chance_items
        if chance is None or items is None:
            return
        study.set_user_attr(CHANCE_ATTR, float(chance))
        below = below_chance(result.per_item, items, self.worker.cfg.study.seed)
        if below is not None:
            cause = self.worker.objective.bias_cause()
            message = format_bias_message(result.value, chance, below, cause)
            study.set_user_attr(CHANCE_BIAS_ATTR, message)
            log.warning("validation: %s", message)

    def _log(
        self,
        trial: optuna.Trial,
        start: TrialStart,
        named: dict[str, float],
        values: list[float],
        deltas: Deltas,
        feasible: bool | None,
        timings: Timings,
    ) -> None:
        """The trial's one log line: params -> values, side metrics, deltas and timings."""
        side = " ".join(f"{k}={v:.4g}" for k, v in named.items() if k != SCORE)
        if deltas.prompted is not None:
            side += f"{' ' if side else ''}vs prompted {deltas.prompted:+.4f}"
        tag = (
            " (prompted baseline)"
            if start.is_prompted
            else " (baseline)"
            if start.is_baseline
            else ""
        )
        log.info(
            "trial %d%s: %s -> %s%s%s%s in %.2fs (vector %.1f ms)",
            trial.number,
            tag,
            format_params(start.params),
            " ".join(f"{m.name}={v:.4f}" for m, v in zip(self.metrics, values, strict=True)),
            f" [{side}]" if side else "",
            "" if deltas.baseline is None else f" (delta {deltas.baseline:+.4f})",
            "" if feasible is None else ("" if feasible else " INFEASIBLE"),
            timings.vector_s + timings.score_s,
            timings.vector_s * 1000,
        )
