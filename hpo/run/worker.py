"""The worker: everything loaded once per process (model, objective, activation cache,
prepared validation split, the planner) and the steered scoring every trial, export and replay
share."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from hpo.core.config import RunConfig
from hpo.core.errors import UserError
from hpo.core.positions import positions_named
from hpo.core.prompting import NONE
from hpo.model.decoding import chat_prompt
from hpo.model.loading import LoadedModel
from hpo.run.planner import Plan, Planner
from hpo.run.tasks import kl_prompts
from hpo.steering.activations import ActivationCache
from hpo.steering.application import Application
from hpo.steering.hooks import steer, steer_groups
from hpo.steering.residual import ResidualCache, SteeredAbove
from objectives import (
    ConstrainedObjective,
    Objective,
    PreparedSplit,
    ScoreResult,
    make_objective,
)
from objectives.kl import KLReference, build_reference, kl_per_prompt, kl_per_prompt_groups


@dataclass
class Worker:
    """Everything loaded once per worker and reused by every trial.

    Attributes:
        cfg: the run's config.
        loaded: the steered model.
        objective: the task's objective (prompts rendered under prompting `none`).
        cache: the steered model's activations on the train pairs.
        validation_rows: the validation split's rows, prepared when the worker is built (None:
            no validation split, as export needs only the test split).
        finetuned: the finetuned model's activations (method `model_diff` only).
        residual: block outputs reused by `positions: all` trials of forward-only objectives
            (None: built here when the objective allows it).
    """

    cfg: RunConfig
    loaded: LoadedModel
    objective: Objective
    cache: ActivationCache
    validation_rows: list[Any] | None = None
    finetuned: ActivationCache | None = None
    residual: ResidualCache | None = field(default=None)
    planner: Planner = field(init=False)
    # The validation split prepared under prompting `none` (None without validation rows).
    _validation: PreparedSplit | None = field(default=None, init=False, repr=False)
    # The validation split's prompt texts: what the best trials' artifacts (per-item CSV and
    # plot) show beside their scores (None: no prompt column or no validation rows).
    prompts: list[str] | None = field(default=None, init=False)
    # Unsteered KL reference per split ("validation", "test"), built on first use.
    kl: dict[str, KLReference] = field(default_factory=dict, init=False)
    # Per prompting other than `none`: its objective and prepared validation split (first use).
    _prompted: dict[str, PreparedSplit] = field(default_factory=dict, init=False, repr=False)
    _objectives: dict[str, Objective] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.planner = Planner(
            self.cfg.search_space, self.loaded, self.cache, self.finetuned, self.cfg.study.seed
        )
        if self.residual is None and self.objective.forward_only:
            self.residual = ResidualCache(self.loaded)
        if self.validation_rows is not None:
            column = self.cfg.task.columns.get("prompt")
            if column:
                self.prompts = [str(row[column]) for row in self.validation_rows]
            self._validation = self.prepare(self.validation_rows)

    @property
    def validation(self) -> Any:
        """The validation split prepared under prompting `none`: a `PreparedSplit`, typed as
        the objective's own (tests and benchmarks read its kind-specific fields).

        Raises:
            UserError: the worker was built without validation rows (as export builds it).
        """
        if self._validation is None:
            raise UserError("this worker was built without the validation split")
        return self._validation

    def plan(self, params: dict[str, Any], resolved: dict[str, Any] | None = None) -> Plan:
        """A trial's steering (see `Planner.plan`)."""
        return self.planner.plan(params, resolved)

    def vectors(self, params: dict[str, Any]) -> dict[int, torch.Tensor]:
        """The vector(s) added at alpha = 1 for a trial's params, one per steered layer."""
        return self.plan(params).vectors

    def objective_under(self, prompting: str) -> Objective:
        """The objective rendering its prompts under `prompting` (`hpo.core.prompting`)."""
        if prompting == NONE:
            return self.objective
        if prompting not in self._objectives:
            task = self.cfg.task.under(prompting)
            self._objectives[prompting] = make_objective(task, self.loaded.tokenizer)
        return self._objectives[prompting]

    def validation_under(self, prompting: str) -> PreparedSplit:
        """The prepared validation split under `prompting` (prepared on first use)."""
        if prompting == NONE:
            return self.validation
        if prompting not in self._prompted:
            if self.validation_rows is None:
                raise UserError(f"prompting {prompting!r} needs the worker's validation rows")
            self._prompted[prompting] = self.prepare(
                self.validation_rows, prompting, like=self.validation
            )
        return self._prompted[prompting]

    def prepare(
        self, rows: list[Any], prompting: str = NONE, like: PreparedSplit | None = None
    ) -> PreparedSplit:
        """Tokenize a split once; cache its unsteered prompt prefix when the space can reuse it.

        `prompting` renders the prompts with the task's instruction (`instruction`); `like` is
        the same rows prepared under `none`, whose unsteered fluency reference the constraints
        then compare with (the guards judge every trial against the model a user starts from).
        """
        objective = self.objective_under(prompting)
        prepared = objective.prepare(rows)
        ids = prepared.token_ids
        limit = self.cfg.task.max_prompt_tokens
        longest = max((len(x) for x in ids), default=0)
        if longest > limit:
            raise UserError(
                f"task {self.cfg.task.name!r}: a prompt has {longest} tokens, more than "
                f"task.max_prompt_tokens={limit}; long rows are refused, not truncated: shorten "
                "them or raise the limit"
            )
        objective.precompute(self.loaded.model, prepared, self.reuses_prompt_prefix)
        if like is not None and like.reference:
            prepared.reference = like.reference
        return prepared

    @property
    def reuses_prompt_prefix(self) -> bool:
        """Whether some positions rule of the space leaves a prompt prefix unsteered in every
        trial, so its KV cache is computed once and reused."""
        rules = [positions_named(p) for p in self.cfg.search_space.positions]
        return any(rule.reuses_prompt_prefix for rule in rules)

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
                prefix=self.reuses_prompt_prefix,
            )
        return self.kl[split]

    def _reuses_prefix(self, app: Application, prepared: PreparedSplit) -> bool:
        """Whether a trial under `app` can start from `prepared`'s unsteered prompt prefix (a
        trigger gate reads each sequence from its first token: no shared prefix)."""
        trigger = app.gate is not None and bool(app.gate.trigger)
        rule = app.positions_rule
        return rule.reuses_prompt_prefix and bool(prepared.prefix) and not trigger

    def shares_pass(self, plan: Plan) -> bool:
        """Whether a plan can share a batched pass with other trials (`score_groups`): every
        plan but those the residual cache serves (re-running only the blocks above one layer
        alone is cheaper than a shared full pass)."""
        return self.residual is None or not self.residual.applies(plan.application, plan.vectors)

    def score(
        self,
        plan: Plan | dict[str, Any],
        prepared: PreparedSplit,
        report: Any = None,
        vectors: dict[int, torch.Tensor] | None = None,
        split: str = "validation",
    ) -> ScoreResult:
        """Score a prepared split with a plan's steering applied, plus the side metrics.

        `plan` is a `Plan` (or a trial's params, resolved here); `vectors` replaces its vectors;
        `split` picks the KL prompts (validation or the disjoint held-out test set).
        """
        plan = plan if isinstance(plan, Plan) else self.plan(plan)
        vectors = plan.vectors if vectors is None else vectors
        app = plan.application
        loaded = self.loaded
        reuse = self._reuses_prefix(app, prepared)
        kl_ref = self.kl_reference(split)
        residual = self.residual
        if residual is not None and residual.applies(app, vectors):
            [(layer, vector)] = vectors.items()
            stand_in = SteeredAbove(residual, layer, vector, app.layer_alpha(layer))
            result = self.objective.score(stand_in, prepared, report, False)
            if kl_ref is not None:
                with steer(loaded.model, loaded.blocks, vectors, app) as handle:
                    self._add_kl(result, kl_ref, handle)
        else:
            with steer(loaded.model, loaded.blocks, vectors, app) as handle:
                result = self.objective.score(loaded.model, prepared, report, reuse)
                if kl_ref is not None:
                    self._add_kl(result, kl_ref, handle)
        self._constrain(result, prepared)
        return result

    def score_groups(
        self, plans: Sequence[Plan], prepared: PreparedSplit, reports: Sequence[Any]
    ) -> list[ScoreResult]:
        """Several trials scored in one batched pass on the validation split, side metrics
        included: every batch holds each prompt once per plan, row group `g` under `plans[g]`
        (`hpo.steering.hooks.steer_groups`); the result of plan `g` is what `score` gives it
        alone, up to float rounding. One plan: `score`. Each plan must `shares_pass`.
        """
        if len(plans) == 1:
            return [self.score(plans[0], prepared, reports[0])]
        if not all(self.shares_pass(plan) for plan in plans):
            raise ValueError("a plan the residual cache serves is scored alone")
        loaded = self.loaded
        reuse = all(self._reuses_prefix(plan.application, prepared) for plan in plans)
        kl_ref = self.kl_reference("validation")
        steerings = [(plan.vectors, plan.application) for plan in plans]
        with steer_groups(loaded.model, loaded.blocks, steerings) as handles:
            results = self.objective.score_groups(loaded.model, prepared, reports, reuse)
            if kl_ref is not None:
                groups = kl_per_prompt_groups(loaded.model, kl_ref, handles)
                for result, items in zip(results, groups, strict=True):
                    self._set_kl(result, items)
        for result in results:
            self._constrain(result, prepared)
        return results

    def _constrain(self, result: ScoreResult, prepared: PreparedSplit) -> None:
        """The objective's own constraints (fluency, measured unsteered) and the KL bound."""
        constraints: dict[str, float] = {}
        objective = self.objective
        if objective.constrained:
            assert isinstance(objective, ConstrainedObjective), objective.kind
            # Unsteered now: fluency is judged by the model we started from.
            measured = objective.fluency(self.loaded.model, prepared, result)
            result.fluency = measured
            result.metrics.update(measured)
            constraints.update(objective.constraints(prepared, measured))
        kl_max = self.cfg.task.objective.kl.max
        if kl_max is not None and "kl" in result.metrics:
            constraints["kl"] = result.metrics["kl"] - kl_max
        if constraints:
            result.constraints = constraints

    def _add_kl(self, result: ScoreResult, kl_ref: KLReference, handle: Any) -> None:
        self._set_kl(result, kl_per_prompt(self.loaded.model, kl_ref, handle))

    def _set_kl(self, result: ScoreResult, items: list[float]) -> None:
        result.metrics["kl"] = sum(items) / len(items)
        result.metric_items["kl"] = items

    def baseline_result(self, prepared: PreparedSplit, split: str) -> ScoreResult:
        """The unsteered result of a prepared split, side metrics included (KL is 0 by
        definition: the unsteered model against itself)."""
        baseline = prepared.baseline  # generation keeps its unsteered run
        if baseline is None:
            reuse = prepared.prefix is not None
            baseline = self.objective.score(self.loaded.model, prepared, reuse_prefix=reuse)
        kl_ref = self.kl_reference(split)
        if kl_ref is not None and "kl" not in baseline.metrics:
            baseline.metrics["kl"] = 0.0
            baseline.metric_items["kl"] = [0.0] * kl_ref.n_prompts
        return baseline
