"""Attribution-patching layer selection: does it predict the real per-layer effect, and how many
trials does it save?

On the shipped model and the sentiment demo task (generation, VADER score, fluency constraint):

1. `hpo.run.layer_selection.rank_layers` attributes every layer (one forward + one backward pass
   per batch of train pairs).
2. A real sweep scores every layer of the search range at a few fixed alphas (steered trials on
   the validation split), plus the real (not linearised) change of the attributed quantity at
   the smallest alpha. Spearman rank correlations compare them with the attribution.
3. TPE studies (the project's sampler config, same seeds) run over that real surface as a lookup
   table (suggested alpha snapped to the nearest swept alpha), once plain, once with
   `layer_selection: enqueue` and once with `narrow` (the real `enqueue_params` / `narrowed`),
   and count the trials each needs to reach 99% (and 95%) of the surface's best feasible score.

Scaled down to fit ~15 minutes on 2 shared cores: 8 validation prompts, 12 new tokens, KL side
metric off, one aggregation (`mean`) and positions `all`. The surface is stored in
`bench/data/` and reused (like `bench.sample_efficiency`); `--regenerate` re-scores it.

    python -m bench.attribution [--quick] [--regenerate]
"""

from __future__ import annotations

import csv
import functools
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from bench.common import REPO, command, compose, machine_line, publish, quick_flag

SURFACE = REPO / "bench" / "data" / "surface_sentiment.csv"
RANKING = REPO / "bench" / "data" / "attribution_sentiment.json"
ALPHAS = (0.2, 0.4, 0.6)
PAIRS = 40
SEEDS = 20
CAP = 60  # trials per study (the baseline included) before it counts as "not reached"
THRESHOLDS = (0.99, 0.95, 0.9, 0.85)
ARMS = ("none", "enqueue", "narrow")
OVERRIDES = (
    "experiment=demo",
    "task.splits.validation=8",
    "task.objective.max_new_tokens=12",
    "task.objective.kl.enabled=false",
    "search_space.aggregation=[mean]",
    "search_space.positions=[all]",
    "pruner=none",
    "search_space.layers.step=2",  # 13 layers: the sweep fits the time budget
    f"search_space.layer_selection.pairs={PAIRS}",
)

Surface = dict[tuple[int, float], tuple[float, bool]]


@functools.lru_cache(maxsize=8)
def config(mode: str = "none") -> Any:
    """The scaled-down demo config with a layer-selection mode."""
    return compose(*OVERRIDES, f"search_space.layer_selection.mode={mode}")


def _params(layer: int, alpha: float) -> dict[str, Any]:
    return {
        "layer": layer,
        "window": 1,
        "mode": "add",
        "alpha": alpha,
        "aggregation": "mean",
        "method": "caa",
        "positions": "all",
    }


def regenerate(layers: list[int] | None = None, alphas: tuple[float, ...] = ALPHAS) -> None:
    """Attribute, then score the (layer, alpha) surface; resumes a partial CSV."""
    import torch

    from hpo.run.layer_selection import rank_layers
    from hpo.run.tasks import load_task
    from hpo.steering.application import Application
    from hpo.steering.attribution import log_odds
    from hpo.steering.hooks import steer

    torch.set_num_threads(1)  # shared cores: one thread per process is fastest under load
    cfg = config()
    worker = prepare(cfg)
    started = time.perf_counter()
    ranking = rank_layers(worker)
    seconds = time.perf_counter() - started
    record = ranking.record(cfg.search_space.layer_selection.top_k)
    record["seconds"] = seconds
    record["baseline"] = worker.baseline_result(worker.validation, "validation").value
    pairs = worker.objective.train_pairs(load_task(cfg.task).train)[:PAIRS]
    q, reduce = record["quantity"], record["reduce"]
    unsteered = statistics.fmean(log_odds(worker.loaded, pairs, q, reduce))
    RANKING.write_text(json.dumps(record, indent=2) + "\n")
    rows = _read(SURFACE) if SURFACE.is_file() else {}
    loaded = worker.loaded
    for layer in layers or ranking.candidates:
        for alpha in alphas:
            if (layer, alpha) in rows:
                continue
            result = worker.score(_params(layer, alpha), worker.validation)
            feasible = all(v <= 0 for v in (result.constraints or {}).values())
            change = ""
            if alpha == alphas[0]:
                vector = worker.planner.builder.vector("caa", "mean", layer, "relative")
                with steer(
                    loaded.model,
                    loaded.blocks,
                    {layer: vector},
                    Application(alpha=alpha, positions="all"),
                ):
                    steered = statistics.fmean(log_odds(loaded, pairs, q, reduce))
                change = f"{steered - unsteered:.6f}"
            rows[(layer, alpha)] = {"score": result.value, "feasible": feasible, "logodds": change}
        _write(SURFACE, rows)
        print(f"layer {layer} scored ({time.perf_counter() - started:.0f} s)", flush=True)


