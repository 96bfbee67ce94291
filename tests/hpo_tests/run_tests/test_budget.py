"""Faults in the trial loop, on real SQLite with a stand-in objective (no model needed)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo.core.config import StorageConfig
from hpo.core.record import BASELINE_ATTR
from hpo.run.budget import run_trials
from storage import create_storage


def _study(tmp_path: Path) -> optuna.Study:
    storage = create_storage(StorageConfig(), f"sqlite:///{tmp_path / 'study.db'}")
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    study.enqueue_trial({"alpha": 0.0}, user_attrs={BASELINE_ATTR: True})
    return study


def test_an_interrupted_baseline_is_enqueued_again_and_then_runs(tmp_path: Path) -> None:
    study = _study(tmp_path)

    def interrupted(trial: optuna.Trial) -> float:
        trial.suggest_float("alpha", 0.0, 1.0)
        raise KeyboardInterrupt("signal SIGTERM")

    with pytest.raises(KeyboardInterrupt):
        run_trials(study, interrupted, n_trials=3)
    first, again = study.get_trials()
    assert first.state == TrialState.FAIL
    assert first.user_attrs["fail_reason"] == "worker stopped (signal SIGTERM)"
    assert again.state == TrialState.WAITING
    assert again.user_attrs[BASELINE_ATTR] is True

    def objective(trial: optuna.Trial) -> float:
        return trial.suggest_float("alpha", 0.0, 1.0)

    run_trials(study, objective, n_trials=3)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == 3
    assert done[0].params == {"alpha": 0.0}
    assert done[0].user_attrs[BASELINE_ATTR] is True


def test_ctrl_c_without_a_signal_name_says_ctrl_c(tmp_path: Path) -> None:
    study = _study(tmp_path)

    def interrupted(trial: optuna.Trial) -> float:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_trials(study, interrupted, n_trials=2)
    assert study.get_trials()[0].user_attrs["fail_reason"] == "worker stopped (Ctrl-C)"


def test_a_trial_failed_by_another_worker_while_this_one_slept_is_discarded(
    tmp_path: Path,
) -> None:
    study = _study(tmp_path)

    def objective(trial: optuna.Trial) -> float:
        value = trial.suggest_float("alpha", 0.0, 1.0)
        if trial.number == 1:  # what fail_stale_trials in another worker does to a sleeper
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        return value

    run_trials(study, objective, n_trials=3)
    states = [t.state for t in study.get_trials()]
    assert states.count(TrialState.COMPLETE) == 3
    assert study.get_trials()[1].state == TrialState.FAIL


def test_a_trial_whose_worker_died_before_its_first_heartbeat_is_failed_and_retried(
    tmp_path: Path,
) -> None:
    """Optuna fails only trials whose heartbeat went stale; one that never beat (its worker was
    killed between creating it and the first beat) would block the study forever."""
    from hpo.run.budget import UNBORN_REASON, fail_stale_trials

    cfg = StorageConfig(heartbeat_interval=1, grace_period=2)
    storage = create_storage(cfg, f"sqlite:///{tmp_path / 'study.db'}")
    study = optuna.create_study(study_name="s", storage=storage, direction="maximize")
    study.enqueue_trial({"alpha": 0.0}, user_attrs={BASELINE_ATTR: True})
    orphan = study.ask()  # RUNNING, and no heartbeat thread ever started for it
    assert orphan.user_attrs[BASELINE_ATTR] is True

    fail_stale_trials(study, now=100.0)  # first seen
    fail_stale_trials(study, now=101.5)  # within the grace period: left alone
    assert study.trials[0].state == TrialState.RUNNING
    fail_stale_trials(study, now=102.5)
    first, retry = study.trials
    assert first.state == TrialState.FAIL
    assert first.user_attrs["fail_reason"] == UNBORN_REASON
    assert retry.state == TrialState.WAITING
    assert retry.user_attrs[BASELINE_ATTR] is True  # the baseline is retried like any trial

    beating = study.ask()  # the retry, now with a live heartbeat: never failed by this rule
    storage.record_heartbeat(beating._trial_id)
    fail_stale_trials(study, now=200.0)
    fail_stale_trials(study, now=300.0)
    assert study.trials[1].state == TrialState.RUNNING
