"""The study note optuna-dashboard shows (markdown): what is being steered and how to ship it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna

from hpo.core.placement import WORKER_ATTR
from hpo.core.record import (
    BASELINE_VALUE_ATTR,
    CONFIG_ATTR,
    DELTA_BASELINE_ATTR,
    DEVICE_ATTR,
    EXPORTED_ATTR,
    FEASIBLE_ATTR,
    PROMPTED_VALUE_ATTR,
    TIME_SCORE_ATTR,
    TIME_VECTOR_ATTR,
    VECTOR_NORM_ATTR,
    format_params,
    summary,
)

log = logging.getLogger(__name__)


def _fmt(value: Any) -> str:
    return "pending (trial 0, alpha = 0)" if value is None else f"{value:.4f}"


def export_record(
    meta: dict[str, Any], path: str | Path | None, reason: str | None = None
) -> dict[str, Any]:
    """What the study keeps about an export (`EXPORTED_ATTR`): plain data from steering.json.
    `path` None: nothing was shipped, for `reason`."""
    metrics = meta["metrics"]
    test = metrics["test"]
    kl = test.get("metrics", {}).get("kl")
    return {
        "bundle": None if path is None else str(path),
        "reason": reason,
        "trial": meta["study"]["trial"],
        "params": meta["study"]["params"],
        "test": {k: test.get(k) for k in ("baseline", "steered", "difference", "ci95", "n")},
        "kl": None if kl is None else kl["steered"],
        "vs_prompting": (test.get("vs_prompting") or {}).get("verdict"),
        # Per test item (the report's per-item chart), with the score's direction.
        "steerability": {
            **(test.get("steerability") or {}),
            "direction": meta["objective"]["direction"],
        }
        if test.get("steerability")
        else None,
        "warnings": list(metrics.get("warnings", [])),
    }


def record_export(
    study: optuna.Study,
    meta: dict[str, Any],
    path: str | Path | None,
    reason: str | None = None,
) -> None:
    """Keep the export's held-out result on the study and show it in the note (`path` None:
    nothing shipped, for `reason`). Errors are only logged: the bundle is written already."""
    try:
        study.set_user_attr(EXPORTED_ATTR, export_record(meta, path, reason))
    except Exception as e:  # a read-only database must not undo a written bundle
        log.warning("could not record the export on the study: %s", e)
        return
    refresh_note(study)


def export_section(exported: dict[str, Any] | None) -> str:
    """Markdown: the exported bundle and its held-out test result, interval and warnings."""
    if not exported:
        return ""
    test = exported["test"]
    lo, hi = test["ci95"] if test.get("ci95") else (float("nan"), float("nan"))
    kl = "" if exported.get("kl") is None else f"; KL on neutral prompts {exported['kl']:.4f}"
    warnings = exported.get("warnings") or []
    listed = "\n".join(f"- {w}" for w in warnings) if warnings else "- none"
    verdict = exported.get("vs_prompting")
    prompting = f"\nAgainst prompting (held-out test): {verdict}.\n" if verdict else ""
    if exported.get("bundle") is None:
        shipped = f"Nothing shipped: {exported.get('reason') or 'no bundle written'}."
    else:
        shipped = (
            f"Bundle `{exported['bundle']}` from trial {exported['trial']} "
            f"(`{format_params(exported['params'])}`)."
        )
    return f"""
## Exported

{shipped}

Held-out test (n={test["n"]}): {_fmt(test["baseline"])} -> **{_fmt(test["steered"])}**, \
difference {test["difference"]:+.4f} [95% CI {lo:+.4f}, {hi:+.4f}]{kl}.
{prompting}

