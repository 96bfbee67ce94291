"""Sample efficiency: how many trials TPE, random and grid search need to come close to the best
point of a score surface precomputed over layer x alpha on the shipped task (20 seeds each).

The surface (every grid point scored once by a real trial on SmolLM2, sycophancy task, choice
aggregation, `positions: prompt_end_onward`) is stored in `bench/data/`; the samplers then run as
pure Optuna studies over that lookup table, so this benchmark takes seconds.

    python -m bench.sample_efficiency [--quick]    # uses the stored surface
    python -m bench.sample_efficiency --regenerate # re-scores every grid point (~5 min)
"""

from __future__ import annotations

import csv
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import optuna

from bench.common import REPO, command, machine_line, publish, quick_flag, sycophancy

SURFACE = REPO / "bench" / "data" / "surface_sycophancy.csv"
LAYERS = list(range(3, 28, 2))
ALPHAS = [round(-1.0 + 0.2 * i, 1) for i in range(11)]
SEEDS = 20
MAX_TRIALS = len(LAYERS) * len(ALPHAS)  # grid search is sure to finish by then
THRESHOLDS = (0.99, 0.9)

Surface = dict[tuple[int, float], float]


def regenerate(path: Path = SURFACE) -> Surface:
    """Score every (layer, alpha) grid point with a real trial; resumes a partial CSV."""
    from hpo.run.study import prepare_worker

    surface = load_surface(path) if path.is_file() else {}
    worker = prepare_worker(sycophancy(70, 20, "search_space.positions=[prompt_end_onward]"))
    started = time.perf_counter()
    for layer in LAYERS:
        for alpha in ALPHAS:
            if (layer, alpha) in surface:
                continue
            params = {
                "layer": layer,
                "alpha": alpha,
                "aggregation": "choice",
                "method": "caa",
                "positions": "prompt_end_onward",
            }
            surface[(layer, alpha)] = worker.score(params, worker.validation).value
        _write(path, surface)  # after every layer, so an interrupted run resumes
        print(f"layer {layer} done ({time.perf_counter() - started:.0f} s)", flush=True)
    return surface


def _write(path: Path, surface: Surface) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["layer", "alpha", "score"])
        for (layer, alpha), value in sorted(surface.items()):
            writer.writerow([layer, alpha, f"{value:.8f}"])
    tmp.replace(path)


def load_surface(path: Path = SURFACE) -> Surface:
    """The stored grid of scores."""
    with path.open() as f:
        return {(int(r["layer"]), float(r["alpha"])): float(r["score"]) for r in csv.DictReader(f)}


def best_curve(sampler: optuna.samplers.BaseSampler, surface: Surface, stop: float) -> list[float]:
    """Best value after each trial, until it reaches `stop` or MAX_TRIALS trials ran."""
    study = optuna.create_study(direction="maximize", sampler=sampler)

    def objective(trial: optuna.Trial) -> float:
        layer = trial.suggest_int("layer", LAYERS[0], LAYERS[-1], step=LAYERS[1] - LAYERS[0])
        alpha = trial.suggest_categorical("alpha", ALPHAS)
        return surface[(layer, alpha)]

    curve: list[float] = []
    while len(curve) < MAX_TRIALS and (not curve or curve[-1] < stop):
        study.optimize(objective, n_trials=1)
        curve.append(study.best_value)
    return curve


def trials_to_reach(curve: list[float], target: float) -> int:
    """The first trial whose best value is >= target (MAX_TRIALS + 1 when none)."""
    return next((i + 1 for i, v in enumerate(curve) if v >= target), MAX_TRIALS + 1)


def _samplers(seed: int) -> dict[str, optuna.samplers.BaseSampler]:
    grid: dict[str, list[Any]] = {"layer": list(LAYERS), "alpha": list(ALPHAS)}
    return {
        "TPE": optuna.samplers.TPESampler(seed=seed),
        "random": optuna.samplers.RandomSampler(seed=seed),
        "grid": optuna.samplers.GridSampler(grid, seed=seed),
    }


def _cell(values: list[int]) -> str:
    missed = sum(v > MAX_TRIALS for v in values)
    found = [v for v in values if v <= MAX_TRIALS]
    if not found:
        return f"> {MAX_TRIALS} (all seeds)"
    q = statistics.quantiles(values, n=4) if len(values) > 1 else [values[0]] * 3
    median = statistics.median(values)
    shown = f"> {MAX_TRIALS}" if median > MAX_TRIALS else f"{median:.0f}"
    text = f"{shown} (IQR {q[0]:.0f}-{min(q[2], MAX_TRIALS):.0f})"
    return text + (f", {missed} seeds > {MAX_TRIALS}" if missed else "")


def main(quick: bool = False) -> None:
    """Print the table of trials-to-target per sampler and rewrite the section."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not SURFACE.is_file() or len(load_surface(SURFACE)) < len(LAYERS) * len(ALPHAS):
        print(
            f"no stored surface at {SURFACE}: run `python -m bench.sample_efficiency --regenerate`"
        )
        return
    surface = load_surface(SURFACE)
    values = list(surface.values())
    best, worst = max(values), min(values)
    (best_layer, best_alpha) = max(surface, key=surface.__getitem__)
    baseline = statistics.median(v for (_, a), v in surface.items() if a == 0.0)
    seeds = 3 if quick else SEEDS
    targets = {f"{t:.0%} of optimum": t * best for t in THRESHOLDS}
    targets |= {f"{t:.0%} of range": worst + t * (best - worst) for t in THRESHOLDS}
    results: dict[str, dict[str, list[int]]] = {k: {} for k in targets}
    for seed in range(seeds):
        for name, sampler in _samplers(seed).items():
            curve = best_curve(sampler, surface, max(targets.values()))
            for label, target in targets.items():
                results[label].setdefault(name, []).append(trials_to_reach(curve, target))
    names = list(_samplers(0))
    lines = [
        f"Surface: layers {LAYERS[0]}-{LAYERS[-1]} step {LAYERS[1] - LAYERS[0]} x alpha "
        f"{ALPHAS[0]}..{ALPHAS[-1]} step 0.2 = {len(surface)} points; SmolLM2-135M, sycophancy "
        "(70 train items, 20 validation items, letter-balanced), CAA, choice aggregation, "
        f"`prompt_end_onward`; `{SURFACE.relative_to(REPO)}`. Optimum {best:.4f} at layer "
        f"{best_layer}, alpha {best_alpha}; worst {worst:.4f}; alpha = 0 {baseline:.4f}. "
        "'x of optimum': best value >= x * optimum; 'x of range': best value >= worst + "
        "x * (optimum - worst) (the stricter test on a surface this flat).",
        "",
        f"Trials to reach the target, median (interquartile range) over {seeds} seeds, "
        f"capped at {MAX_TRIALS}:",
        "",
        f"| target | {' | '.join(names)} |",
        "|---" * (len(names) + 1) + "|",
    ]
    for label in targets:
        lines.append(f"| {label} | {' | '.join(_cell(results[label][n]) for n in names)} |")
    expected = (len(surface) + 1) / (sum(v >= targets["99% of range"] for v in values) + 1)
    lines += [
        "",
        f"A uniform random draw needs about {expected:.0f} trials on average for '99% of range' "
        f"({len(surface)} grid points).",
        "",
        machine_line(command("sample_efficiency", quick)),
    ]
    publish(
        "sample_efficiency", "Sample efficiency (layer x alpha surface)", "\n".join(lines), quick
    )


if __name__ == "__main__":
    if "--regenerate" in sys.argv[1:]:
        regenerate()
    main(quick=quick_flag())