def prepare(cfg: Any) -> Any:
    """The worker of the scaled-down config (model, cache, prepared validation split)."""
    from hpo.run.study import prepare_worker

    return prepare_worker(cfg)


def _write(path: Path, rows: dict[tuple[int, float], dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["layer", "alpha", "score", "feasible", "logodds_change"])
        for (layer, alpha), r in sorted(rows.items()):
            writer.writerow([layer, alpha, f"{r['score']:.6f}", int(r["feasible"]), r["logodds"]])
    tmp.replace(path)


def _read(path: Path) -> dict[tuple[int, float], dict[str, Any]]:
    with path.open() as f:
        return {
            (int(r["layer"]), float(r["alpha"])): {
                "score": float(r["score"]),
                "feasible": r["feasible"] == "1",
                "logodds": r["logodds_change"],
            }
            for r in csv.DictReader(f)
        }


def spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman's rank correlation (scipy's, ties averaged)."""
    from scipy.stats import spearmanr

    return float(spearmanr(xs, ys).statistic)


def best_curve(
    arm: str, seed: int, record: dict[str, Any], surface: Surface, baseline: float, stop: float
) -> list[float]:
    """Best feasible score after each trial of a TPE study (the project's sampler config, this
    seed) over the surface with the arm's layer selection, until it reaches `stop` or CAP."""
    import optuna
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from hpo.core.record import BASELINE_ATTR
    from hpo.run.layer_selection import enqueue_params, narrowed
    from search_spaces import baseline_params, suggest

    cfg = config(arm)
    space = cfg.search_space
    sampler = instantiate(OmegaConf.create({**cfg.sampler, "seed": seed}))
    study = optuna.create_study(direction="maximize", sampler=sampler)
    study.enqueue_trial(baseline_params(space), user_attrs={BASELINE_ATTR: True})
    if arm == "enqueue":
        for params in enqueue_params(space, record):
            study.enqueue_trial(params)
    if arm == "narrow":
        space = narrowed(space, record)
    alphas = sorted({a for _, a in surface})
    best, curve = -float("inf"), list[float]()
    while len(curve) < CAP and best < stop:
        trial = study.ask()
        params = suggest(trial, space, baseline=bool(trial.user_attrs.get(BASELINE_ATTR)))
        if params["alpha"] == 0:
            value, feasible = baseline, True
        else:
            alpha = min(alphas, key=lambda a: abs(a - params["alpha"]))
            value, feasible = surface[(int(params["layer"]), alpha)]
        study.tell(trial, value)
        best = max(best, value) if feasible else best
        curve.append(best)
    return curve


def trials_to_reach(curve: list[float], target: float) -> int:
    """The first trial whose best feasible score is >= target (CAP + 1 when none)."""
    return next((i + 1 for i, v in enumerate(curve) if v >= target), CAP + 1)


def _cell(values: list[int]) -> str:
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    median = statistics.median(values)
    shown = f"> {CAP}" if median > CAP else f"{median:.0f}"
    missed = sum(v > CAP for v in values)
    return f"{shown} (IQR {q[0]:.0f}-{min(q[2], CAP + 1):.0f})" + (
        f", {missed} > {CAP}" if missed else ""
    )


