"""Studies in-process on real SQLite: exact budget, baseline first, determinism, failures,
and the held-out test split never read before export."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from unittest import mock

import optuna
import pytest
from optuna.trial import TrialState

from hpo import RunConfig, TrialFailure, UserError
from hpo.core.selection import pick_trial
from hpo.export.writer import write_bundle
from hpo.monitor.publisher import Publisher
from hpo.run.study import check_config, open_study, prepare_worker, run_trials
from hpo.run.tasks import TaskSplits
from tests.conftest import compose_run, tiny_overrides


def tiny_run(model_dir: Path, out: Path, *extra: str) -> RunConfig:
    return compose_run(*tiny_overrides(model_dir, out), "log_level=INFO", *extra)


def run_study(cfg: RunConfig) -> tuple[optuna.Study, Any]:
    """As `hpo optimize` runs it in-process: the dashboard publisher included."""
    task = check_config(cfg)
    publisher = Publisher(cfg)
    study = open_study(cfg, on_create=publisher.describe)
    worker = prepare_worker(cfg, task)
    run_trials(study, worker, cfg.study.n_trials, publisher)
    return study, worker


def test_budget_is_exact_baseline_is_first_and_resuming_adds_nothing(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    cfg = tiny_run(tiny_model_dir, tmp_path, "study.n_trials=4")
    study, worker = run_study(cfg)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert trials[0].params["alpha"] == 0.0
    assert trials[0].user_attrs["baseline"] is True
    assert study.user_attrs["baseline_value"] == trials[0].value
    assert set(trials[1].user_attrs) >= {"vector_norm", "time_score_s", "delta_vs_baseline"}
    assert {"letter_A", "letter_B"} <= set(trials[1].user_attrs)
    run_trials(open_study(cfg), worker, cfg.study.n_trials)
    assert len(open_study(cfg).get_trials()) == 4


def test_same_params_and_seed_give_the_same_scores(tiny_model_dir: Path, tmp_path: Path) -> None:
    a, _ = run_study(tiny_run(tiny_model_dir, tmp_path / "a"))
    b, _ = run_study(tiny_run(tiny_model_dir, tmp_path / "b"))
    assert [t.params for t in a.trials] == [t.params for t in b.trials]
    assert [t.value for t in a.trials] == [t.value for t in b.trials]


def test_the_test_split_is_never_read_during_the_study(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    cfg = tiny_run(tiny_model_dir, tmp_path)
    reads: list[int] = []
    original = TaskSplits.test

    def spy(self: TaskSplits) -> list[dict[str, Any]]:
        reads.append(len(self._test))
        return original(self)

    with mock.patch.object(TaskSplits, "test", spy):
        study, worker = run_study(cfg)
        assert reads == []
        write_bundle(worker, study, pick_trial(study, None), tmp_path / "bundle")
        assert reads == [4]


def test_a_non_finite_score_fails_that_trial_and_the_study_goes_on(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    cfg = tiny_run(tiny_model_dir, tmp_path, "study.n_trials=3")
    task = check_config(cfg)
    study = open_study(cfg)
    worker = prepare_worker(cfg, task)
    real_score = worker.objective.score
    calls = {"n": 0}

    def flaky(*args: Any, **kwargs: Any) -> Any:
        result = real_score(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 2:
            result.value = float("nan")
        return result

    with mock.patch.object(worker.objective, "score", side_effect=flaky):
        run_trials(study, worker, cfg.study.n_trials)
    states = [t.state for t in study.get_trials()]
    assert states.count(TrialState.FAIL) == 1
    assert states.count(TrialState.COMPLETE) == 3
    failed = next(t for t in study.trials if t.state == TrialState.FAIL)
    assert failed.user_attrs["fail_reason"] == "objective is nan (non-finite score)"


def test_joining_a_study_with_another_task_is_refused(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    open_study(tiny_run(tiny_model_dir, tmp_path))
    other = tiny_run(tiny_model_dir, tmp_path, "task.splits.train=5")
    with pytest.raises(UserError, match=r"task.splits.train: study has 4, this run has 5"):
        open_study(other)


def test_trial_failure_is_a_runtime_error() -> None:
    assert issubclass(TrialFailure, RuntimeError)


def test_a_worker_with_another_optuna_major_version_is_refused(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    cfg = tiny_run(tiny_model_dir, tmp_path)
    open_study(cfg).set_user_attr("optuna_version", "3.6.1")
    with pytest.raises(UserError, match=r"made with Optuna 3.6.1, this worker has 5\."):
        open_study(cfg)
