"""`hpo layers`: the per-layer attribution table and its plot, from the plain ranking record
(`hpo.run.layer_selection.LayerRanking.record`), so monitoring needs no steering code."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any


def render_table(record: dict[str, Any]) -> str:
    """One line per layer: effect per unit alpha, its standard error, the predicted gain at the
    favourable alpha bound, and marks for the search range and the top layers."""
    top = {layer: rank for rank, layer in enumerate(record["top"], 1)}
    low, high = record["window"]
    lines = [
        f"attribution: {record['method']} vectors ({record['aggregation']} aggregation, "
        f"alpha_scale {record['alpha_scale']}) at positions {record['positions']}; quantity: "
        f"{_quantity(record)} on {record['pairs']} train pairs",
        f"{'layer':>5}  {'effect/alpha':>12}  {'stderr':>8}  {'gain':>9}  ",
    ]
    for row in record["layers"]:
        layer = row["layer"]
        marks = []
        if layer in top:
            marks.append(f"top {top[layer]}")
        if low <= layer <= high:
            marks.append("window")
        if layer not in record["candidates"]:
            marks.append("outside search_space.layers")
        lines.append(
            f"{layer:>5}  {row['effect']:>12.4f}  {row['stderr']:>8.4f}  {row['gain']:>9.4f}  "
            f"{', '.join(marks)}".rstrip()
        )
    a_low, a_high = record["alpha"]
    lines.append(
        f"gain = max(alpha.low * effect, alpha.high * effect) with alpha in [{a_low}, {a_high}]; "
        f"top layers {record['top']}, narrowed window [{low}, {high}]"
    )
    return "\n".join(lines)


def _quantity(record: dict[str, Any]) -> str:
    if record["quantity"] == "letter":
        return "answer-letter log-odds (positive vs negative letter)"
    return f"log-odds of the positive vs negative completion ({record['reduce']} over tokens)"


def plot_layers(record: dict[str, Any], path: Path, title: str = "") -> Path:
    """Bar chart of the effect per layer (+- 1.96 stderr), top layers and window marked.

    Written to a temp file and renamed, like every other artifact.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = record["layers"]
    layers = [r["layer"] for r in rows]
    effects = [r["effect"] for r in rows]
    errors = [1.96 * r["stderr"] for r in rows]
    top = set(record["top"])
    colours = ["tab:orange" if layer in top else "tab:blue" for layer in layers]
    fig, ax = plt.subplots(figsize=(9, 4))
    low, high = record["window"]
    ax.axvspan(low - 0.5, high + 0.5, color="tab:green", alpha=0.12, label="narrowed window")
    ax.bar(layers, effects, yerr=errors, color=colours, capsize=2, ecolor="0.4")
    ax.axhline(0.0, color="0.3", linewidth=0.8)
    cands = record["candidates"]
    ax.axvline(cands[0] - 0.5, color="0.5", linestyle=":", linewidth=1)
    ax.axvline(cands[-1] + 0.5, color="0.5", linestyle=":", linewidth=1, label="search range")
    ax.set_xlabel("layer (block output)")
    ax.set_ylabel("d log-odds / d alpha (bars: 95% CI)")
    ax.set_xticks(layers[:: max(1, len(layers) // 15)])
    ax.set_title(title or f"attribution per layer ({record['method']}, {record['aggregation']})")
    handles, _ = ax.get_legend_handles_labels()
    handles += [
        Patch(color="tab:orange", label=f"top {len(top)} by predicted gain"),
        Patch(color="tab:blue", label="other layers"),
    ]
    ax.legend(handles=handles, loc="best", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, format="png")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
