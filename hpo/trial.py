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
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
import torch

from hpo.activations import ActivationCache
from hpo.config import RunConfig
from hpo.errors import TrialFailure, UserError
from hpo.generation import chat_prompt
from hpo.methods import VectorBuilder
from hpo.metrics import SCORE, metric_values, pick_values, study_metrics
from hpo.models import LoadedModel
from hpo.residual import ResidualCache, SteeredAbove
from hpo.steering import steer
from hpo.tasks import kl_prompts
from objectives import Objective, ScoreResult
from objectives.kl import KLReference, build_reference, kl_per_prompt
from search_spaces import layer_scales, resolve, steered_layers, suggest

log = logging.getLogger(__name__)

BASELINE_ATTR = "baseline"
BASELINE_VALUE_ATTR = "baseline_value"
# Every named metric of the baseline trial (study attr) / of a trial (trial attr), as a dict.
BASELINE_METRICS_ATTR = "baseline_metrics"
METRICS_ATTR = "metrics"
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
    finetuned: ActivationCache | None = None
    # Block outputs reused by `positions: all` trials of forward-only objectives (None: off).
    residual: ResidualCache | None = field(default=None)
    # The validation split's prompt texts and, once this worker ran it, the baseline's per-item
    # scores: what the best trials' artifacts (per-item CSV and plot) show beside their own.
    prompts: list[str] | None = None
    baseline_items: list[float] | None = None
    # Unsteered KL reference per split ("validation", "test"), built on first use.
    kl: dict[str, KLReference] = field(default_factory=dict)
    builder: VectorBuilder = field(init=False)

    def __post_init__(self) -> None:
        self.builder = VectorBuilder(self.cache, self.finetuned, self.cfg.study.seed)
        if self.residual is None and self.objective.kind in RESIDUAL_KINDS:
            self.residual = ResidualCache(self.loaded)

    def resolve(self, params: dict[str, Any]) -> dict[str, Any]:
        """A trial's params completed with fixed dimensions and derived params."""
        return resolve(params, self.cfg.search_space)

    def vectors(self, params: dict[str, Any]) -> dict[int, torch.Tensor]:
        """The vector(s) added at alpha = 1 for a trial's params, one per steered layer."""
        params = self.resolve(params)
        return self.builder.vectors(
            params["method"],
            params["aggregation"],
            steered_layers(params),
            self.cfg.search_space.alpha_scale,
        )

    def steering(self, params: dict[str, Any]) -> dict[str, Any]:
        """How a trial's vectors are applied: `steer`'s alpha, positions, mode and scales."""
        params = self.resolve(params)
        return {
            "alpha": params["alpha"],
            "positions": params["positions"],
            "mode": params["mode"],
            "scales": layer_scales(params, self.cfg.search_space),
        }

    def prepare(self, rows: list[Any]) -> Any:
        """Tokenize a split once; cache its unsteered prompt prefix when the space can reuse it."""
        prepared = self.objective.prepare(rows)
        prefix = bool(PREFIX_POSITIONS & set(self.cfg.search_space.positions))
        self.objective.precompute(self.loaded.model, prepared, prefix)
        return prepared

    def kl_reference(self, split: str) -> KLReference | None:
        """The unsteered KL reference of a split's neutral prompts (None when KL is off).

        Must be called outside any steering context: it runs the unsteered model.
        """
        kl_cfg = self.cfg.task.objective.kl
        if not kl_cfg.enabled:
            return None
        if split not in self.kl:
            tok = self.loaded.tokenizer
            ids = [
                tok.encode(chat_prompt(tok, text, self.cfg.task.chat_template))
                for text in kl_prompts(kl_cfg, split)
            ]
            self.kl[split] = build_reference(
                self.loaded.model,
                tok,
                ids,
                kl_cfg.max_new_tokens,
                self.cfg.task.objective.batch_size,
            )
        return self.kl[split]

    def score(
        self,
        params: dict[str, Any],
        prepared: Any,
        report: Any = None,
        vectors: dict[int, torch.Tensor] | None = None,
        split: str = "validation",
    ) -> ScoreResult:
        """Score a prepared split with the params' steering applied, plus the side metrics.

        `split` picks the KL prompts (validation or the disjoint held-out test set).
        """
        vectors = self.vectors(params) if vectors is None else vectors
        how = self.steering(params)
        loaded = self.loaded
        reuse = how["positions"] in PREFIX_POSITIONS and getattr(prepared, "prefix", None)
        kl_ref = self.kl_reference(split)
        residual = self.residual
        if residual is not None and residual.applies(how, vectors):
            [(layer, vector)] = vectors.items()
            alpha = how["alpha"] * how["scales"].get(layer, 1.0)  # as `steer` computes it
            stand_in = SteeredAbove(residual, layer, vector, alpha)
            result = self.objective.score(stand_in, prepared, report, False)
            if kl_ref is not None:
                with steer(loaded.model, loaded.blocks, vectors, **how) as handle:
                    self._add_kl(result, kl_ref, handle)
        else:
            with steer(loaded.model, loaded.blocks, vectors, **how) as handle:
                result = self.objective.score(loaded.model, prepared, report, bool(reuse))
                if kl_ref is not None:
                    self._add_kl(result, kl_ref, handle)
        constraints: dict[str, float] = {}
        if getattr(self.objective, "constrained", False):
            # Unsteered now: fluency is judged by the model we started from.
            measured = self.objective.fluency(loaded.model, prepared, result)  # type: ignore[attr-defined]
            result.extras["fluency"] = measured
            result.metrics.update(measured)
            constraints.update(self.objective.constraints(prepared, measured))  # type: ignore[attr-defined]
        kl_max = self.cfg.task.objective.kl.max
        if kl_max is not None and "kl" in result.metrics:
            constraints["kl"] = result.metrics["kl"] - kl_max
        if constraints:
            result.extras["constraints"] = constraints
        return result

    def _add_kl(self, result: ScoreResult, kl_ref: KLReference, handle: Any) -> None:
        items = kl_per_prompt(self.loaded.model, kl_ref, handle)
        result.metrics["kl"] = sum(items) / len(items)
        result.metric_items["kl"] = items

    def baseline_result(self, prepared: Any, split: str) -> ScoreResult:
        """The unsteered result of a prepared split, side metrics included (KL is 0 by
        definition: the unsteered model against itself)."""
        baseline = getattr(prepared, "baseline", None)  # generation keeps its unsteered run
        if baseline is None:
            reuse = getattr(prepared, "prefix", None) is not None
            baseline = self.objective.score(self.loaded.model, prepared, reuse_prefix=reuse)
        kl_ref = self.kl_reference(split)
        if kl_ref is not None and "kl" not in baseline.metrics:
            baseline.metrics["kl"] = 0.0
            baseline.metric_items["kl"] = [0.0] * kl_ref.n_prompts
        return baseline


