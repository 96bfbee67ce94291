"""`hpo report`: a study's plots as PNG files and one self-contained HTML page.

Every chart is drawn by Optuna's `optuna.visualization.matplotlib` or plain matplotlib calls:
optimization history with the unsteered baseline as a line, score over layer x alpha, parameter
importances, intermediate values (what pruning saw), and the Pareto front of a multi-objective
study. The baseline trial (alpha = 0, possibly outside the alpha range) is drawn as a line, not
as a point, so it does not stretch the axes.
"""

from __future__ import annotations

import base64
import html
import logging
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.core.chance import CHANCE_ATTR
from hpo.core.record import EXPORTED_ATTR, is_baseline, is_feasible, is_prompted, is_reference

log = logging.getLogger(__name__)

CHARTS = {"history", "layer_alpha", "importances", "intermediate", "pareto", "per_item"}


# What the number means, by scorer or objective kind: axis labels carry the unit.
def _title(ax: Any, text: str) -> None:
    """Replace Optuna's own (left-aligned) title with ours, so the two never overlap."""
    for loc in ("left", "right"):
        ax.set_title("", loc=loc)
    ax.set_title(text, fontsize=11)


def _steered_copy(study: optuna.Study) -> optuna.Study:
    """An in-memory copy of the study without the reference trials, for Optuna's plots."""
    copy = optuna.create_study(directions=study.directions, study_name=study.study_name)
    copy.add_trials([t for t in study.get_trials(deepcopy=False) if not is_reference(t)])
    if study.metric_names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # set_metric_names is experimental
            copy.set_metric_names(list(study.metric_names))
    return copy


def _baseline(study: optuna.Study, prompted: bool = False) -> FrozenTrial | None:
    """The unsteered baseline trial (`prompted`: the prompted one), once complete."""
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if is_prompted(t) if prompted else is_baseline(t):
            return t
    return None


def _names(study: optuna.Study, label: str) -> list[str]:
    names = study.metric_names
    if names:
        return list(names)
    return (
        [label]
        if len(study.directions) == 1
        else [f"objective {i}" for i in range(len(study.directions))]
    )


