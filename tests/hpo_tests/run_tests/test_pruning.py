"""Pruning on a real study: the median pruner sees per-batch running means, the Wilcoxon pruner
per-item values under the same item ids in every trial; a clearly worse trial is pruned, a
baseline never is."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from hpo import RunConfig
from hpo.core.record import BASELINE_ATTR
from hpo.run.study import check_config, open_study, prepare_worker, run_trials
from tests.conftest import compose_run, tiny_overrides


def tiny_run(model_dir: Path, out: Path, *extra: str) -> RunConfig:
    return compose_run(
        *tiny_overrides(model_dir, out),
        "log_level=INFO",
        "task.splits={train: 4, validation: 8, test: 4}",
        "task.objective.batch_size=4",
        "task.objective.kl.enabled=false",
        *extra,
    )


def test_median_pruner_gets_one_running_mean_per_batch(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    cfg = tiny_run(tiny_model_dir, tmp_path, "pruner=median", "study.n_trials=2")
    study = open_study(cfg)
    run_trials(study, prepare_worker(cfg, check_config(cfg)), cfg.study.n_trials)
    baseline = study.trials[0]
    assert sorted(baseline.intermediate_values) == [0, 1, 2, 3]  # 16 variants / batches of 4
    assert baseline.intermediate_values[3] == baseline.value  # the last running mean


def test_wilcoxon_prunes_a_clearly_worse_trial_and_never_a_baseline(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    cfg = tiny_run(
        tiny_model_dir, tmp_path, "pruner=wilcoxon", "pruner.n_startup_steps=4", "study.n_trials=3"
    )
    study = open_study(cfg)
    worker = prepare_worker(cfg, check_config(cfg))
    # Trial 1: a planted steered trial whose every item is 0.4 worse; trial 2: a baseline
    # (alpha = 0) made just as bad, which must still complete.
    study.enqueue_trial({**study.trials[0].params, "alpha": 0.5})
    study.enqueue_trial(study.trials[0].params, user_attrs={BASELINE_ATTR: True})
    real_score = worker.score
    calls = {"n": 0}

    def planted(params: Any, prepared: Any, report: Any = None, *a: Any, **k: Any) -> Any:
        calls["n"] += 1
        if calls["n"] > 1 and report is not None:
            inner = report

            def report(step: int, value: float, items: Any = None) -> None:
                worse = {i: v - 0.4 for i, v in (items or {}).items()}
                inner(step, value - 0.4, worse)

        return real_score(params, prepared, report, *a, **k)

    worker.score = planted  # type: ignore[method-assign,assignment]
    run_trials(study, worker, cfg.study.n_trials)
    trials = study.get_trials()
    n_variants = 2 * cfg.task.splits.validation  # every item in both option orders
    assert sorted(trials[0].intermediate_values) == list(range(n_variants))  # per item
    assert [t.state for t in trials] == [
        TrialState.COMPLETE,
        TrialState.PRUNED,
        TrialState.COMPLETE,
    ]
    assert sorted(trials[1].intermediate_values) != list(range(n_variants))  # stopped early
    assert sorted(trials[2].intermediate_values) == list(range(n_variants))