class SteeringObjective:
    """The callable handed to `study.optimize`."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.host = socket.gethostname()
        self.store: Any = None
        if worker.cfg.artifacts_dir:
            from hpo.artifacts import artifact_store

            self.store = artifact_store(worker.cfg.artifacts_dir)
        self.metrics = study_metrics(worker.cfg.task.objective)
        self.multi = len(self.metrics) > 1
        # Intermediate values are the score's: pruning needs a single objective that is the score.
        self.prunable = not self.multi and self.metrics[0].name == SCORE
        self._warned_no_items = False

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        worker = self.worker
        trial.set_user_attr("worker", f"{self.host}:{os.getpid()}")
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

    def _run(self, trial: optuna.Trial) -> float | tuple[float, ...]:
        worker = self.worker
        is_baseline = bool(trial.user_attrs.get(BASELINE_ATTR, False))
        with warnings.catch_warnings():
            # The baseline's alpha = 0 may lie outside the alpha range on purpose.
            warnings.filterwarnings("ignore", message="Fixed parameter", category=UserWarning)
            params = suggest(trial, worker.cfg.search_space, baseline=is_baseline)
        started = time.perf_counter()
        vectors = worker.vectors(params)
        built = time.perf_counter()

        try:
            result = worker.score(
                params, worker.validation, self._reporter(trial, is_baseline), vectors
            )
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
        if "constraints" in result.extras:
            # Optuna's constrained optimization: samplers favour feasible trials (all <= 0).
            for name, value in result.extras["constraints"].items():
                trial.set_constraint(name, float(value))
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
        if is_baseline:
            study.set_user_attr(BASELINE_VALUE_ATTR, values[0])
            study.set_user_attr(BASELINE_METRICS_ATTR, named)
        base_metrics = study.user_attrs.get(BASELINE_METRICS_ATTR) or {}
        for name, value in named.items():
            if name != SCORE and name in base_metrics:
                trial.set_user_attr(f"delta_{name}", round(value - base_metrics[name], 6))
        baseline = study.user_attrs.get(BASELINE_VALUE_ATTR)
        delta = None if baseline is None else values[0] - baseline
        if delta is not None:
            trial.set_user_attr("delta_vs_baseline", round(delta, 6))
        feasible = trial.user_attrs.get(FEASIBLE_ATTR)
        if is_baseline:
            worker.baseline_items = list(result.per_item)
        self._publish(trial, vectors, result, is_baseline, feasible is not False)
        side = " ".join(f"{k}={v:.4g}" for k, v in named.items() if k != SCORE)
        log.info(
            "trial %d: %s -> %s%s%s%s in %.2fs (vector %.1f ms)",
            trial.number,
            format_params(params),
            " ".join(f"{m.name}={v:.4f}" for m, v in zip(self.metrics, values, strict=True)),
            f" [{side}]" if side else "",
            "" if delta is None else f" (delta {delta:+.4f})",
            "" if feasible is None else ("" if feasible else " INFEASIBLE"),
            scored - started,
            (built - started) * 1000,
        )
        return tuple(values) if self.multi else values[0]

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
