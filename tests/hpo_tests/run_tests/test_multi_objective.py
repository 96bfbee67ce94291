"""Multi-objective studies on real SQLite: score vs KL, the Pareto front, the export rule, the
bundle's record of both, and the metric / rule checks that fail before any model loads."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from optuna.study import StudyDirection
from optuna.trial import TrialState

from hpo import ExportRule, ObjectiveConfig, RunConfig, UserError
from hpo.core.objective_metrics import study_metrics
from hpo.core.selection import Rule, parse_rule, pick_by_rule, pick_trial, values_of
from hpo.export.bundle import STEERING_JSON
from hpo.export.writer import write_bundle
from hpo.monitor.status import render_status
from hpo.run.study import check_config, open_study, prepare_worker, run_trials
from tests.conftest import compose_run, tiny_overrides

SMALL_KL = ("task.objective.kl.n_prompts=2", "task.objective.kl.max_new_tokens=4")


def tiny_multi(model_dir: Path, out: Path, *extra: str) -> RunConfig:
    return compose_run(
        *tiny_overrides(model_dir, out),
        "log_level=INFO",
        "study.n_trials=6",
        "task.objective.metrics=[score,kl]",
        *SMALL_KL,
        *extra,
    )


def run(cfg: RunConfig) -> tuple[Any, Any]:
    task = check_config(cfg)
    study = open_study(cfg)
    worker = prepare_worker(cfg, task)
    run_trials(study, worker, cfg.study.n_trials)
    return study, worker


def test_export_rules_are_checked_before_a_study_runs(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    objective = ObjectiveConfig(metrics=["score", "kl"])
    rule = parse_rule(ExportRule(maximize="score", where={"kl": "<= 0.5"}), objective)
    assert rule.record() == {"maximize": "score", "where": {"kl": "<= 0.5"}}
    assert rule.admits({"score": 0.1, "kl": 0.5}) and not rule.admits({"score": 1, "kl": 0.6})
    with pytest.raises(UserError, match=r"export\.rule\.where\.kl must be '<op> <number>'"):
        parse_rule(ExportRule(maximize="score", where={"kl": "small"}), objective)
    with pytest.raises(UserError, match=r"export\.rule names metric 'klx'"):
        parse_rule(ExportRule(minimize="klx"), objective)
    with pytest.raises(UserError, match="exactly one of maximize / minimize"):
        compose_run(*tiny_overrides(tiny_model_dir, tmp_path), "export.rule={}")
    cfg = compose_run(
        *tiny_overrides(tiny_model_dir, tmp_path),
        "export.rule={maximize: score, where: {x: '<1'}}",
    )
    with pytest.raises(UserError, match=r"export\.rule names metric 'x'"):
        check_config(cfg)


def test_multi_objective_study_keeps_a_front_and_export_picks_from_it_by_the_rule(
    tiny_model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = tiny_multi(tiny_model_dir, tmp_path, "pruner=median")
    with caplog.at_level(logging.INFO):
        study, worker = run(cfg)
    assert "pruning disabled: Optuna does not prune multi-objective studies" in caplog.text
    assert study.directions == [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE]
    assert study.metric_names == ["score", "kl"]
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    baseline = trials[0]
    assert baseline.values[1] == 0.0  # the unsteered model against itself
    assert study.user_attrs["baseline_metrics"] == {"score": baseline.values[0], "kl": 0.0}
    for t in trials[1:]:
        assert t.values[1] > 0.0
        assert t.user_attrs["delta_kl"] == pytest.approx(t.values[1], abs=1e-6)
        assert values_of(t)["score"] == pytest.approx(t.values[0], abs=1e-6)
    assert not trials[1].intermediate_values  # no reports: Optuna cannot prune multi-objective

    front = {t.number for t in study.best_trials}
    assert 0 in front  # kl = 0 cannot be beaten
    status = render_status(study, "sqlite://")
    assert f"pareto    {len(front)} feasible trials on the front" in status
    assert "direction score (maximize), kl (minimize)" in status

    steered_front = [t for t in trials if t.number in front and t.number != 0]
    if steered_front:
        tau = max(t.values[1] for t in steered_front)
        rule = parse_rule(
            ExportRule(maximize="score", where={"kl": f"<= {tau}"}), cfg.task.objective
        )
        chosen = pick_trial(study, None, rule)
        assert chosen.number == max(steered_front, key=lambda t: (t.values[0], -t.number)).number
        lowest = min(t.values[1] for t in steered_front)
        by_kl = pick_by_rule(study, parse_rule(ExportRule(minimize="kl"), cfg.task.objective))
        assert by_kl.values[1] == lowest
    impossible = parse_rule(ExportRule(maximize="score", where={"kl": "< 0"}), cfg.task.objective)
    with pytest.raises(UserError, match=r"no trial satisfies export\.rule"):
        pick_trial(study, None, impossible)

    default = Rule(study_metrics(cfg.task.objective)[0])
    winner = pick_trial(study, None)  # multi-objective default: best score on the front
    path = write_bundle(worker, study, winner, tmp_path / "bundle", default)
    meta = json.loads((path / STEERING_JSON).read_text())
    selection = meta["selection"]
    assert selection["rule"] == {"maximize": "score", "where": {}}
    assert selection["trial"] == winner.number
    assert [f["trial"] for f in selection["front"]] == sorted(front)
    assert all(set(f["values"]) == {"score", "kl"} for f in selection["front"])
    assert selection["front"][0]["baseline"] is True
    test = meta["metrics"]["test"]["metrics"]
    assert set(test) == {"score", "kl"}
    assert test["kl"]["baseline"] == 0.0 and test["kl"]["n"] == 2
    assert test["kl"]["ci95"][0] <= test["kl"]["difference"] <= test["kl"]["ci95"][1]
    assert test["score"]["n"] == cfg.task.splits.test
    val = meta["metrics"]["validation"]["metrics"]
    assert val["kl"]["steered"] == pytest.approx(winner.values[1], abs=1e-6)


def test_a_kl_bound_makes_trials_infeasible_and_they_are_never_exported(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    cfg = tiny_multi(tiny_model_dir, tmp_path, "task.objective.kl.max=1e-9", "study.n_trials=3")
    study, _ = run(cfg)
    steered = study.get_trials()[1:]
    assert all(t.user_attrs["feasible"] is False for t in steered)
    assert all(t.constraints["kl"] > 0 for t in steered)
    assert {t.number for t in study.best_trials} == {0}
    with pytest.raises(UserError, match="no steered trials on the feasible Pareto front"):
        pick_trial(study, None)


def test_a_small_multi_objective_run_on_smollm2_exports_the_rule_pick(tmp_path: Path) -> None:
    cfg = compose_run(
        "experiment=sentiment_kl",
        f"output_dir={tmp_path}",
        "model.threads=1",
        "study.n_trials=3",
        "task.instruction=null",  # the enqueued trial right after the baseline
        "task.splits={train: 8, validation: 3, test: 3}",
        "task.objective.max_new_tokens=6",
        *SMALL_KL,
        "search_space.layers={low: 18, high: 24}",
        "export.rule.where={kl: '<= 10'}",
        "export.require_gain=false",  # 3 test items show no gain: this tests the rule's pick
    )
    study = open_study(cfg)
    # A known-good point (positive, fluent) so the front has a steered trial on 3 items.
    good = {"layer": 22, "alpha": 0.3, "aggregation": "mean", "method": "caa"}
    study.enqueue_trial({**good, "positions": "prompt_end_onward"})
    worker = prepare_worker(cfg, check_config(cfg))
    run_trials(study, worker, cfg.study.n_trials)
    assert study.metric_names == ["score", "kl"]
    rule = parse_rule(cfg.export.rule, cfg.task.objective)
    winner = pick_trial(study, None, rule)
    assert winner.values[1] <= 10 and winner.number in {t.number for t in study.best_trials}
    meta = json.loads(
        (write_bundle(worker, study, winner, tmp_path / "b", rule) / STEERING_JSON).read_text()
    )
    assert meta["selection"]["rule"] == {"maximize": "score", "where": {"kl": "<= 10"}}
    test = meta["metrics"]["test"]["metrics"]
    assert {"score", "kl", "tokens", "perplexity", "distinct2"} <= set(test)
    assert test["kl"]["steered"] > 0.0 and test["tokens"]["n"] == 3