def main(quick: bool = False) -> None:
    """Print the correlation and trials-saved tables and rewrite the section."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", message="Fixed parameter", category=UserWarning)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    started = time.perf_counter()
    if not (RANKING.is_file() and SURFACE.is_file()) or "--regenerate" in sys.argv[1:]:
        regenerate(
            layers=[9, 14, 19, 24] if quick else None, alphas=ALPHAS[:2] if quick else ALPHAS
        )
    record = json.loads(RANKING.read_text())
    rows = {
        k: r for k, r in _read(SURFACE).items() if k[0] in record["candidates"] and k[1] in ALPHAS
    }
    surface: Surface = {k: (r["score"], r["feasible"]) for k, r in rows.items()}
    baseline = float(record["baseline"])
    effects = {r["layer"]: r["effect"] for r in record["layers"]}
    layers = sorted({layer for layer, _ in surface})
    alphas = sorted({a for _, a in surface})
    lines = [
        f"SmolLM2-135M, sentiment demo scaled down (8 validation prompts, 12 new tokens, KL off, "
        f"`mean` aggregation, positions `all`, CAA); attribution on {record['pairs']} train "
        f"pairs in {record['seconds']:.1f} s (one forward + backward per batch of 8 sequences, "
        f"all {len(record['layers'])} layers at once). Real sweep: {len(surface)} steered "
        f"trials (layers {layers[0]}-{layers[-1]} x alpha {', '.join(map(str, alphas))}); "
        f"unsteered score {baseline:.3f}. Data: `{SURFACE.relative_to(REPO)}`, "
        f"`{RANKING.relative_to(REPO)}`.",
        "",
        "| fixed alpha | Spearman(attribution, real score change) | feasible layers | "
        "real best layer | attribution top 3 |",
        "|---|---|---|---|---|",
    ]
    for alpha in alphas:
        xs = [effects[layer] for layer in layers]
        ys = [surface[(layer, alpha)][0] - baseline for layer in layers]
        feasible = sum(surface[(layer, alpha)][1] for layer in layers)
        best_layer = max(layers, key=lambda layer: surface[(layer, alpha)][0])
        lines.append(
            f"| {alpha} | {spearman(xs, ys):+.3f} | {feasible}/{len(layers)} | {best_layer} | "
            f"{record['top']} |"
        )
    linear = [(layer, float(rows[(layer, alphas[0])]["logodds"])) for layer in layers]
    rho_q = spearman([effects[x] for x, _ in linear], [y for _, y in linear])
    lines += [
        "",
        f"Spearman(attribution, real change of the attributed quantity itself at alpha "
        f"{alphas[0]}) = {rho_q:+.3f}: how well the first-order estimate ranks the quantity it "
        "linearises (the rows above add the step from that quantity to the scored behaviour).",
    ]
    feasible_scores = [v for v, ok in surface.values() if ok]
    optimum = max(feasible_scores)
    where = max((k for k, (v, ok) in surface.items() if ok), key=lambda k: surface[k][0])
    seeds = 3 if quick else SEEDS
    lines += [
        "",
        f"Trials (baseline included) for a TPE study to reach x% of the best feasible score "
        f"{optimum:.3f} (layer {where[0]}, alpha {where[1]}), median (IQR) over {seeds} seeds "
        f"0..{seeds - 1}, capped at {CAP}; `enqueue` runs layers {record['top']} first, "
        f"`narrow` searches layers {record['window'][0]}-{record['window'][1]} only; saved = "
        "median over seeds of (plain - with), same seed:",
        "",
        "| target | " + " | ".join(ARMS) + " | saved by enqueue | saved by narrow |",
        "|---" * (len(ARMS) + 3) + "|",
    ]
    curves = {
        arm: [
            best_curve(arm, seed, record, surface, baseline, max(THRESHOLDS) * optimum)
            for seed in range(seeds)
        ]
        for arm in ARMS
    }
    for t in THRESHOLDS:
        counts = {arm: [trials_to_reach(c, t * optimum) for c in curves[arm]] for arm in ARMS}
        saved = {
            arm: statistics.median(a - b for a, b in zip(counts["none"], counts[arm], strict=True))
            for arm in ARMS[1:]
        }
        lines.append(
            f"| {t:.0%} of best | "
            + " | ".join(_cell(counts[arm]) for arm in ARMS)
            + f" | {saved['enqueue']:+.0f} | {saved['narrow']:+.0f} |"
        )
    lines += [
        "",
        "Reading: the first-order estimate ranks the layers well where steering is still close "
        "to linear (smallest alpha, and the attributed quantity itself); at larger alpha the "
        "fluency constraint and saturation decide, which a gradient at alpha = 0 cannot see. "
        "So `enqueue` (a few good first trials, the full range still searched) helps, while "
        "`narrow` loses whenever the feasible optimum lies outside the window (here layer 9 at "
        "alpha 0.4, on 8 noisy prompts). The enqueued alpha (half the favourable bound, 0.6) is "
        "infeasible on this scaled-down surface; the help comes from the layers TPE then "
        "explores. Scoring the surface (attribution + 39 steered trials + 13 log-odds passes) "
        "took ~17 min under load; this table reuses it.",
        "",
        f"Total {time.perf_counter() - started:.0f} s.",
        "",
        machine_line(command("attribution", quick)),
    ]
    publish("attribution", "Attribution-patching layer selection", "\n".join(lines), quick)


if __name__ == "__main__":
    main(quick=quick_flag())
