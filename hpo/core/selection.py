"""Which trial `hpo export` picks: a declared rule over the Pareto front (or the feasible trials).

A rule names one metric to maximize or minimize and conditions on others, e.g.
`export.rule: {maximize: score, where: {kl: "<= 0.5"}}`. In a multi-objective study the
candidates are the steered trials on the (feasible) Pareto front; in a single-objective study
they are all feasible steered trials. Infeasible trials and the two baselines (unsteered,
prompted) are never candidates.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.core.config import ExportRule, ObjectiveConfig
from hpo.core.errors import UserError
from hpo.core.objective_metrics import (
    KNOWN_DIRECTIONS,
    SCORE,
    Metric,
    study_metrics,
    trial_metrics,
)
from hpo.core.record import (
    is_baseline,
    is_feasible,
    is_prompted,
    named_constraints,
    steered_trials,
)

CONDITION = re.compile(r"^\s*(<=|>=|<|>|==)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")
OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
    "==": operator.eq,
}


@dataclass(frozen=True)
class Rule:
    """A parsed export rule: the metric to optimize and the conditions candidates must meet."""

    metric: Metric
    where: tuple[tuple[str, str, float], ...] = ()

    def record(self) -> dict[str, Any]:
        """The rule as it is written in config and in the bundle."""
        return {
            self.metric.direction: self.metric.name,
            "where": {name: f"{op} {bound:g}" for name, op, bound in self.where},
        }

    def admits(self, values: dict[str, float]) -> bool:
        """Whether a trial's metric values meet every condition."""
        return all(OPS[op](values[name], bound) for name, op, bound in self.where)


def parse_rule(rule: ExportRule | None, objective: ObjectiveConfig) -> Rule:
    """Check an `export.rule` against the metrics a study can record; `None` = the main metric.

    Raises:
        UserError: an unknown metric name or a condition that is not `<op> <number>`.
    """
    metrics = study_metrics(objective)
    if rule is None:
        return Rule(metrics[0])
    known = {SCORE, *KNOWN_DIRECTIONS, *(m.name for m in metrics)}
    name = rule.maximize if rule.maximize is not None else rule.minimize
    assert name is not None  # ExportRule guarantees exactly one
    direction = "maximize" if rule.maximize is not None else "minimize"
    where = []
    for metric, condition in [(name, None), *rule.where.items()]:
        if metric not in known:
            raise UserError(f"export.rule names metric {metric!r}, known: {sorted(known)}")
        if condition is None:
            continue
        match = CONDITION.match(str(condition))
        if match is None:
            raise UserError(
                f"export.rule.where.{metric} must be '<op> <number>' with op one of "
                f"{list(OPS)}, got {condition!r}"
            )
        where.append((metric, match.group(1), float(match.group(2))))
    return Rule(Metric(name, direction), tuple(where))


def values_of(trial: FrozenTrial) -> dict[str, float]:
    """Every named metric a trial recorded (older trials: the score alone)."""
    recorded = trial_metrics(trial.user_attrs)
    if not recorded and trial.values is not None:
        recorded = {SCORE: float(trial.values[0])}
    return recorded


def pareto_front(study: optuna.Study) -> list[FrozenTrial]:
    """The feasible Pareto front (multi-objective), else an empty list."""
    return list(study.best_trials) if len(study.directions) > 1 else []


def front_record(study: optuna.Study) -> list[dict[str, Any]]:
    """The front as plain data for the bundle: trial number, params, values, baseline flag."""
    names = study.metric_names or [f"v{i}" for i in range(len(study.directions))]
    return [
        {
            "trial": t.number,
            "params": t.params,
            "values": dict(zip(names, t.values or [], strict=False)),
            "baseline": is_baseline(t),
            "prompted": is_prompted(t),
        }
        for t in sorted(pareto_front(study), key=lambda t: t.number)
    ]


def pick_by_rule(study: optuna.Study, rule: Rule) -> FrozenTrial:
    """The candidate the rule picks (ties: the earliest trial).

    Raises:
        UserError: no candidate, or none meets the rule's conditions (their values are listed).
    """
    pool = steered_trials(study)
    where = "feasible steered trials"
    if len(study.directions) > 1:
        on_front = {t.number for t in pareto_front(study)}
        pool = [t for t in pool if t.number in on_front]
        where = "steered trials on the feasible Pareto front"
    if not pool:
        raise UserError(f"study {study.study_name!r} has no {where} to export")
    names = {rule.metric.name, *(name for name, _, _ in rule.where)}
    values = {t.number: values_of(t) for t in pool}
    lacking = sorted(n for n in names if any(n not in v for v in values.values()))
    if lacking:
        raise UserError(
            f"export.rule {rule.record()} names {lacking[0]!r}, which the {where} did not "
            f"record; they have {sorted(next(iter(values.values())))}"
        )
    admitted = [t for t in pool if rule.admits(values[t.number])]
    if not admitted:
        shown = "; ".join(
            f"trial {t.number}: "
            + ", ".join(f"{n}={values[t.number][n]:.4g}" for n in sorted(names))
            for t in pool[:8]
        )
        raise UserError(
            f"no trial satisfies export.rule {rule.record()} among {len(pool)} {where} ({shown})"
        )
    sign = rule.metric.sign
    return max(admitted, key=lambda t: (sign * values[t.number][rule.metric.name], -t.number))


def pick_trial(study: optuna.Study, number: int | None, rule: Rule | None = None) -> FrozenTrial:
    """`export.trial` if given, else the trial `rule` picks (see `selection`), else the best
    COMPLETE feasible steered (non-baseline) trial (multi-objective: best main metric on
    the front).

    Raises:
        UserError: the named trial does not exist or did not complete, or nothing completed, or
            no trial satisfies the rule.
    """
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if number is not None:
        for t in complete:
            if t.number == number:
                if is_prompted(t):
                    raise UserError(
                        f"export.trial={number} is the prompted baseline (the task's instruction, "
                        "no vector): it has nothing to ship; pick a steered trial"
                    )
                if not is_feasible(t):
                    raise UserError(
                        f"export.trial={number} is infeasible (it breaks its constraints, "
                        f"fluency or kl: {named_constraints(t)}); pick a feasible one"
                    )
                return t
        raise UserError(
            f"export.trial must be a COMPLETE trial of study {study.study_name!r}, got {number}; "
            f"complete trials: {[t.number for t in complete]}"
        )
    if rule is not None:
        return pick_by_rule(study, rule)
    if len(study.directions) > 1:
        names = study.metric_names or ["score"]
        main = Metric(names[0], study.directions[0].name.lower())
        return pick_by_rule(study, Rule(main))
    feasible = steered_trials(study)
    if not feasible:
        n_steered = len(steered_trials(study, feasible=None))
        raise UserError(
            f"study {study.study_name!r} has no completed, feasible steered trial to export "
            f"({n_steered} steered, {n_steered - len(feasible)} infeasible)"
        )
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return (max if maximize else min)(feasible, key=lambda t: float(t.value))  # type: ignore[arg-type]
