"""What `hpo dashboard` shows besides numbers: the study note and the best trials' artifacts.

Artifacts go to an `optuna.artifacts.FileSystemArtifactStore` (`artifacts_dir`, shared by all
workers of a study: a network filesystem on a cluster). A trial that becomes the best feasible
steered trial so far uploads its vector (safetensors), its per-item validation scores (CSV, with
the generated text for generation tasks) and a PNG of those scores against the baseline.
"""

from __future__ import annotations

import csv
import logging
import tempfile
from pathlib import Path
from typing import Any

import optuna
import torch
from safetensors.torch import save_file

from hpo.core.record import BASELINE_VALUE_ATTR, steered_trials

log = logging.getLogger(__name__)


def artifact_store(directory: str | Path) -> Any:
    """A filesystem artifact store rooted at `directory` (created if missing)."""
    from optuna.artifacts import FileSystemArtifactStore

    path = Path(directory).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return FileSystemArtifactStore(str(path))


def is_best_so_far(study: optuna.Study, number: int, value: float) -> bool:
    """Whether `value` beats every completed, feasible steered trial other than `number`."""
    others = [t.value for t in steered_trials(study) if t.number != number and t.value is not None]
    if not others:
        return True
    if study.direction == optuna.study.StudyDirection.MAXIMIZE:
        return value > max(others)
    return value < min(others)


def write_scores_csv(
    path: Path,
    per_item: list[float],
    prompts: list[str] | None,
    texts: list[str] | None,
    baseline: list[float] | None,
) -> None:
    """One row per validation item: its score, the baseline's, the prompt and generated text."""
    with path.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["item", "score", "baseline_score", "prompt", "text"])
        for i, score in enumerate(per_item):
            out.writerow(
                [
                    i,
                    f"{score:.6f}",
                    "" if baseline is None or i >= len(baseline) else f"{baseline[i]:.6f}",
                    "" if prompts is None or i >= len(prompts) else prompts[i],
                    "" if texts is None or i >= len(texts) else texts[i],
                ]
            )


def plot_scores(
    path: Path,
    number: int,
    per_item: list[float],
    baseline: list[float] | None,
    baseline_value: float | None,
    label: str,
) -> None:
    """Per-item validation scores of a trial (sorted), the baseline's beside them, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    order = sorted(range(len(per_item)), key=lambda i: per_item[i])
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    ax.bar(range(len(order)), [per_item[i] for i in order], color="tab:blue", label="steered")
    if baseline is not None and len(baseline) == len(per_item):
        ax.scatter(
            range(len(order)),
            [baseline[i] for i in order],
            color="black",
            s=18,
            zorder=3,
            label="unsteered (same item)",
        )
    mean = sum(per_item) / max(len(per_item), 1)
    ax.axhline(mean, color="tab:blue", linestyle=":", label=f"steered mean {mean:.4f}")
    if baseline_value is not None:
        ax.axhline(
            baseline_value, color="tab:red", linestyle="--", label=f"baseline {baseline_value:.4f}"
        )
    ax.set_title(f"Trial {number}: per-item validation scores (sorted)")
    ax.set_xlabel("validation item (sorted by steered score)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(label)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def upload_best(
    store: Any,
    trial: optuna.Trial,
    vectors: dict[int, torch.Tensor],
    result: Any,
    prompts: list[str] | None,
    baseline: list[float] | None,
    label: str,
) -> list[str]:
    """Upload a best-so-far trial's vector, per-item CSV and plot; returns the artifact ids."""
    from optuna.artifacts import upload_artifact

    ids = []
    baseline_value = trial.study.user_attrs.get(BASELINE_VALUE_ATTR)
    with tempfile.TemporaryDirectory(prefix="hpo-artifacts-") as tmp:
        root = Path(tmp)
        vec = root / f"trial{trial.number}_steering_vector.safetensors"
        save_file(
            {f"layer.{k}": v.detach().float().cpu().contiguous() for k, v in vectors.items()},
            str(vec),
        )
        table = root / f"trial{trial.number}_validation_scores.csv"
        write_scores_csv(table, result.per_item, prompts, result.texts, baseline)
        png = root / f"trial{trial.number}_validation_scores.png"
        plot_scores(png, trial.number, result.per_item, baseline, baseline_value, label)
        for path, mime in (
            (vec, "application/octet-stream"),
            (table, "text/csv"),
            (png, "image/png"),
        ):
            ids.append(
                upload_artifact(
                    artifact_store=store, file_path=str(path), study_or_trial=trial, mimetype=mime
                )
            )
    return ids
