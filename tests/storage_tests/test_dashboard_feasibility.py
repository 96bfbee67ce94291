"""What optuna-dashboard calls best is what `hpo export` ships, on SQLite and PostgreSQL.

A study where an infeasible trial (KL far over its bound) has the highest raw score: the
dashboard's API must report every trial's constraints, its best trial must be the feasible
winner export picks, and in a real browser the study page must name that winner while the
history plot draws the infeasible trial apart and keeps it off the best-value line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.study import StudyDirection

from hpo.core.errors import UserError
from hpo.core.record import (
    BASELINE_ATTR,
    CONFIG_ATTR,
    FEASIBLE_ATTR,
    named_constraints,
    record_constraints,
)
from hpo.core.selection import pick_trial
from hpo.monitor.dashboard import feasible_best_trials
from tests.storage_tests.test_dashboard_storage import get, serve_dashboard

# number: (alpha, value, kl constraint); the baseline first, trial 2 scores highest but breaks kl.
TRIALS = {
    0: (0.0, 0.30, -1.5),
    1: (2.0, 0.50, -0.5),
    2: (9.0, 0.95, 3.0),
    3: (4.0, 0.65, -0.2),
    4: (1.0, 0.40, -1.2),
}
WINNER, INFEASIBLE = 3, 2


def build(url: str, name: str, multi: bool = False) -> optuna.Study:
    """The study the trial loop would write, trial by trial, through `record_constraints`."""
    directions = [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE][: 2 if multi else 1]
    study = optuna.create_study(study_name=name, storage=url, directions=directions)
    for number, (alpha, value, kl) in TRIALS.items():
        trial = study.ask()
        assert trial.number == number
        trial.suggest_float("alpha", 0.0, 10.0)
        trial.set_user_attr(BASELINE_ATTR, number == 0)
        trial.set_user_attr(FEASIBLE_ATTR, kl <= 0)
        record_constraints(trial, {"kl": kl, "distinct2": -0.1})
        study.tell(trial, [value, alpha] if multi else value)
    return study


def test_constraints_are_recorded_by_name_for_optuna_and_as_a_list_for_the_dashboard(
    any_url: str, study_name: str, tmp_path: Path
) -> None:
    (tmp_path / "run").mkdir(exist_ok=True)
    study = build(any_url, study_name)
    trial = study.trials[INFEASIBLE]
    assert named_constraints(trial) == {"kl": 3.0, "distinct2": -0.1}
    assert trial.system_attrs["constraints"] == [-0.1, 3.0]  # sorted by name
    # Optuna 5 itself reads both: the winner, and the sampler's view of feasibility, agree.
    assert study.best_trial.number == WINNER
    assert pick_trial(study, None).number == WINNER
    assert [t.number for t in feasible_best_trials(study)] == [WINNER]


def test_the_feasible_front_leaves_out_an_infeasible_trial_that_dominates(
    any_url: str, study_name: str, tmp_path: Path
) -> None:
    (tmp_path / "run").mkdir(exist_ok=True)
    study = build(any_url, study_name, multi=True)
    front = {t.number for t in feasible_best_trials(study)}
    assert INFEASIBLE not in front
    assert front == {t.number for t in study.best_trials}
    assert WINNER in front


def _study_id(base: str, name: str, deadline: float, proc: subprocess.Popen[str]) -> int:
    summaries = json.loads(get(f"{base}/api/studies", deadline, proc))
    [found] = [s for s in summaries["study_summaries"] if s["study_name"] == name]
    return int(found["study_id"])


def test_the_dashboard_api_reports_constraints_and_the_feasible_multi_objective_front(
    any_url: str, study_name: str, tmp_path: Path
) -> None:
    (tmp_path / "run").mkdir(exist_ok=True)
    study = build(any_url, study_name, multi=True)
    proc, base = serve_dashboard(any_url, study_name, tmp_path)
    try:
        deadline = time.monotonic() + 120
        study_id = _study_id(base, study_name, deadline, proc)
        detail = json.loads(get(f"{base}/api/studies/{study_id}", deadline, proc))
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    by_number = {t["number"]: t for t in detail["trials"]}
    assert by_number[INFEASIBLE]["constraints"] == [-0.1, 3.0]
    assert all(by_number[n]["constraints"] for n in TRIALS)
    shown = {t["number"] for t in detail["best_trials"]}
    assert shown == {t.number for t in study.best_trials}
    assert INFEASIBLE not in shown


def test_the_dashboard_shows_the_feasible_winner_as_best_in_a_browser(
    any_url: str, study_name: str, tmp_path: Path
) -> None:
    """Screenshots of the study page and the best trial's page are kept in
    `$HPO_TEST_ARTIFACTS` (default: <tmp>/steering-hpo-test-artifacts)."""
    from playwright.sync_api import sync_playwright

    (tmp_path / "run").mkdir(exist_ok=True)
    study = build(any_url, study_name)
    backend = "postgresql" if any_url.startswith("postgresql") else "sqlite"
    flag = "storage=postgres" if backend == "postgresql" else "storage=sqlite"
    status = subprocess.run(
        [
            sys.executable,
            "-m",
            "hpo",
            "status",
            flag,
            f"study.name={study_name}",
            f"output_dir={tmp_path}",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "HPO_STORAGE_URL": any_url},
        timeout=120,
    )
    assert status.returncode == 0, status.stderr
    assert f"best      feasible trial {WINNER}: 0.6500" in status.stdout
    # reading a study some other tool made writes nothing into it
    again = optuna.load_study(study_name=study_name, storage=any_url)
    assert len(again.trials) == len(TRIALS)
    assert CONFIG_ATTR not in again.user_attrs
    keep = Path(
        os.environ.get("HPO_TEST_ARTIFACTS")
        or Path(tempfile.gettempdir()) / "steering-hpo-test-artifacts"
    )
    keep.mkdir(parents=True, exist_ok=True)
    proc, base = serve_dashboard(any_url, study_name, tmp_path)
    try:
        deadline = time.monotonic() + 120
        study_id = _study_id(base, study_name, deadline, proc)
        detail = json.loads(get(f"{base}/api/studies/{study_id}", deadline, proc))
        assert [t["number"] for t in detail["best_trials"]] == [WINNER]
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path="/usr/bin/chromium",
                args=["--no-sandbox", "--disable-background-networking"],
            )
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{base}/dashboard/studies/{study_id}")
            page.get_by_text(f"Best Trial (number={WINNER})").wait_for(timeout=30_000)
            assert f"Best Trial (number={INFEASIBLE})" not in page.inner_text("body")
            page.wait_for_function(
                "Array.from(document.querySelectorAll('.js-plotly-plot'))"
                ".some(g => (g.data || []).some(t => (t.name || '').startsWith('Best Value')))",
                timeout=30_000,
            )
            page.wait_for_timeout(1500)  # let the other plots draw before the screenshot
            traces = page.evaluate(
                "Array.from(document.querySelectorAll('.js-plotly-plot')).flatMap("
                "g => (g.data || []).map(t => ({name: t.name || '', y: Array.from(t.y || []),"
                " text: Array.from(t.text || [])})))"
            )
            page.screenshot(path=str(tmp_path / f"dashboard_feasible_study_{backend}.png"))
            page.goto(f"{base}/dashboard/studies/{study_id}/trials?numbers={WINNER}")
            page.get_by_text(f"Trial {WINNER} (trial_id=").wait_for(timeout=30_000)
            trial_page = page.inner_text("body")
            page.screenshot(path=str(tmp_path / f"dashboard_feasible_trial_{backend}.png"))
            browser.close()
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    _check_history(traces, study)
    assert "Best Trial" in trial_page  # the chip on the winner's own page
    assert f"{FEASIBLE_ATTR} true" in trial_page.lower()
    for shot in tmp_path.glob("dashboard_feasible_*.png"):
        assert shot.stat().st_size > 20_000
        shutil.copy(shot, keep / shot.name)


def _check_history(traces: list[dict[str, Any]], study: optuna.Study) -> None:
    """The history plot: the best-value line never reaches the infeasible score, and the
    infeasible trial is its own grey trace."""
    [best] = [t for t in traces if t["name"].startswith("Best Value")]
    assert max(best["y"]) == pytest.approx(TRIALS[WINNER][1])
    infeasible = [t for t in traces if t["name"].startswith("Infeasible Trial")]
    assert infeasible, [t["name"] for t in traces]
    assert TRIALS[INFEASIBLE][1] in infeasible[0]["y"]
    feasible_points = [
        y for t in traces if t["name"].startswith("Objective Value") for y in t["y"]
    ]
    assert TRIALS[INFEASIBLE][1] not in feasible_points
    assert study.trials[INFEASIBLE].value == TRIALS[INFEASIBLE][1]


def test_an_infeasible_export_trial_is_refused_naming_its_constraints_once(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = build(url, "s")
    with pytest.raises(UserError, match=r"export\.trial=2 is infeasible") as refused:
        pick_trial(study, INFEASIBLE)
    assert "'kl': 3.0" in str(refused.value)
    assert "'0'" not in str(refused.value)  # not the dashboard's numbered copies