Warnings:
{listed}
"""


def study_note(
    name: str,
    record: dict[str, Any],
    baseline: float | None,
    best: dict[str, Any] | None,
    exported: dict[str, Any] | None = None,
    prompted: float | None = None,
) -> str:
    """Markdown: model, task, search space, baseline, best so far, and the commands to ship.

    Args:
        name: the study's name.
        record: the resolved config the study was created with (`hpo.run.study.config_record`).
        baseline: the unsteered score, or None while the baseline trial has not finished.
        best: `{"number", "value", "params"}` of the best feasible steered trial, or None.
        exported: what the last `hpo export` shipped (`export_record`), or None.
        prompted: the prompted baseline's score (the unsteered model with the task's
            instruction), or None (no instruction, or its trial has not finished).
    """
    model, task, space = record["model"], record["task"], record["search_space"]
    objective = task["objective"]
    gguf = f" (`{model['gguf_file']}`)" if model.get("gguf_file") else ""
    splits = task["splits"]
    layers, alpha = space["layers"], space["alpha"]
    if best is None:
        best_line = "none yet"
    else:
        delta = "" if baseline is None else f" (delta {best['value'] - baseline:+.4f})"
        best_line = (
            f"trial {best['number']}: **{best['value']:.4f}**{delta}, "
            f"`{format_params(best['params'])}`; its vector, per-item scores (CSV) and plot "
            "are in the trial's Artifacts"
        )
    prompted_row = ""
    if task.get("instruction"):
        shown = "pending (alpha = 0)" if prompted is None else f"{prompted:.4f}"
        prompted_row = (
            f"| prompted baseline | {shown}: the unsteered model asked "
            f"({task.get('instruction_placement', 'user')} message) "
            f'"{task["instruction"]}" |\n'
        )
        if best is not None and prompted is not None:
            best_line += f" (vs prompted {best['value'] - prompted:+.4f})"
    where = f"output_dir={record['output_dir']} study.name={name}"
    if record["storage"]["url"].startswith("postgresql"):
        where = f"storage=postgres study.name={name}"
    scorer = f", scorer `{objective['scorer']}`" if objective.get("scorer") else ""
    return f"""# Steering study `{name}`

| | |
|---|---|
| model | `{model["name_or_path"]}`{gguf}, {model["dtype"]} |
| task | `{task["name"]}`: {task.get("description", "").strip() or "-"} |
| objective | `{objective["kind"]}`{scorer}, {objective["direction"]} on the validation split |
| splits | train {splits["train"]}, validation {splits["validation"]}, test {splits["test"]} \
(held out, scored only at export) |
| search space | layers {layers["low"]}-{layers["high"]}, alpha {alpha["low"]}-{alpha["high"]} \
({space["alpha_scale"]}), aggregation {space["aggregation"]}, method {space["method"]}, \
positions {space["positions"]} |
| baseline | {_fmt(baseline)} |
{prompted_row}| best so far | {best_line} |

User attributes of each trial: `{DELTA_BASELINE_ATTR}`, `{VECTOR_NORM_ATTR}`, `{TIME_SCORE_ATTR}`,
`{TIME_VECTOR_ATTR}`, `{WORKER_ATTR}`, `{DEVICE_ATTR}` (and `{FEASIBLE_ATTR}` plus fluency \
measures for generation tasks).

## Ship it

```bash
hpo export {where}     # best trial -> bundle, scored on the held-out test split
hpo report {where}     # PNG plots + report.html
hpo generate bundle={record["output_dir"]}/bundle prompt="..."   # unsteered vs steered
```
{export_section(exported)}"""


def refresh_note(study: optuna.Study, best: dict[str, Any] | None = None) -> None:
    """Write the study note with the baseline and `best` (default: the best feasible steered
    trial so far). Errors are only logged: the note is a convenience."""
    from optuna_dashboard import save_note

    record = study.user_attrs.get(CONFIG_ATTR)
    if not isinstance(record, dict):
        return
    if best is None and len(study.directions) == 1:
        info = summary(study)
        if info["best_trial"] is not None:
            best = {
                "number": info["best_trial"],
                "value": info["best_value"],
                "params": info["best_params"],
            }
    body = study_note(
        study.study_name,
        record,
        study.user_attrs.get(BASELINE_VALUE_ATTR),
        best,
        study.user_attrs.get(EXPORTED_ATTR),
        study.user_attrs.get(PROMPTED_VALUE_ATTR),
    )
    try:
        save_note(study, body)
    except Exception as e:  # the note is a convenience: never fail a trial over it
        log.warning("could not save the study note: %s", e)
