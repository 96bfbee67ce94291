"""The study record: what a study stores about itself and its trials, read by everything else.

The trial loop writes it through the writers below (`TrialRecord`, `record_*`); export, status,
report, note, artifacts and the dashboard read it through these names only. Feasibility is what
Optuna keeps in each trial's constraints (feasible when every value is <= 0).
`record_constraints` writes them twice: by name (Optuna 5's `set_constraint`) and as the list
optuna-dashboard reads (the `constraints` system attribute, which Optuna also still reads), so
the dashboard marks infeasible trials and leaves them out of its best-value line. The `feasible`
user attribute mirrors it for the trial table.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.core.objective_metrics import SCORE

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
# Per attempt (a retry records its own): the device it ran on, and why it failed.
DEVICE_ATTR = "device"
FAIL_REASON_ATTR = "fail_reason"
# What a scored trial records about itself (`TrialRecord`).
TIME_VECTOR_ATTR = "time_vector_s"
TIME_SCORE_ATTR = "time_score_s"
# How many trials shared the trial's batched pass (`study.trials_per_pass`; absent: one alone).
# Its `time_score_s` is then the pass's time over that many trials.
PASS_SIZE_ATTR = "trials_in_pass"
VECTOR_NORM_ATTR = "vector_norm"
LAYERS_ATTR = "layers"
ACCURACY_ATTR = "accuracy"
# What the plan's build found (`hpo.run.planner.Plan.info`): the mean held-out accuracy of the
# probes it used, and how many heads a site-heads trial steers.
PROBE_ACCURACY_ATTR = "probe_accuracy"
HEADS_STEERED_ATTR = "heads_steered"
# The score of uniform answers (choice kinds); the study's own is `hpo.core.chance.CHANCE_ATTR`.
TRIAL_CHANCE_ATTR = "chance"
DELTA_BASELINE_ATTR = "delta_vs_baseline"
DELTA_PROMPTED_ATTR = "delta_vs_prompted"
# Key prefixes: derived params (`derived.layer_alpha`), per-letter scores of choice kinds
# (`letter_A`) and each side metric's difference from the baseline's (`delta_kl`).
DERIVED_PREFIX = "derived."
LETTER_PREFIX = "letter_"
DELTA_PREFIX = "delta_"

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


def meets(constraints: Mapping[str, float] | None) -> bool:
    """Whether constraint values are met (every one <= 0; none: met)."""
    return all(v <= 0 for v in (constraints or {}).values())


@dataclass(frozen=True)
class TrialRecord:
    """What a scored trial records about itself, as plain values (`write` rounds them).

    Attributes:
        time_vector_s: seconds spent building the trial's steering (its `Plan`).
        time_score_s: seconds spent scoring the validation split.
        vector_norm: the norm of the first steered vector at alpha = 1.
        layers: the steered layers.
        derived: derived params (`search_space.derived`), by name.
        info: scalars about the built steering (`probe_accuracy`, `heads_steered`).
        per_letter: choice kinds' score per correct letter.
        fluency: generation kinds' fluency measures, by name.
        counts: counted events (`n_unparsed`: answers that could not be read).
        accuracy: multiple choice's accuracy (None: not measured).
        chance: choice kinds' score of uniform answers (None: no chance level).
        constraints: constraint values, feasible when all are <= 0 (None: unconstrained).
    """

    time_vector_s: float
    time_score_s: float
    vector_norm: float
    layers: list[int]
    derived: Mapping[str, Any] = field(default_factory=dict)
    info: Mapping[str, float] = field(default_factory=dict)
    per_letter: Mapping[str, float] = field(default_factory=dict)
    fluency: Mapping[str, float] = field(default_factory=dict)
    counts: Mapping[str, int] = field(default_factory=dict)
    accuracy: float | None = None
    chance: float | None = None
    constraints: Mapping[str, float] | None = None

    def write(self, trial: optuna.Trial) -> None:
        """Write the record into the trial's user attributes (and its constraints)."""
        trial.set_user_attr(TIME_VECTOR_ATTR, round(self.time_vector_s, 6))
        trial.set_user_attr(TIME_SCORE_ATTR, round(self.time_score_s, 4))
        trial.set_user_attr(VECTOR_NORM_ATTR, round(self.vector_norm, 4))
        trial.set_user_attr(LAYERS_ATTR, sorted(self.layers))
        for name, value in self.derived.items():
            trial.set_user_attr(f"{DERIVED_PREFIX}{name}", value)
        for name, value in self.info.items():
            trial.set_user_attr(name, round(value, 6))
        for letter, value in self.per_letter.items():
            trial.set_user_attr(f"{LETTER_PREFIX}{letter}", round(value, 6))
        for name, value in self.fluency.items():
            trial.set_user_attr(name, round(value, 4))
        for name, count in self.counts.items():
            trial.set_user_attr(name, int(count))
        if self.accuracy is not None:
            trial.set_user_attr(ACCURACY_ATTR, round(float(self.accuracy), 6))
        if self.chance is not None:
            trial.set_user_attr(TRIAL_CHANCE_ATTR, round(float(self.chance), 6))
        if self.constraints is not None:
            # Optuna's constrained optimization: samplers favour feasible trials (all <= 0).
            record_constraints(trial, dict(self.constraints))
            trial.set_user_attr(FEASIBLE_ATTR, meets(self.constraints))


def record_placement(trial: optuna.Trial, where: Mapping[str, str], device: str) -> None:
    """Where this attempt runs (`hpo.core.placement`) and on which device."""
    for key, value in where.items():
        trial.set_user_attr(key, value)
    trial.set_user_attr(DEVICE_ATTR, device)


def record_pass(trial: optuna.Trial, size: int) -> None:
    """How many trials shared this trial's batched pass (`study.trials_per_pass`)."""
    trial.set_user_attr(PASS_SIZE_ATTR, int(size))


def record_failure(trial: optuna.Trial, reason: str) -> None:
    """Why this attempt failed, for `hpo status`."""
    trial.set_user_attr(FAIL_REASON_ATTR, reason)


def record_prompting(trial: optuna.Trial, prompting: str) -> None:
    """The prompt the trial is scored with (`hpo.core.prompting`)."""
    trial.set_user_attr(PROMPTING_ATTR, prompting)


def record_metrics(trial: optuna.Trial, named: Mapping[str, float]) -> None:
    """Every named metric of a trial, at full precision (export rules compare them)."""
    trial.set_user_attr(METRICS_ATTR, dict(named))


def record_reference(
    study: optuna.Study,
    prompted: bool,
    value: float,
    named: Mapping[str, float],
    constraints: Mapping[str, float] | None = None,
) -> None:
    """A reference trial's value and metrics as study attributes: the unsteered baseline's, or
    (`prompted`) the prompted baseline's with whether it met the constraints (if any)."""
    if prompted:
        study.set_user_attr(PROMPTED_VALUE_ATTR, value)
        study.set_user_attr(PROMPTED_METRICS_ATTR, dict(named))
        if constraints is not None:
            study.set_user_attr(PROMPTED_FEASIBLE_ATTR, meets(constraints))
    else:
        study.set_user_attr(BASELINE_VALUE_ATTR, value)
        study.set_user_attr(BASELINE_METRICS_ATTR, dict(named))


@dataclass(frozen=True)
class Deltas:
    """A trial's main value against the references (None: that reference has not run yet)."""

    baseline: float | None
    prompted: float | None


def record_deltas(
    trial: optuna.Trial, named: Mapping[str, float], value: float, prompted: bool
) -> Deltas:
    """Write a trial's differences from the references the study holds so far: each side
    metric's (`delta_<name>`), the main value's vs the baseline and (steered and unsteered
    trials, not the prompted baseline itself) vs the prompted baseline."""
    study = trial.study
    base_metrics = study.user_attrs.get(BASELINE_METRICS_ATTR) or {}
    for name, metric in named.items():
        if name != SCORE and name in base_metrics:
            trial.set_user_attr(f"{DELTA_PREFIX}{name}", round(metric - base_metrics[name], 6))
    baseline = study.user_attrs.get(BASELINE_VALUE_ATTR)
    delta = None if baseline is None else value - baseline
    if delta is not None:
        trial.set_user_attr(DELTA_BASELINE_ATTR, round(delta, 6))
    reference = study.user_attrs.get(PROMPTED_VALUE_ATTR)
    vs_prompted = None if reference is None or prompted else value - reference
    if vs_prompted is not None:
        trial.set_user_attr(DELTA_PROMPTED_ATTR, round(vs_prompted, 6))
    return Deltas(delta, vs_prompted)


def _prefixed(attrs: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix) :]: v for k, v in attrs.items() if k.startswith(prefix)}


def per_letter(trial: FrozenTrial) -> dict[str, float]:
    """A choice trial's recorded score per correct letter (`{"A": 0.61, "B": 0.58}`)."""
    return _prefixed(trial.user_attrs, LETTER_PREFIX)


def derived_values(trial: FrozenTrial) -> dict[str, Any]:
    """A trial's recorded derived params, by name."""
    return _prefixed(trial.user_attrs, DERIVED_PREFIX)


def metric_deltas(trial: FrozenTrial) -> dict[str, float]:
    """Each side metric's recorded difference from the baseline's, by metric name."""
    skip = {DELTA_BASELINE_ATTR, DELTA_PROMPTED_ATTR}
    return _prefixed({k: v for k, v in trial.user_attrs.items() if k not in skip}, DELTA_PREFIX)


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
