"""Where a trial's time goes on the shipped model and task, what the activation cache saves over
re-extraction, what scoring above the steered layer saves, and how a trial scales with data.

All on SmolLM2-135M with the sycophancy task (letter-balanced A/B choice scoring), small splits.

    python -m bench.trial [--quick]
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import optuna
import torch
from safetensors.torch import load_file, save_file

from bench.common import (
    command,
    interleaved,
    machine_line,
    publish,
    quick_flag,
    ratios,
    spread,
    sycophancy,
)

PHASES = ("suggest", "vector build", "scoring", "storage + Optuna")


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least-squares `y = a + b x`: (a, b, R^2)."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    a = my - b * mx
    ss_res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys, strict=True))
    ss_tot = sum((y - my) ** 2 for y in ys)
    return a, b, 1 - ss_res / ss_tot if ss_tot else 1.0


def breakdown(worker: Any, cfg: Any, n: int) -> tuple[list[str], dict[str, list[float]]]:
    """Run `n` real trials (TPE, SQLite) and split each one's wall time into phases."""
    import hpo.run.trial
    from hpo.core.record import TIME_SCORE_ATTR, TIME_VECTOR_ATTR
    from hpo.run.study import open_study
    from hpo.steering.application import Application
    from hpo.steering.hooks import steer

    study = open_study(cfg)
    spent: dict[str, float] = {}
    real_suggest = hpo.run.trial.suggest

    def timed_suggest(*args: Any, **kwargs: Any) -> Any:  # a spy: times the real call
        started = time.perf_counter()
        try:
            return real_suggest(*args, **kwargs)
        finally:
            spent["suggest"] = time.perf_counter() - started

    rows: dict[str, list[list[float]]] = {}
    runner = hpo.run.trial.TrialRunner(worker)
    with mock.patch.object(hpo.run.trial, "suggest", timed_suggest):
        for _ in range(n):
            started = time.perf_counter()
            study.optimize(runner, n_trials=1)
            wall = time.perf_counter() - started
            t = study.trials[-1]
            vector, score = t.user_attrs[TIME_VECTOR_ATTR], t.user_attrs[TIME_SCORE_ATTR]
            rest = wall - spent["suggest"] - vector - score
            rows.setdefault(t.params["positions"], []).append(
                [spent["suggest"], vector, score, rest, wall]
            )
    vec = worker.vectors({"layer": 10, "method": "caa", "aggregation": "choice"})
    loaded = worker.loaded

    def install() -> None:
        with steer(loaded.model, loaded.blocks, vec, Application(alpha=0.5, positions="all")):
            pass

    hook = interleaved({"hook": install}, 200)["hook"]
    lines = [
        f"{n} real trials (TPE, SQLite study, `TrialRunner`), split by positions. Hook "
        f"install + removal (`steer` enter/exit, measured apart, 200 times): "
        f"{statistics.median(hook) * 1e6:.0f} us; it is inside 'scoring' for "
        "`prompt_end_onward`, and `all` trials take the block-output path, which installs none.",
        "",
        "| positions | trials | trial s | " + " | ".join(f"{p} %" for p in PHASES) + " |",
        "|---" * (3 + len(PHASES)) + "|",
    ]
    shares: dict[str, list[float]] = {}
    for positions, trials in sorted(rows.items()):
        walls = [r[-1] for r in trials]
        cells = []
        for i, phase in enumerate(PHASES):
            share = [r[i] / r[-1] * 100 for r in trials]
            shares[f"{positions}:{phase}"] = share
            digits = 3 if phase in ("vector build", "suggest") else 1
            cells.append(spread(share, digits=digits))
        lines.append(f"| {positions} | {len(trials)} | {spread(walls)} | {' | '.join(cells)} |")
    return lines, shares


