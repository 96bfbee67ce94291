"""The damage guard of every objective kind, on the shipped SmolLM2 and a small QA file: a huge
alpha that breaks the model is infeasible (KL on neutral prompts over `kl.max`, on by default)
for multiple choice and A/B tasks, the chance level is recorded, and a baseline below chance
(mean log-likelihood favouring the long wrong answer) is reported at study start and in the
export's warnings."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from optuna.trial import TrialState

from hpo.core.chance import CHANCE_ATTR, towards_chance_message
from hpo.core.record import BASELINE_ATTR
from hpo.export.measure import measure
from hpo.run.study import check_config, open_study, prepare_worker, run_trials
from tests.conftest import compose_run
from tests.qa_task import write_qa

# Relative alpha 12 at layer 10: twelve times the layer's mean activation norm added everywhere.
BREAKING = {"layer": 10, "alpha": 12.0, "aggregation": "last", "method": "caa", "positions": "all"}


@pytest.mark.slow
@pytest.mark.parametrize("task", ["qa_mc", "qa_ab"])
def test_a_huge_alpha_that_breaks_the_model_is_infeasible(
    task: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = compose_run(
        f"hydra.searchpath=[file://{write_qa(tmp_path)}]",
        f"task={task}",
        f"output_dir={tmp_path / 'out'}",
        "pruner=none",
        "study.n_trials=2",
    )
    assert cfg.task.objective.kl.max is not None  # the guard is on by default
    study = open_study(cfg)
    study.enqueue_trial(BREAKING)
    worker = prepare_worker(cfg, check_config(cfg))
    with caplog.at_level(logging.INFO):
        run_trials(study, worker, cfg.study.n_trials)
    baseline, broken = study.get_trials(states=(TrialState.COMPLETE,))
    assert baseline.user_attrs[BASELINE_ATTR] and baseline.constraints["kl"] <= 0
    assert broken.user_attrs["feasible"] is False, broken.user_attrs
    assert broken.constraints["kl"] > 0, broken.constraints
    assert broken.user_attrs["metrics"]["kl"] > cfg.task.objective.kl.max
    assert study.user_attrs[CHANCE_ATTR] == pytest.approx(0.5)
    assert broken.user_attrs["chance"] == pytest.approx(0.5)
    if task != "qa_mc":
        return
    # mean log-likelihood prefers the long, fluent wrong answer: the baseline is below chance,
    # which the study start reports with the cause and the keys that change it
    assert baseline.value is not None and baseline.value < 0.5
    start = [r.getMessage() for r in caplog.records if "below chance" in r.getMessage()]
    assert start and "task.objective.loglik=sum" in start[0], start
    metrics = measure(worker, broken, study)
    assert metrics["chance"] == pytest.approx(0.5)
    below = [w for w in metrics["warnings"] if "below chance" in w]
    assert below and "task.objective.loglik" in below[0], metrics["warnings"]


def test_a_gain_that_only_closes_the_gap_to_chance_is_flagged() -> None:
    flagged = towards_chance_message(0.20, 0.48, 0.5)
    assert flagged is not None and "100% of the gain" in flagged
    assert towards_chance_message(0.20, 0.90, 0.5) is None  # most of it lies above chance
    assert towards_chance_message(0.55, 0.90, 0.5) is None  # baseline above chance
    assert towards_chance_message(0.80, 0.52, 0.5, "minimize") is not None
