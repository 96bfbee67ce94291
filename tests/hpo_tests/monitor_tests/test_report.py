"""`hpo report`: the charts of a real (tiny) study, their axes, the PNG files and the HTML page."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import optuna
import pytest

from hpo.core.record import metric_label
from hpo.monitor.report import figures, write_report
from tests.hpo_tests.run_tests.test_study import run_study, tiny_run

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> optuna.Study:
    out = tmp_path_factory.mktemp("report-run")
    cfg = tiny_run(
        tiny_model_dir,
        out,
        "study.n_trials=5",
        "artifacts_dir=null",
        "task.objective.batch_size=2",  # two batches per trial: intermediate values to plot
    )
    return run_study(cfg)[0]


def labels(fig: Any) -> list[tuple[str, str, str]]:
    return [(ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes]


def test_metric_label_names_the_unit() -> None:
    assert metric_label("generation", "sentiment") == (
        "validation score (mean VADER compound, -1 to 1)"
    )
    assert metric_label("choice_probability", None) == "validation score (P(target answer), 0-1)"
    assert metric_label("generation", "math") == "validation score (accuracy (math-verify), 0-1)"
    assert metric_label("new_kind", None) == "validation score (new_kind score)"


def test_every_chart_has_a_title_and_axis_labels(study: optuna.Study) -> None:
    label = metric_label("choice_probability", None)
    figs = figures(study, label, "relative")
    assert set(figs) == {"history", "layer_alpha", "importances", "intermediate"}
    title, x, y = labels(figs["history"])[0]
    assert title == "Optimization history of study 'sycophancy'"
    assert (x, y) == ("trial number", label)
    baseline = study.trials[0].value
    lines = figs["history"].axes[0].get_lines()
    assert any(list(line.get_ydata()) == [baseline, baseline] for line in lines)
    legend = [t.get_text() for t in figs["history"].axes[0].get_legend().texts]
    assert f"baseline (alpha = 0) {baseline:.4f}" in legend
    assert "chance (uniform answers) 0.5000" in legend  # A/B: the level of uniform answers
    main, colorbar = figs["layer_alpha"].axes
    assert main.get_title().startswith("Validation score over layer x alpha")
    assert main.get_xlabel() == "layer (0-based decoder block whose output is steered)"
    assert main.get_ylabel() == "alpha (relative scale, x mean activation norm)"
    assert colorbar.get_ylabel() == label
    steered = [t for t in study.trials if not t.user_attrs.get("baseline")]
    points = main.collections[0].get_offsets()
    assert sorted(map(tuple, points.tolist())) == sorted(
        (t.params["layer"], t.params["alpha"]) for t in steered
    )
    title, x, y = labels(figs["importances"])[0]
    assert title == "Parameter importances (fANOVA, steered trials)"
    assert x.startswith("importance (fraction") and y == "parameter"
    title, x, y = labels(figs["intermediate"])[0]
    assert title.startswith("Intermediate values")
    assert (x, y) == ("validation batch (step)", "running validation score")


def test_report_writes_nonempty_pngs_and_one_self_contained_html(
    study: optuna.Study, tmp_path: Path
) -> None:
    paths = write_report(study, tmp_path / "r", "validation score", "relative", ["study x"])
    pngs = {k: p for k, p in paths.items() if k != "html"}
    assert set(pngs) == {"history", "layer_alpha", "importances", "intermediate"}
    for path in pngs.values():
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    page = paths["html"].read_text()
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(embedded) == 4
    assert base64.b64decode(embedded[0]) == pngs["history"].read_bytes()
    assert "<pre>study x</pre>" in page
    assert re.findall(r'(?:src|href)="(?!data:)', page) == []  # nothing fetched from elsewhere


def test_study_without_steered_trials_gives_no_charts(tmp_path: Path) -> None:
    empty = optuna.create_study(study_name="empty")
    paths = write_report(empty, tmp_path, "validation score", "relative", ["nothing yet"])
    assert list(paths) == ["html"]
    assert "nothing yet" in paths["html"].read_text()


def test_single_batch_studies_get_no_intermediate_chart() -> None:
    study = optuna.create_study(direction="maximize")
    for value in (0.2, 0.5, 0.4):
        trial = study.ask()
        trial.suggest_int("layer", 1, 5)
        trial.suggest_float("alpha", 0.0, 1.0)
        trial.report(value, 0)
        study.tell(trial, value)
    assert "intermediate" not in figures(study, "score", "absolute")


def test_multi_objective_study_gets_a_pareto_front(tmp_path: Path) -> None:
    study = optuna.create_study(directions=["maximize", "minimize"], study_name="mo")
    for score, kl in ((0.1, 0.05), (0.5, 0.4), (0.4, 0.9)):
        trial = study.ask()
        trial.suggest_int("layer", 1, 9)
        trial.suggest_float("alpha", 0.0, 1.2)
        study.tell(trial, [score, kl])
    figs = figures(study, "validation score", "relative")
    assert {"history", "layer_alpha", "pareto"} <= set(figs)
    ax = figs["pareto"].axes[0]
    assert ax.get_title() == "Pareto front (steered trials)"
    assert (ax.get_xlabel(), ax.get_ylabel()) == (
        "objective 0 (maximize)",
        "objective 1 (minimize)",
    )
    assert "Pareto-optimal trial" in [t.get_text() for t in ax.get_legend().texts]
    paths = write_report(study, tmp_path, "validation score", "relative", ["mo"])
    assert paths["pareto"].read_bytes().startswith(PNG_MAGIC)
