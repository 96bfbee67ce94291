"""The study record: what a study stores about itself and its trials, read by everything else.

The trial loop writes it; export, status, report, note, artifacts and the dashboard read it
through these names only. Feasibility is what Optuna keeps in each trial's constraints
(feasible when every value is <= 0). `record_constraints` writes them twice: by name (Optuna 5's
`set_constraint`) and as the list optuna-dashboard reads (the `constraints` system attribute,
which Optuna also still reads), so the dashboard marks infeasible trials and leaves them out of
its best-value line. The `feasible` user attribute mirrors it for the trial table.
"""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

# Study attributes.
CONFIG_ATTR = "hpo_config"
BASELINE_VALUE_ATTR = "baseline_value"
# Every named metric of the baseline trial (study attr) / of a trial (trial attr), as a dict.
BASELINE_METRICS_ATTR = "baseline_metrics"
# The prompted baseline's value and metrics (the unsteered model asked in words: task.instruction).
PROMPTED_VALUE_ATTR = "prompted_value"
PROMPTED_METRICS_ATTR = "prompted_metrics"
# Whether the prompted baseline met the task's constraints (fluency, kl); absent: unconstrained.
PROMPTED_FEASIBLE_ATTR = "prompted_feasible"
# What the last `hpo export` shipped (bundle, trial, held-out test result, warnings), for the note.
EXPORTED_ATTR = "exported"
# Trial attributes.
BASELINE_ATTR = "baseline"
PROMPTED_ATTR = "prompted_baseline"
# The prompt a trial was scored with (`none` / `instruction`, `hpo.core.prompting`).
PROMPTING_ATTR = "prompting"
METRICS_ATTR = "metrics"
FEASIBLE_ATTR = "feasible"

# What each objective kind / scorer measures, for axis labels and Optuna's metric name.
METRIC_LABELS = {
    "choice_probability": "P(target answer), 0-1",
    "multiple_choice": "P(correct option), 0-1",
    "sentiment": "mean VADER compound, -1 to 1",
    "math": "accuracy (math-verify), 0-1",
    "exact": "exact-match accuracy, 0-1",
    "regex": "regex-match rate, 0-1",
}


def metric_label(kind: str, scorer: str | None) -> str:
    """Axis label of the objective: `validation score (mean VADER compound, -1 to 1)`."""
    what = METRIC_LABELS.get(scorer or "", METRIC_LABELS.get(kind, f"{scorer or kind} score"))
    return f"validation score ({what})"


def is_baseline(trial: FrozenTrial) -> bool:
    """Whether a trial is the unsteered baseline (alpha = 0)."""
    return bool(trial.user_attrs.get(BASELINE_ATTR, False))


def is_prompted(trial: FrozenTrial) -> bool:
    """Whether a trial is the prompted baseline (alpha = 0, with the task's instruction)."""
    return bool(trial.user_attrs.get(PROMPTED_ATTR, False))


def is_reference(trial: FrozenTrial) -> bool:
    """Whether a trial is a reference (unsteered or prompted baseline): never a winner."""
    return is_baseline(trial) or is_prompted(trial)


# optuna-dashboard 0.21 reads a trial's constraints only from this system attribute, as a list.
DASHBOARD_CONSTRAINTS_KEY = "constraints"


def record_constraints(trial: optuna.Trial, constraints: dict[str, float]) -> None:
    """Record a trial's constraint values (feasible when all are <= 0) where Optuna and
    optuna-dashboard both read them: by name, and as the dashboard's list in name order."""
    values = [float(constraints[name]) for name in sorted(constraints)]
    for name, value in zip(sorted(constraints), values, strict=True):
        trial.set_constraint(name, value)
    trial.storage.set_trial_system_attr(trial._trial_id, DASHBOARD_CONSTRAINTS_KEY, values)


def named_constraints(trial: FrozenTrial) -> dict[str, float]:
    """A trial's constraints by name, without the dashboard's numbered copies of the same values
    (Optuna reads the list as keys "0", "1", ...)."""
    found = dict(trial.constraints)
    named = {k: v for k, v in found.items() if not k.isdigit()}
    return named or found


def is_feasible(trial: FrozenTrial) -> bool:
    """Whether a trial met its constraints, as Optuna records them (none: feasible)."""
    return all(value <= 0 for value in trial.constraints.values())


def steered_trials(
    study: optuna.Study,
    states: tuple[TrialState, ...] = (TrialState.COMPLETE,),
    feasible: bool | None = True,
) -> list[FrozenTrial]:
    """Steered trials (neither baseline) in `states`; `feasible=True` keeps the feasible ones,
    `False` the infeasible ones, `None` both. The default is what can win: completed, feasible
    and steered."""
    return [
        t
        for t in study.get_trials(deepcopy=False, states=states)
        if not is_reference(t) and (feasible is None or is_feasible(t) == feasible)
    ]


def summary(study: optuna.Study) -> dict[str, Any]:
    """Baseline and best steered value of a study, as plain numbers.

    Multi-objective: `best_*` is the feasible steered trial best on the first (main) metric and
    `front` lists the Pareto front (feasible trials only, the baseline included when on it).
    """
    steered = steered_trials(study, feasible=None)
    feasible = [t for t in steered if is_feasible(t)]
    multi = len(study.directions) > 1
    sign = 1 if study.directions[0] == optuna.study.StudyDirection.MAXIMIZE else -1

    def main(t: FrozenTrial) -> float:
        return float((t.values or [0.0])[0])

    best = max(feasible, key=lambda t: sign * main(t)) if feasible else None
    return {
        "n_feasible": len(feasible),
        "n_infeasible": len(steered) - len(feasible),
        "baseline": study.user_attrs.get(BASELINE_VALUE_ATTR),
        "prompted": study.user_attrs.get(PROMPTED_VALUE_ATTR),
        "best_value": None if best is None else main(best),
        "best_trial": None if best is None else best.number,
        "best_params": None if best is None else best.params,
        "front": [t.number for t in study.best_trials] if multi else None,
    }


def format_params(params: dict[str, Any]) -> str:
    """`layer=12 alpha=0.430 ...`: params as one short line for logs and tables."""
    return " ".join(
        f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )
