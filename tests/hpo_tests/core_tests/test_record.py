"""The trial record: what the writers store reads back through the record's names."""

from __future__ import annotations

import optuna
import pytest

from hpo.core.record import (
    ACCURACY_ATTR,
    BASELINE_VALUE_ATTR,
    DELTA_BASELINE_ATTR,
    DELTA_PROMPTED_ATTR,
    FEASIBLE_ATTR,
    LAYERS_ATTR,
    PROMPTED_FEASIBLE_ATTR,
    PROMPTED_METRICS_ATTR,
    PROMPTED_VALUE_ATTR,
    TIME_SCORE_ATTR,
    TIME_VECTOR_ATTR,
    TRIAL_CHANCE_ATTR,
    VECTOR_NORM_ATTR,
    Deltas,
    TrialRecord,
    derived_values,
    is_feasible,
    metric_deltas,
    named_constraints,
    per_letter,
    record_deltas,
    record_reference,
)


def _record(**changes: object) -> TrialRecord:
    fields: dict[str, object] = {
        "time_vector_s": 0.0012345678,
        "time_score_s": 1.23456789,
        "vector_norm": 3.14159265,
        "layers": [5, 3],
    }
    return TrialRecord(**{**fields, **changes})  # type: ignore[arg-type]


def test_a_written_trial_record_reads_back_rounded_through_the_record_names() -> None:
    study = optuna.create_study()
    trial = study.ask()
    _record(
        derived={"layer_alpha": 0.25},
        info={"probe_accuracy": 0.8123456789},
        per_letter={"A": 0.61234567, "B": 0.5},
        fluency={"distinct_2": 0.912345},
        counts={"n_unparsed": 2.0},
        accuracy=0.5,
        chance=0.25,
        constraints={"kl": 0.1, "fluency": -0.2},
    ).write(trial)
    study.tell(trial, 1.0)
    frozen = study.trials[0]
    attrs = frozen.user_attrs
    assert attrs[TIME_VECTOR_ATTR] == 0.001235 and attrs[TIME_SCORE_ATTR] == 1.2346
    assert attrs[VECTOR_NORM_ATTR] == 3.1416 and attrs[LAYERS_ATTR] == [3, 5]
    assert derived_values(frozen) == {"layer_alpha": 0.25}
    assert per_letter(frozen) == {"A": 0.612346, "B": 0.5}
    assert attrs["probe_accuracy"] == 0.812346 and attrs["distinct_2"] == 0.9123
    assert attrs["n_unparsed"] == 2 and isinstance(attrs["n_unparsed"], int)
    assert attrs[ACCURACY_ATTR] == 0.5 and attrs[TRIAL_CHANCE_ATTR] == 0.25
    assert named_constraints(frozen) == {"fluency": -0.2, "kl": 0.1}
    assert attrs[FEASIBLE_ATTR] is False and not is_feasible(frozen)


def test_an_unconstrained_record_writes_no_feasibility_and_no_absent_measure() -> None:
    study = optuna.create_study()
    trial = study.ask()
    _record().write(trial)
    study.tell(trial, 1.0)
    frozen = study.trials[0]
    assert set(frozen.user_attrs) == {
        TIME_VECTOR_ATTR,
        TIME_SCORE_ATTR,
        VECTOR_NORM_ATTR,
        LAYERS_ATTR,
    }
    assert is_feasible(frozen) and per_letter(frozen) == {} and derived_values(frozen) == {}


def test_deltas_compare_with_the_references_recorded_so_far() -> None:
    study = optuna.create_study()
    baseline = study.ask()
    record_reference(study, False, 0.5, {"score": 0.5, "kl": 0.0})
    assert record_deltas(baseline, {"score": 0.5, "kl": 0.0}, 0.5, False) == Deltas(0.0, None)
    prompted = study.ask()
    record_reference(study, True, 0.7, {"score": 0.7, "kl": 0.1}, {"kl": -1.0})
    deltas = record_deltas(prompted, {"score": 0.7, "kl": 0.1}, 0.7, True)
    assert deltas.baseline == pytest.approx(0.2) and deltas.prompted is None
    assert study.user_attrs[BASELINE_VALUE_ATTR] == 0.5
    assert study.user_attrs[PROMPTED_VALUE_ATTR] == 0.7
    assert study.user_attrs[PROMPTED_METRICS_ATTR] == {"score": 0.7, "kl": 0.1}
    assert study.user_attrs[PROMPTED_FEASIBLE_ATTR] is True
    steered = study.ask()
    deltas = record_deltas(steered, {"score": 0.6, "kl": 0.3}, 0.6, False)
    assert deltas.baseline == pytest.approx(0.1) and deltas.prompted == pytest.approx(-0.1)
    frozen = study.trials[steered.number]
    assert metric_deltas(frozen) == {"kl": 0.3}
    assert frozen.user_attrs[DELTA_BASELINE_ATTR] == 0.1
    assert frozen.user_attrs[DELTA_PROMPTED_ATTR] == -0.1
    assert DELTA_PROMPTED_ATTR not in study.trials[prompted.number].user_attrs