def cache_vs_extraction(worker: Any, pairs: list[Any], repeats: int) -> list[str]:
    """One-off cache cost, per-trial vector build from it, and per-trial re-extraction."""
    from hpo.steering.activations import ActivationCache, extract_activations
    from hpo.steering.methods import build_vector

    loaded = worker.loaded
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "cache.safetensors")
        timings: dict[str, list[float]] = {"extract": [], "write+read": [], "re-extract": []}
        for _ in range(repeats):
            started = time.perf_counter()
            tensors = extract_activations(loaded, pairs)
            extracted = time.perf_counter()
            # What a loop without a cache pays every trial: this extraction, then the build.
            build_vector(ActivationCache(tensors, "x"), "caa", "choice", 10, "relative")
            built = time.perf_counter()
            timings["extract"].append(extracted - started)
            timings["re-extract"].append(built - started)
            save_file(tensors, path)
            load_file(path)
            timings["write+read"].append(time.perf_counter() - built)
    layers = list(range(loaded.shape.num_layers))
    cache = worker.cache
    builds = []
    for i in range(300):  # every layer, as trials visit them (norms memoised after the first)
        started = time.perf_counter()
        build_vector(
            cache, "caa", ("choice", "last", "mean")[i % 3], layers[i % len(layers)], "relative"
        )
        builds.append(time.perf_counter() - started)
    one_off = statistics.median(timings["extract"]) + statistics.median(timings["write+read"])
    per_cached = statistics.median(builds)
    per_fresh = statistics.median(timings["re-extract"])
    return [
        f"{len(pairs)} contrastive pairs, {loaded.shape.num_layers} layers x 3 aggregations "
        f"cached; medians (min-max) of {repeats} runs, vector builds over 300 calls.",
        "",
        "| cost | seconds |",
        "|---|---|",
        f"| one-off: extract every layer + aggregation | {spread(timings['extract'])} |",
        f"| one-off: write + read the cache file | {spread(timings['write+read'], digits=4)} |",
        f"| per trial, from the cache (build vector) | {spread(builds, digits=6)} |",
        f"| per trial, re-extracting (extract + build) | {spread(timings['re-extract'])} |",
        "",
        f"Re-extraction costs {per_fresh / per_cached:,.0f}x the cached build per trial; the "
        f"cache pays for itself after {one_off / (per_fresh - per_cached):.2f} trials "
        "(one-off cost / per-trial saving).",
    ]


def residual_before_after(worker: Any, repeats: int) -> tuple[list[str], dict[str, list[float]]]:
    """positions=all trials at three layers: full forward vs blocks above L from the cache."""
    residual = worker.residual
    layers = (5, 15, 25)
    out: dict[str, list[float]] = {}
    lines = [
        "Scoring one `positions: all` trial (same params, interleaved, median (min-max) of "
        f"{repeats}); 'first at a layer' is the cache-miss trial that fills it.",
        "",
        "| layer | full forward s | first at a layer s | above L, cached s | full / cached | "
        "blocks skipped |",
        "|---|---|---|---|---|---|",
    ]
    for layer in layers:
        params = {"layer": layer, "alpha": 0.5, "aggregation": "choice", "method": "caa"}
        params["positions"] = "all"
        vectors = worker.vectors(params)

        def run(use: bool, p: dict[str, Any] = params, v: Any = vectors) -> None:
            worker.residual = residual if use else None
            try:
                worker.score(p, worker.validation, None, v)
            finally:
                worker.residual = residual

        started = time.perf_counter()
        run(True)
        first = time.perf_counter() - started
        t = interleaved({"full": lambda: run(False), "cached": lambda: run(True)}, repeats)
        r = ratios(t["full"], t["cached"])
        out[str(layer)] = r
        n = worker.loaded.shape.num_layers
        lines.append(
            f"| {layer} | {spread(t['full'])} | {first:.2f} | {spread(t['cached'])} | "
            f"{spread(r)} | {layer + 1}/{n} |"
        )

    def at_15(positions: str) -> Callable[[], Any]:
        p = {"layer": 15, "alpha": 0.5, "aggregation": "choice", "method": "caa"}
        return lambda: worker.score({**p, "positions": positions}, worker.validation)

    prefix = {positions: at_15(positions) for positions in ("all", "prompt_end_onward")}
    t = interleaved(prefix, repeats)
    lines += [
        "",
        f"For comparison, `prompt_end_onward` (prompt-prefix KV cache, one token per item): "
        f"{spread(t['prompt_end_onward'])} s vs {spread(t['all'])} s for `all` at layer 15.",
    ]
    return lines, out


