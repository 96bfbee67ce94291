"""`hpo status`: one screen on a study's state."""

from __future__ import annotations

import time
from collections import Counter

import optuna
from optuna.trial import TrialState

from hpo.core.placement import describe
from hpo.core.record import (
    DEVICE_ATTR,
    FAIL_REASON_ATTR,
    PROMPTED_FEASIBLE_ATTR,
    format_params,
    is_baseline,
    is_prompted,
    summary,
)


def _directions(study: optuna.Study) -> str:
    names = study.metric_names
    dirs = [d.name.lower() for d in study.directions]
    if names is None:
        return ", ".join(dirs)
    return ", ".join(f"{n} ({d})" for n, d in zip(names, dirs, strict=True))


def render_status(study: optuna.Study, url: str) -> str:
    """Trials by state, baseline, best so far, running and failed trials with reasons."""
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name for t in trials)
    info = summary(study)
    lines = [
        f"study     {study.study_name}  ({url})",
        f"direction {_directions(study)}",
        "trials    "
        + ", ".join(f"{state.name} {counts.get(state.name, 0)}" for state in TrialState),
    ]
    baseline = info["baseline"]
    lines.append(f"baseline  {'n/a' if baseline is None else f'{baseline:.4f}'} (alpha = 0)")
    prompted = info["prompted"]
    if prompted is not None or any(is_prompted(t) for t in trials):
        shown = "n/a" if prompted is None else f"{prompted:.4f}"
        gain = (
            "" if prompted is None or baseline is None else f" (delta {prompted - baseline:+.4f})"
        )
        broken = study.user_attrs.get(PROMPTED_FEASIBLE_ATTR) is False
        lines.append(
            f"prompted  {shown}{gain} (alpha = 0, with the task's instruction)"
            + ("  INFEASIBLE" if broken else "")
        )
    if info["n_infeasible"]:
        lines.append(
            f"feasible  {info['n_feasible']} steered trials pass the "
            f"constraints (fluency, kl), {info['n_infeasible']} do not (never exported)"
        )
    if info["best_trial"] is not None:
        delta = "" if baseline is None else f" (delta {info['best_value'] - baseline:+.4f}"
        if delta and prompted is not None:
            delta += f", vs prompted {info['best_value'] - prompted:+.4f}"
        delta += ")" if delta else ""
        lines.append(
            f"best      feasible trial {info['best_trial']}: {info['best_value']:.4f}{delta}  "
            f"{format_params(info['best_params'])}"
        )
    if info["front"] is not None:
        lines.append(
            f"pareto    {len(info['front'])} feasible trials on the front "
            "(`hpo export` picks one by export.rule)"
        )
        names = study.metric_names or [f"v{i}" for i in range(len(study.directions))]
        by_number = {t.number: t for t in trials}
        for number in info["front"]:
            t = by_number[number]
            values = " ".join(f"{n}={v:.4f}" for n, v in zip(names, t.values or [], strict=False))
            tag = " (baseline)" if is_baseline(t) else " (prompted)" if is_prompted(t) else ""
            lines.append(f"  trial {number}{tag}: {values}  {format_params(t.params)}")
    now = time.time()
    for t in trials:
        if t.state == TrialState.RUNNING:
            age = now - t.datetime_start.timestamp() if t.datetime_start else 0.0
            lines.append(
                f"running   trial {t.number} on {describe(t.user_attrs)} "
                f"({t.user_attrs.get(DEVICE_ATTR, '?')}) "
                f"for {age:.0f}s  {format_params(t.params)}"
            )
        elif t.state == TrialState.FAIL:
            reason = t.user_attrs.get(FAIL_REASON_ATTR) or t.system_attrs.get(
                FAIL_REASON_ATTR, "no reason recorded (worker died?)"
            )
            lines.append(f"failed    trial {t.number}: {reason}")
    retries = [
        f"{t.number} (of {t.system_attrs['failed_trial']}, {t.state.name})"
        for t in trials
        if "failed_trial" in t.system_attrs
    ]
    if retries:
        lines.append(f"retries   {', '.join(retries)}")
    flag = [t.number for t in trials if is_baseline(t)]
    if flag:
        lines.append(f"baseline trial(s): {flag}")
    flag = [t.number for t in trials if is_prompted(t)]
    if flag:
        lines.append(f"prompted baseline trial(s): {flag}")
    return "\n".join(lines)