def history(study: optuna.Study, label: str) -> Any:
    """Every trial's score and the best so far by trial number, the baseline as a dashed line.

    Infeasible trials (fluency constraints) are grey and never count as the best.
    """
    from matplotlib.ticker import MaxNLocator
    from optuna.visualization.matplotlib import plot_optimization_history

    multi = len(study.directions) > 1
    name = _names(study, label)[0]
    ax = plot_optimization_history(
        study, target=(lambda t: t.values[0]) if multi else None, target_name=name
    )
    base = _baseline(study)
    if base is not None and base.values:
        ax.axhline(
            base.values[0],
            color="tab:red",
            linestyle="--",
            linewidth=1.5,
            label=f"baseline (alpha = 0) {base.values[0]:.4f}",
        )
    prompted = _baseline(study, prompted=True)
    if prompted is not None and prompted.values:
        ax.axhline(
            prompted.values[0],
            color="tab:purple",
            linestyle="--",
            linewidth=1.5,
            label=f"prompted baseline (instruction, alpha = 0) {prompted.values[0]:.4f}",
        )
    chance = study.user_attrs.get(CHANCE_ATTR)
    if chance is not None and not multi:
        ax.axhline(
            chance,
            color="tab:gray",
            linestyle=":",
            linewidth=1.5,
            label=f"chance (uniform answers) {chance:.4f}",
        )
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not multi:
        _best_so_far(ax, study, done)
    if any(not is_feasible(t) for t in done):
        ax.scatter([], [], color="#cccccc", label="infeasible trial (fluency, kl)")
    ax.legend(loc="best", fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _title(ax, f"Optimization history of study {study.study_name!r}")
    ax.set_xlabel("trial number")
    ax.set_ylabel(name)
    return ax.figure


def _best_so_far(ax: Any, study: optuna.Study, done: list[FrozenTrial]) -> None:
    """Optuna's "Best Value" line, redrawn over the trials that may win: the prompted baseline
    is a reference line of its own, never the best (export never ships it)."""
    optunas = [line for line in ax.get_lines() if line.get_label() == "Best Value"]
    color = optunas[0].get_color() if optunas else "tab:red"
    for line in optunas:
        line.remove()
    sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
    xs: list[int] = []
    ys: list[float] = []
    best: float | None = None
    for t in sorted(done, key=lambda t: t.number):
        if is_feasible(t) and not is_prompted(t) and t.values:
            v = t.values[0]
            best = v if best is None or sign * v > sign * best else best
        if best is not None:
            xs.append(t.number)
            ys.append(best)
    ax.plot(xs, ys, color=color, alpha=0.5, label="Best Value")


def layer_alpha(study: optuna.Study, label: str, alpha_scale: str) -> Any:
    """Score over layer x alpha: one point per steered trial, coloured by its score."""
    import matplotlib.pyplot as plt

    trials = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        if not is_reference(t) and "layer" in t.params and "alpha" in t.params
    ]
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    feasible = [t for t in done if is_feasible(t)]
    infeasible = [t for t in done if not is_feasible(t)]
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    if feasible:
        points = ax.scatter(
            [t.params["layer"] for t in feasible],
            [t.params["alpha"] for t in feasible],
            c=[t.values[0] for t in feasible],
            cmap="viridis",
            s=70,
            edgecolors="black",
            linewidths=0.5,
            label="feasible (colour = score)",
            zorder=3,
        )
        fig.colorbar(points, ax=ax, label=_names(study, label)[0])
    if infeasible:
        ax.scatter(
            [t.params["layer"] for t in infeasible],
            [t.params["alpha"] for t in infeasible],
            marker="x",
            color="tab:red",
            s=60,
            label="infeasible (fluency)",
            zorder=3,
        )
    if pruned:
        ax.scatter(
            [t.params["layer"] for t in pruned],
            [t.params["alpha"] for t in pruned],
            facecolors="none",
            edgecolors="grey",
            s=60,
            label="pruned",
            zorder=2,
        )
    if feasible and len(study.directions) == 1:
        sign = 1 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1
        best = max(feasible, key=lambda t: sign * t.values[0])
        ax.scatter(
            [best.params["layer"]],
            [best.params["alpha"]],
            marker="*",
            s=320,
            color="gold",
            edgecolors="black",
            label=f"best: trial {best.number} ({best.values[0]:.4f})",
            zorder=4,
        )
    for t in done:
        ax.annotate(
            f"{t.values[0]:.2f}",
            (t.params["layer"], t.params["alpha"]),
            textcoords="offset points",
            xytext=(6, 6),
            fontsize=8,
        )
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    _title(ax, "Validation score over layer x alpha (steered trials, value beside each)")
    ax.set_xlabel("layer (0-based decoder block whose output is steered)")
    unit = "x mean activation norm" if alpha_scale == "relative" else "x raw vector"
    ax.set_ylabel(f"alpha ({alpha_scale} scale, {unit})")
    ax.grid(True, alpha=0.3)
    if trials:
        ax.legend(loc="best", fontsize=8)
    return fig