def scaling(worker: Any, task: Any, pairs: list[Any], quick: bool) -> list[str]:
    """Scoring time vs validation items; extraction and vector build vs train pairs."""
    from hpo.steering.activations import ActivationCache, extract_activations
    from hpo.steering.methods import build_vector

    objective, model = worker.objective, worker.loaded.model
    sizes = [1, 2] if quick else [2, 4, 6]
    xs, ys = [], []
    for n in sizes:
        prepared = objective.prepare(task.validation[:n])
        for _ in range(1 if quick else 2):
            started = time.perf_counter()
            objective.score(model, prepared)
            xs.append(float(len(prepared.variants)))
            ys.append(time.perf_counter() - started)
    a, b, r2 = linear_fit(xs, ys)
    pair_sizes = [len(pairs) // 4, len(pairs) // 2, len(pairs)]
    px, ex, bx = [], [], []
    for n in pair_sizes:
        started = time.perf_counter()
        tensors = extract_activations(worker.loaded, pairs[:n])
        ex.append(time.perf_counter() - started)
        cache = ActivationCache(tensors, "x")
        build_vector(cache, "caa", "choice", 10, "relative")
        started = time.perf_counter()
        for _ in range(50):
            build_vector(cache, "caa", "choice", 10, "relative")
        bx.append((time.perf_counter() - started) / 50)
        px.append(float(n))
    ea, eb, er2 = linear_fit(px, ex)
    ba, bb, br2 = linear_fit(px, bx)
    return [
        f"Scoring (full forward, `logits_to_keep=1`) vs scored prompts {sorted(set(xs))}: "
        f"t = {a:.3f} + {b:.3f} s x prompts, R^2 = {r2:.3f}.",
        f"Extraction (the peers' per-trial cost) vs train pairs {pair_sizes}: "
        f"t = {ea:.3f} + {eb:.3f} s x pairs, R^2 = {er2:.3f}.",
        f"Vector build from the cache (hpo's per-trial cost) vs train pairs: "
        f"t = {ba * 1e6:.0f} + {bb * 1e6:.2f} us x pairs, R^2 = {br2:.3f}.",
        "",
        "GPU: no GPU machine is lent to this task (the `device` tool's status has none), so "
        "there are no GPU or bf16 figures.",
    ]


def main(quick: bool = False) -> None:
    """Print every table and rewrite the `trial` section."""
    from hpo.run.study import check_config, prepare_worker

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    torch.manual_seed(0)
    train, validation = (4, 2) if quick else (8, 6)
    repeats = 1 if quick else 3
    with tempfile.TemporaryDirectory() as tmp:
        cfg = sycophancy(train, validation, f"output_dir={tmp}", "study.seed=0")
        task = check_config(cfg)
        worker = prepare_worker(cfg, task)
        pairs = worker.objective.train_pairs(task.train)
        parts = [
            f"SmolLM2-135M (float32, CPU), sycophancy: {train} train items ({len(pairs)} pairs), "
            f"{validation} validation items ({len(worker.validation.variants)} scored prompts).",
            "",
            "### Trial breakdown (share of the trial, median (min-max))",
            "",
        ]
        lines, _ = breakdown(worker, cfg, 4 if quick else 10)
        parts += [*lines, "", "### Activation cache vs re-extraction", ""]
        parts += cache_vs_extraction(worker, pairs, repeats)
        parts += ["", "### Scoring above the steered layer (before / after)", ""]
        lines, _ = residual_before_after(worker, min(repeats, 2))
        parts += [*lines, "", "### Scaling", ""]
        parts += scaling(worker, task, pairs, quick)
    parts += ["", machine_line(command("trial", quick))]
    publish(
        "trial", "Trial breakdown, cache, block-output reuse, scaling", "\n".join(parts), quick
    )


if __name__ == "__main__":
    main(quick=quick_flag())
