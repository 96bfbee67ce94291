"""Sample efficiency: how many trials each sampler needs on this project's own score surfaces,
what it has found at a given budget, and what one ask costs (30 seeds, budgets up to 60).

Two stored layer x alpha surfaces (every grid point scored once by a real trial on SmolLM2) in
`bench/data/`: sycophancy (A/B choice, `prompt_end_onward`, 143 points, all feasible) and the
demo's sentiment generation (39 points, fluency-constrained: an infeasible point never counts as
found, and the samplers see it as Optuna's constraint, as in a real study). The samplers run as
pure Optuna studies over the lookup table (layer as an integer with the grid's step, alpha as a
float snapped to the nearest grid value, the way the shipped space suggests them), each built
from its shipped `conf/sampler/<name>.yaml`.

    python -m bench.sample_efficiency [--quick]    # uses the stored surfaces
    python -m bench.sample_efficiency --regenerate # re-scores the sycophancy grid (~5 min)
"""

from __future__ import annotations

import csv
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from bench.common import REPO, command, machine_line, publish, quick_flag, sycophancy

SURFACE = REPO / "bench" / "data" / "surface_sycophancy.csv"
SENTIMENT = REPO / "bench" / "data" / "surface_sentiment.csv"
LAYERS = list(range(3, 28, 2))
ALPHAS = [round(-1.0 + 0.2 * i, 1) for i in range(11)]
SEEDS = 30
BUDGET = 60
BUDGETS = (10, 20, 30, 60)
THRESHOLDS = (0.9, 0.99)
SAMPLERS = ("tpe", "gp", "qmc", "random")


@dataclass(frozen=True)
class Surface:
    """A stored grid: `(layer, alpha) -> (score, feasible)`, and how it was made."""

    name: str
    points: dict[tuple[int, float], tuple[float, bool]]
    about: str

    @property
    def layers(self) -> list[int]:
        return sorted({la for la, _ in self.points})

    @property
    def alphas(self) -> list[float]:
        return sorted({a for _, a in self.points})

    @property
    def best(self) -> float:
        return max(v for v, ok in self.points.values() if ok)

    @property
    def worst(self) -> float:
        return min(v for v, _ in self.points.values())


def regenerate(path: Path = SURFACE) -> None:
    """Score every sycophancy grid point with a real trial; resumes a partial CSV."""
    from hpo.run.study import prepare_worker

    surface = _read_scores(path) if path.is_file() else {}
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


def _write(path: Path, surface: dict[tuple[int, float], float]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["layer", "alpha", "score"])
        for (layer, alpha), value in sorted(surface.items()):
            writer.writerow([layer, alpha, f"{value:.8f}"])
    tmp.replace(path)


def _read_scores(path: Path) -> dict[tuple[int, float], float]:
    with path.open() as f:
        return {(int(r["layer"]), float(r["alpha"])): float(r["score"]) for r in csv.DictReader(f)}


def surfaces() -> list[Surface]:
    """The stored surfaces that are present."""
    out = []
    if SURFACE.is_file():
        points = {k: (v, True) for k, v in _read_scores(SURFACE).items()}
        out.append(Surface("sycophancy", points, "A/B choice, CAA, `prompt_end_onward`"))
    if SENTIMENT.is_file():
        with SENTIMENT.open() as f:
            rows = list(csv.DictReader(f))
        points = {
            (int(r["layer"]), float(r["alpha"])): (float(r["score"]), r["feasible"] == "1")
            for r in rows
        }
        out.append(Surface("sentiment", points, "demo generation, fluency-constrained"))
    return out


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    """The shipped `conf/sampler/<name>.yaml` with this seed (QMC: scrambled Sobol)."""
    if name == "qmc":
        return optuna.samplers.QMCSampler(
            scramble=True, seed=seed, warn_independent_sampling=False
        )
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    node = OmegaConf.load(REPO / "conf" / "sampler" / f"{name}.yaml")
    node.seed = seed
    return instantiate(node)


def run(
    surface: Surface, sampler: optuna.samplers.BaseSampler, budget: int
) -> tuple[list[float], list[float]]:
    """Best feasible score after each trial, and each ask's seconds (sampling included)."""
    layers, alphas = surface.layers, surface.alphas
    step = layers[1] - layers[0]
    study = optuna.create_study(direction="maximize", sampler=sampler)
    best, curve, asks = -float("inf"), [], []
    for _ in range(budget):
        started = time.perf_counter()
        trial = study.ask()
        layer = trial.suggest_int("layer", layers[0], layers[-1], step=step)
        raw = trial.suggest_float("alpha", alphas[0], alphas[-1])
        asks.append(time.perf_counter() - started)
        value, feasible = surface.points[(layer, min(alphas, key=lambda a: abs(a - raw)))]
        trial.set_constraint("fluency", 0.0 if feasible else 1.0)
        study.tell(trial, value)
        best = max(best, value) if feasible else best
        curve.append(best)
    return curve, asks


