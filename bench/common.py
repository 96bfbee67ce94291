"""Helpers every benchmark shares: interleaved repeats, median (min-max), the machine line, and a
worker on the shipped model with a small split (so `make bench` fits in 20 minutes on 2 cores).
"""

from __future__ import annotations

import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "BENCHMARKS.md"
PACKAGES = ("torch", "transformers", "optuna", "steering-vectors")


def publish(key: str, title: str, body: str, quick: bool) -> None:
    """Print a section; rewrite it in BENCHMARKS.md unless this is a `--quick` check."""
    from bench.report import write_section

    print(f"## {title}\n\n{body}\n", flush=True)
    if not quick:
        write_section(BENCHMARKS, key, title, body)


def interleaved(
    variants: dict[str, Callable[[], Any]], repeats: int, shuffle_seed: int | None = None
) -> dict[str, list[float]]:
    """Seconds per call of each variant, in turn (A B C A B C ...): load drift hits all alike.

    With `shuffle_seed`, each round runs the variants in a fresh random order (none always first).
    """
    times: dict[str, list[float]] = {name: [] for name in variants}
    order = random.Random(shuffle_seed)
    for _ in range(repeats):
        names = list(variants)
        if shuffle_seed is not None:
            order.shuffle(names)
        for name in names:
            fn = variants[name]
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return times


def spread(values: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
    """`median (min-max)` of values times `scale`."""
    v = [x * scale for x in values]
    return f"{statistics.median(v):.{digits}f} ({min(v):.{digits}f}-{max(v):.{digits}f})"


def ratios(num: Sequence[float], den: Sequence[float]) -> list[float]:
    """Per-repeat ratios of two interleaved series (same repeat index = same moment)."""
    return [a / b for a, b in zip(num, den, strict=True)]


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "absent"


def machine_line(command: str) -> str:
    """Versions, machine and the exact command, for the end of every section."""
    import torch

    versions = ", ".join(f"{p} {_version(p)}" for p in PACKAGES)
    return (
        f"Machine: {os.cpu_count()} CPU cores (torch threads {torch.get_num_threads()}), no GPU, "
        f"{platform.platform()}, Python {platform.python_version()}; {versions}. "
        f"Command: `{command}`."
    )


def command(module: str, quick: bool) -> str:
    """The command line that reproduces a module's section."""
    return f"python -m bench.{module}" + (" --quick" if quick else "")


def quick_flag() -> bool:
    """`--quick` on the command line of `python -m bench.<module>`."""
    return "--quick" in sys.argv[1:]


def compose(*overrides: str) -> Any:
    """The real `hpo` config, composed with overrides and validated."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    from hpo.core.config import to_run_config

    with initialize_config_module(config_module="conf", version_base="1.3"):
        return to_run_config(hydra_compose(config_name="hpo", overrides=list(overrides)))


def sycophancy(train: int, validation: int, *extra: str) -> Any:
    """The shipped model on the shipped sycophancy task with small splits (A/B choice scoring)."""
    return compose(
        "experiment=sycophancy",
        f"task.splits.train={train}",
        f"task.splits.validation={validation}",
        "search_space.positions=[all,prompt_end_onward]",
        "pruner=none",  # every trial runs to the end, so every trial has all its timings
        *extra,
    )
