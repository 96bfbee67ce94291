"""One trial: suggest params, build the vector from the cache, steer, score the validation split.

The hot path is deliberately short (build vector -> hook -> score) and everything else a trial
needs (model, tokenized validation split, activation cache) is loaded once per worker.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import optuna
import torch

from hpo.activations import ActivationCache
from hpo.config import RunConfig
from hpo.errors import TrialFailure
from hpo.methods import build_vector
from hpo.models import LoadedModel
from hpo.residual import ResidualCache, SteeredAbove
from hpo.steering import steer
from objectives import Objective, ScoreResult
from search_spaces import suggest

log = logging.getLogger(__name__)

BASELINE_ATTR = "baseline"
BASELINE_VALUE_ATTR = "baseline_value"
FEASIBLE_ATTR = "feasible"
# Positions whose steering starts at the prompt's last token: the prefix before it is shared.
PREFIX_POSITIONS = {"prompt_end_onward"}
# Objectives that only call the model forward on a batch (no generate): `hpo.residual` applies.
RESIDUAL_KINDS = {"choice_probability"}


@dataclass
class Worker:
    """Everything loaded once per worker and reused by every trial."""

    cfg: RunConfig
    loaded: LoadedModel
    objective: Objective
    cache: ActivationCache
    validation: Any
    # Block outputs reused by `positions: all` trials of forward-only objectives (None: off).
    residual: ResidualCache | None = field(default=None)
    # The validation split's prompt texts and, once this worker ran it, the baseline's per-item
    # scores: what the best trials' artifacts (per-item CSV and plot) show beside their own.
    prompts: list[str] | None = None
    baseline_items: list[float] | None = None

    def __post_init__(self) -> None:
        if self.residual is None and self.objective.kind in RESIDUAL_KINDS:
            self.residual = ResidualCache(self.loaded)

    def vectors(self, params: dict[str, Any]) -> dict[int, torch.Tensor]:
        """The vector(s) added at alpha = 1 for a trial's params."""
        layer = int(params["layer"])
        vector = build_vector(
            self.cache,
            params["method"],
            params["aggregation"],
            layer,
            self.cfg.search_space.alpha_scale,
        )
        return {layer: vector}

    def prepare(self, rows: list[Any]) -> Any:
        """Tokenize a split once; cache its unsteered prompt prefix when the space can reuse it."""
        prepared = self.objective.prepare(rows)
        prefix = bool(PREFIX_POSITIONS & set(self.cfg.search_space.positions))
        self.objective.precompute(self.loaded.model, prepared, prefix)
        return prepared

    def score(
        self,
        params: dict[str, Any],
        prepared: Any,
        report: Any = None,
        vectors: dict[int, torch.Tensor] | None = None,
    ) -> ScoreResult:
        """Score a prepared split with the params' steering applied."""
        vectors = self.vectors(params) if vectors is None else vectors
        loaded = self.loaded
        reuse = params["positions"] in PREFIX_POSITIONS and getattr(prepared, "prefix", None)
        residual = self.residual
        if residual is not None and residual.applies(params, vectors):
            [(layer, vector)] = vectors.items()
            stand_in = SteeredAbove(residual, layer, vector, params["alpha"])
            return self.objective.score(stand_in, prepared, report, False)
        with steer(loaded.model, loaded.blocks, vectors, params["alpha"], params["positions"]):
            result = self.objective.score(loaded.model, prepared, report, bool(reuse))
        if getattr(self.objective, "constrained", False):
            # Unsteered now: fluency is judged by the model we started from.
            measured = self.objective.fluency(loaded.model, prepared, result)  # type: ignore[attr-defined]
            result.extras["fluency"] = measured
            result.extras["constraints"] = self.objective.constraints(prepared, measured)  # type: ignore[attr-defined]
        return result