def per_item(items: dict[str, Any], label: str) -> Any:
    """Per test item, steered - unsteered (and prompted - unsteered), items sorted by their
    unsteered score: a gain carried by a few items while many backfire shows here."""
    import matplotlib.pyplot as plt

    unsteered = items["unsteered"]
    order = sorted(range(len(unsteered)), key=lambda i: unsteered[i])
    diffs = [items["steered"][i] - unsteered[i] for i in order]
    sign = 1.0 if items.get("direction", "maximize") == "maximize" else -1.0
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colours = [
        "tab:green" if sign * d > 0 else "tab:red" if sign * d < 0 else "grey" for d in diffs
    ]
    x = list(range(len(order)))
    ax.bar(x, diffs, color=colours, label="steered - unsteered (red: made worse)")
    if items.get("prompted"):
        ax.scatter(
            x,
            [items["prompted"][i] - unsteered[i] for i in order],
            marker="_",
            s=120,
            color="tab:purple",
            label="prompted - unsteered (the instruction alone)",
            zorder=3,
        )
    ax.axhline(0.0, color="black", linewidth=0.8)
    worse = items["n_worse"]
    _title(
        ax,
        f"Per-item effect on the held-out test split: {worse}/{items['n']} items worse "
        f"({100 * items['share_worse']:.0f}%)",
    )
    ax.set_xlabel("test item, sorted by its unsteered score (lowest left)")
    ax.set_ylabel(f"difference ({label.replace('validation score', 'test score')})")
    ax.legend(loc="best", fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    return fig


def importances(steered: optuna.Study, label: str) -> Any:
    """Which params explain the score (fANOVA over the steered trials)."""
    from optuna.visualization.matplotlib import plot_param_importances

    ax = plot_param_importances(steered, target=_target(steered), target_name=label)
    _title(ax, "Parameter importances (fANOVA, steered trials)")
    ax.set_xlabel("importance (fraction of the score's variance explained, sums to 1)")
    ax.set_ylabel("parameter")
    legend = ax.get_legend()
    if legend is not None:
        legend.remove()  # one objective: the legend only repeats the label
    return ax.figure


def intermediate(steered: optuna.Study, label: str) -> Any:
    """Running score after each validation batch: what the pruner compared."""
    from optuna.visualization.matplotlib import plot_intermediate_values

    ax = plot_intermediate_values(steered)
    _title(ax, "Intermediate values: running score per validation batch (what the pruner saw)")
    ax.set_xlabel("validation batch (step)")
    ax.set_ylabel("running validation score")
    legend = ax.get_legend()
    if legend is not None:
        legend.remove()  # one entry per trial: unreadable beyond a few trials
    return ax.figure


def pareto(steered: optuna.Study, label: str) -> Any:
    """The Pareto front of a multi-objective study (2 or 3 objectives)."""
    from optuna.visualization.matplotlib import plot_pareto_front

    names = [
        f"{name} ({direction.name.lower()})"
        for name, direction in zip(_names(steered, label), steered.directions, strict=True)
    ]
    ax = plot_pareto_front(steered, target_names=names)
    legend = ax.get_legend()
    if legend is not None:
        for text in legend.texts:
            if text.get_text() == "Best Trial":
                text.set_text("Pareto-optimal trial")
    _title(ax, "Pareto front (steered trials)")
    return ax.figure


def _target(study: optuna.Study) -> Any:
    return (lambda t: t.values[0]) if len(study.directions) > 1 else None


def figures(study: optuna.Study, label: str, alpha_scale: str = "relative") -> dict[str, Any]:
    """Every chart that applies to this study, by file stem. Charts needing more trials are
    skipped with a log line (e.g. importances need two completed steered trials)."""
    steered = _steered_copy(study)
    if not steered.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        log.info(
            "report: study %r has no completed steered trial yet: no charts", study.study_name
        )
        return {}
    makers: dict[str, Any] = {
        "history": lambda: history(study, label),
        "layer_alpha": lambda: layer_alpha(study, label, alpha_scale),
        "importances": lambda: importances(steered, label),
        "intermediate": lambda: intermediate(steered, label),
    }
    if (
        max((len(t.intermediate_values) for t in steered.get_trials(deepcopy=False)), default=0)
        < 2
    ):
        del makers["intermediate"]  # one batch per trial: nothing to compare along the way
    if len(study.directions) in (2, 3):
        makers["pareto"] = lambda: pareto(steered, label)
    items = (study.user_attrs.get(EXPORTED_ATTR) or {}).get("steerability")
    if items and items.get("n"):
        makers["per_item"] = lambda: per_item(items, label)
    out: dict[str, Any] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib backend experimental
        for name, make in makers.items():
            try:
                out[name] = make()
            except (ValueError, RuntimeError, ZeroDivisionError) as e:
                log.info("report: no %s chart (%s)", name, e)
    for fig in out.values():
        fig.set_size_inches(max(fig.get_size_inches()[0], 7.5), max(fig.get_size_inches()[1], 4.8))
        fig.tight_layout()
    return out


def write_report(
    study: optuna.Study, out_dir: str | Path, label: str, alpha_scale: str, summary: list[str]
) -> dict[str, Path]:
    """Write each chart as `<name>.png` and all of them into `report.html` (PNGs inlined)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    target = Path(out_dir).expanduser()
    target.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    charts = figures(study, label, alpha_scale)
    for stale in CHARTS - set(charts):  # from an earlier report of this study
        (target / f"{stale}.png").unlink(missing_ok=True)
    for name, fig in charts.items():
        path = target / f"{name}.png"
        tmp = path.with_suffix(".png.tmp")
        fig.savefig(tmp, dpi=110, format="png")
        plt.close(fig)
        tmp.replace(path)
        paths[name] = path
    page = target / "report.html"
    tmp_page = target / ".report.html.tmp"
    tmp_page.write_text(_html(study.study_name, summary, paths))
    tmp_page.replace(page)
    paths["html"] = page
    return paths


def _html(name: str, summary: list[str], pngs: dict[str, Path]) -> str:
    images = "\n".join(
        f'<figure><img alt="{key}" src="data:image/png;base64,'
        f'{base64.b64encode(path.read_bytes()).decode()}"><figcaption>{key}.png</figcaption>'
        "</figure>"
        for key, path in pngs.items()
    )
    rows = html.escape("\n".join(summary))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>steering-hpo report: {html.escape(name)}</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}}img{{max-width:100%}}
pre{{background:#f4f4f4;padding:1em;overflow-x:auto}}figure{{margin:2em 0}}</style></head>
<body><h1>steering-hpo report: {html.escape(name)}</h1>
<pre>{rows}</pre>
{images}
</body></html>
"""