def trials_to(curve: list[float], target: float) -> int:
    """The first trial whose best value is >= target (len(curve) + 1 when none)."""
    return next((i + 1 for i, v in enumerate(curve) if v >= target), len(curve) + 1)


def _reach(values: list[int], cap: int) -> str:
    missed = sum(v > cap for v in values)
    if missed == len(values):
        return f"> {cap} (all)"
    q = statistics.quantiles(values, n=4)
    median = statistics.median(values)
    shown = f"> {cap}" if median > cap else f"{median:.0f}"
    return f"{shown} ({q[0]:.0f}-{min(q[2], cap + 1):.0f})" + (
        f", {missed} > {cap}" if missed else ""
    )


def measure(quick: bool) -> tuple[dict[tuple[str, str], dict[str, Any]], int, int]:
    """Every (surface, sampler): trials to each target, share of range found per budget, asks."""
    seeds, budget = (3, 20) if quick else (SEEDS, BUDGET)
    out: dict[tuple[str, str], dict[str, Any]] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TPE's `group`, GP's independent-sampling notes
        for surface in surfaces():
            span = surface.best - surface.worst
            for name in SAMPLERS:
                reach: dict[float, list[int]] = {t: [] for t in THRESHOLDS}
                found: dict[int, list[float]] = {b: [] for b in BUDGETS if b <= budget}
                asks: list[float] = []
                for seed in range(seeds):
                    curve, times = run(surface, make_sampler(name, seed), budget)
                    asks += times
                    for t in THRESHOLDS:
                        reach[t].append(trials_to(curve, surface.worst + t * span))
                    for b in found:
                        found[b].append((max(curve[b - 1], surface.worst) - surface.worst) / span)
                out[(surface.name, name)] = {"reach": reach, "found": found, "asks": asks}
    return out, seeds, budget


def main(quick: bool = False) -> None:
    """Print the per-surface tables and rewrite the section."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    present = surfaces()
    if not present:
        print(
            "no stored surface in bench/data/: "
            "run `python -m bench.sample_efficiency --regenerate`"
        )
        return
    results, seeds, budget = measure(quick)
    budgets = [b for b in BUDGETS if b <= budget]
    lines = [
        f"Samplers replayed over stored layer x alpha surfaces, {seeds} seeds each, budget "
        f"{budget} trials; each sampler is the shipped `conf/sampler/<name>.yaml` (TPE "
        "multivariate + group + constant liar, 5 startup trials; GP 10 startup trials) with the "
        "seed, QMC a scrambled Sobol sequence. 'reach x': trials until the best feasible score "
        "is >= worst + x * (best feasible - worst), median (interquartile range), seeds that "
        f"never reach it within {budget} counted; 'found at n': mean share of that range the "
        "best feasible score covers after n trials; 'ask': milliseconds per ask, mean (max).",
        "",
    ]
    for s in present:
        lines += [
            f"**{s.name}** ({s.about}; {len(s.points)} points, layers {s.layers[0]}-"
            f"{s.layers[-1]} x alpha {s.alphas}; best feasible {s.best:.4f}, worst {s.worst:.4f}, "
            f"{sum(not ok for _, ok in s.points.values())} infeasible):",
            "",
            "| sampler | reach 90% | reach 99% | "
            + " | ".join(f"found at {b}" for b in budgets)
            + " | ask, ms |",
            "|---" * (4 + len(budgets)) + "|",
        ]
        for name in SAMPLERS:
            r = results[(s.name, name)]
            found = " | ".join(f"{statistics.fmean(r['found'][b]):.3f}" for b in budgets)
            asks = r["asks"]
            lines.append(
                f"| {name} | {_reach(r['reach'][0.9], budget)} | "
                f"{_reach(r['reach'][0.99], budget)} | {found} | "
                f"{1e3 * statistics.fmean(asks):.1f} ({1e3 * max(asks):.0f}) |"
            )
        lines.append("")
    lines.append(machine_line(command("sample_efficiency", quick)))
    publish(
        "sample_efficiency",
        "Sample efficiency (samplers on stored surfaces)",
        "\n".join(lines),
        quick,
    )


if __name__ == "__main__":
    if "--regenerate" in sys.argv[1:]:
        regenerate()
    main(quick=quick_flag())
