"""Storage overhead per trial and trials/second for 1-8 workers on SQLite and PostgreSQL, and
the shipped model's wall time with 1 vs 2 workers. Everything measured side by side in one run.

    python -m bench.workers            (make bench) -> prints tables, rewrites BENCHMARKS.md
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import optuna
from optuna.trial import TrialState

from bench.report import write_section
from hpo import StorageConfig
from hpo.run.budget import run_trials
from storage import create_storage, default_sqlite_url
from tests.pgserver import bindir, postgres_server

REPO = Path(__file__).resolve().parents[1]
REPEATS = 3


def _objective(trial: optuna.Trial) -> float:
    return trial.suggest_float("x", 0.0, 1.0)


def per_trial_overhead_ms(url: str | None, n: int = 60) -> float:
    """In-process ms per trial of a trivial objective through our budgeted loop."""
    name = f"o-{uuid.uuid4().hex[:8]}"
    storage = create_storage(StorageConfig(), url) if url else optuna.storages.InMemoryStorage()
    study = optuna.create_study(
        study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler(seed=0)
    )
    started = time.perf_counter()
    run_trials(study, _objective, n)
    return (time.perf_counter() - started) / n * 1000


def throughput(url: str, workers: int, n: int = 50) -> float:
    """Trials/second of `workers` processes sharing one study (first start to last finish)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    optuna.create_study(study_name=name, storage=create_storage(StorageConfig(), url))
    env = {**os.environ, "HPO_STORAGE_URL": url}
    cmd = [sys.executable, "-m", "tests.storage_tests.trivial_worker", name, str(n), "0"]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env) for _ in range(workers)]
    for p in procs:
        if p.wait() != 0:
            raise RuntimeError(f"worker exited with {p.returncode}")
    study = optuna.load_study(study_name=name, storage=create_storage(StorageConfig(), url))
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) == n, f"budget not exact: {len(done)} != {n}"
    first = min(t.datetime_start for t in done if t.datetime_start)
    last = max(t.datetime_complete for t in done if t.datetime_complete)
    return n / (last - first).total_seconds()


def real_model_wall_s(workers: int, out: Path) -> tuple[float, float]:
    """`hpo optimize experiment=smoke` (6 trials, no export): wall time and trial span."""
    args = ["experiment=smoke", "study.n_trials=6", "export.enabled=false"]
    cmd = [
        sys.executable,
        "-m",
        "hpo",
        "optimize",
        *args,
        f"output_dir={out}",
        f"workers={workers}",
    ]
    started = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
    wall = time.perf_counter() - started
    study = optuna.load_study(study_name="smoke", storage=f"sqlite:///{out}/study.db")
    done = study.get_trials(states=(TrialState.COMPLETE,))
    span = max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)  # type: ignore[type-var,operator]
    return wall, span.total_seconds()


def real_model_lines(tmp: Path) -> list[str]:
    """The shipped model's study wall time with 1 and 2 workers, as table lines."""
    one = real_model_wall_s(1, tmp / "w1")
    two = real_model_wall_s(2, tmp / "w2")
    return [
        "Shipped model, `hpo optimize experiment=smoke study.n_trials=6` (sentiment, no export):",
        "",
        "| workers | wall s | trial span s |",
        "|---|---|---|",
        f"| 1 | {one[0]:.1f} | {one[1]:.1f} |",
        f"| 2 | {two[0]:.1f} | {two[1]:.1f} |",
        "",
    ]


def _fmt(values: list[float]) -> str:
    return f"{statistics.median(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def main(quick: bool = False) -> None:
    """Print the tables and rewrite the `workers` section (`quick`: 1 repeat, 1-2 workers)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    repeats = 1 if quick else REPEATS
    counts = (1, 2) if quick else (1, 2, 4, 8)
    lines: list[str] = []
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        urls = {"sqlite": default_sqlite_url(Path(tmp) / "bench")}
        pg = bindir()
        if pg is not None:
            urls["postgresql"] = stack.enter_context(postgres_server(pg))
        overhead = {"in-memory": [per_trial_overhead_ms(None) for _ in range(repeats)]}
        for backend, url in urls.items():
            overhead[backend] = [per_trial_overhead_ms(url) for _ in range(repeats)]
        lines += [
            "Storage overhead per trial, trivial objective, in-process (median (min-max) of "
            f"{repeats}, ms):",
            "",
            "| storage | ms / trial | x in-memory |",
            "|---|---|---|",
        ]
        base = statistics.median(overhead["in-memory"])
        for backend, values in overhead.items():
            ratio = statistics.median(values) / base
            lines.append(f"| {backend} | {_fmt(values)} | {ratio:.1f} |")
        head = " | ".join(str(n) for n in counts)
        lines += ["", "Trials / second with N worker processes on one study (50 trials, 2 runs, "
                  "first start to last finish):", "",
                  f"| storage | {head} |", "|---" * (len(counts) + 1) + "|"]  # fmt: skip
        for backend, url in urls.items():
            # Two repeats of the process sweep keep `make bench` under its 20 minutes.
            cells = [_fmt([throughput(url, n) for _ in range(min(repeats, 2))]) for n in counts]
            lines.append(f"| {backend} | {' | '.join(cells)} |")
        lines.append("")
        if not quick:
            lines += real_model_lines(Path(tmp))
        lines += [
            f"Machine: {os.cpu_count()} CPU cores, {platform.platform()}, Python "
            f"{platform.python_version()}, optuna {optuna.__version__}. "
            f"Command: `python -m bench.workers{' --quick' if quick else ''}`.",
        ]
    text = "\n".join(lines)
    print(text)
    if not quick:  # a quick check leaves the recorded numbers alone
        write_section(REPO / "BENCHMARKS.md", "workers", "Workers and storage", text)


if __name__ == "__main__":
    main(quick="--quick" in sys.argv[1:])