class SteeringObjective:
    """The callable handed to `study.optimize`."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.host = socket.gethostname()
        self.store: Any = None
        if worker.cfg.artifacts_dir:
            from hpo.artifacts import artifact_store

            self.store = artifact_store(worker.cfg.artifacts_dir)

    def __call__(self, trial: optuna.Trial) -> float:
        worker = self.worker
        trial.set_user_attr("worker", f"{self.host}:{os.getpid()}")
        trial.set_user_attr("device", str(worker.loaded.device))
        try:
            return self._run(trial)
        except TrialFailure as e:
            trial.set_user_attr("fail_reason", str(e))
            log.warning("trial %d failed: %s", trial.number, e)
            raise

    def _run(self, trial: optuna.Trial) -> float:
        worker = self.worker
        is_baseline = bool(trial.user_attrs.get(BASELINE_ATTR, False))
        with warnings.catch_warnings():
            # The baseline's alpha = 0 may lie outside the alpha range on purpose.
            warnings.filterwarnings("ignore", message="Fixed parameter", category=UserWarning)
            params = suggest(trial, worker.cfg.search_space)
        started = time.perf_counter()
        vectors = worker.vectors(params)
        built = time.perf_counter()

        def report(step: int, value: float) -> None:
            trial.report(value, step)
            if not is_baseline and trial.should_prune():
                raise optuna.TrialPruned(f"pruned at batch {step} with running value {value:.4f}")

        try:
            result = worker.score(params, worker.validation, report, vectors)
        except optuna.TrialPruned as pruned:
            log.info("trial %d: %s -> %s", trial.number, format_params(params), pruned)
            raise
        scored = time.perf_counter()
        trial.set_user_attr("time_vector_s", round(built - started, 6))
        trial.set_user_attr("time_score_s", round(scored - built, 4))
        trial.set_user_attr("vector_norm", round(float(next(iter(vectors.values())).norm()), 4))
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
        if "constraints" in result.extras:
            # Optuna's constrained optimization: samplers favour feasible trials (all <= 0).
            for name, value in result.extras["constraints"].items():
                trial.set_constraint(name, float(value))
            ok = all(v <= 0 for v in result.extras["constraints"].values())
            trial.set_user_attr(FEASIBLE_ATTR, ok)
        if not math.isfinite(result.value):
            raise TrialFailure(f"objective is {result.value} (non-finite score)")
        study = trial.study
        if is_baseline:
            study.set_user_attr(BASELINE_VALUE_ATTR, result.value)
        baseline = study.user_attrs.get(BASELINE_VALUE_ATTR)
        delta = None if baseline is None else result.value - baseline
        if delta is not None:
            trial.set_user_attr("delta_vs_baseline", round(delta, 6))
        feasible = trial.user_attrs.get(FEASIBLE_ATTR)
        if is_baseline:
            worker.baseline_items = list(result.per_item)
        self._publish(trial, vectors, result, is_baseline, feasible is not False)
        log.info(
            "trial %d: %s -> %.4f%s%s in %.2fs (vector %.1f ms)",
            trial.number,
            format_params(params),
            result.value,
            "" if delta is None else f" (delta {delta:+.4f})",
            "" if feasible is None else ("" if feasible else " INFEASIBLE"),
            scored - started,
            (built - started) * 1000,
        )
        return result.value

    def _publish(
        self,
        trial: optuna.Trial,
        vectors: dict[int, torch.Tensor],
        result: ScoreResult,
        is_baseline: bool,
        feasible: bool,
    ) -> None:
        """For the dashboard: a new best uploads its artifacts; the study note is refreshed."""
        from hpo.artifacts import is_best_so_far, upload_best
        from hpo.note import refresh_note
        from hpo.report import metric_label

        study = trial.study
        if len(study.directions) != 1:
            return
        best = None
        if not is_baseline and feasible and is_best_so_far(study, trial.number, result.value):
            best = {"number": trial.number, "value": result.value, "params": trial.params}
            if self.store is not None:
                objective = self.worker.cfg.task.objective
                try:
                    upload_best(
                        self.store,
                        trial,
                        vectors,
                        result,
                        self.worker.prompts,
                        self.worker.baseline_items,
                        metric_label(objective.kind, objective.scorer),
                    )
                except (OSError, ValueError, RuntimeError) as e:
                    log.warning("trial %d: artifacts not uploaded: %s", trial.number, e)
        if is_baseline or best is not None:
            refresh_note(study, best)


def format_params(params: dict[str, Any]) -> str:
    """`layer=12 alpha=0.430 ...`: params as one short line for logs and tables."""
    return " ".join(
        f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )
