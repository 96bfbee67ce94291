"""Run every benchmark module in order: `python -m bench [--quick] [names...]` (`make bench`).

Each module prints its tables and rewrites its own section of BENCHMARKS.md. `--quick` runs the
same code on smaller sizes and fewer repeats (a check that everything works, minutes); it
prints only and leaves BENCHMARKS.md alone. A module whose optional dependency is missing is
skipped with a note, and one that fails does not stop the others (the exit code says it failed).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import logging
import time
import traceback

from bench.common import BENCHMARKS

# Cheapest first, so a broken install shows early. `methods`: vector build per method, steered
# vs unsteered forward and generation per mode. The full run takes ~18 min on 2 quiet cores.
MODULES = (
    "sample_efficiency",
    "trial",
    "peer",
    "generation",
    "trials_per_pass",
    "throughput",
    "methods",
    "workers",
    "attribution",
    "scale",
)


def run_module(name: str, quick: bool) -> tuple[str, float]:
    """Run `bench.<name>.main`; return its status and wall seconds."""
    if importlib.util.find_spec(f"bench.{name}") is None:
        return "skipped (module not present)", 0.0
    started = time.perf_counter()
    try:
        module = importlib.import_module(f"bench.{name}")
        main = module.main
        if "quick" in inspect.signature(main).parameters:
            main(quick=quick)
        else:
            main()
    except ModuleNotFoundError as e:
        return f"skipped ({e}; `pip install -e '.[bench]'`)", time.perf_counter() - started
    except Exception:
        traceback.print_exc()
        return "FAILED", time.perf_counter() - started
    return "ok", time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the chosen modules, print a summary; 1 if any module failed."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument("names", nargs="*", help=f"modules to run (default: {' '.join(MODULES)})")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in MODULES]
    if unknown:
        parser.error(f"benchmark names must be among {list(MODULES)}, got {unknown}")
    logging.basicConfig(level=logging.WARNING)
    names = args.names or list(MODULES)
    results = []
    started = time.perf_counter()
    for name in names:
        print(f"\n=== bench.{name}{' --quick' if args.quick else ''} ===", flush=True)
        status, seconds = run_module(name, args.quick)
        results.append((name, status, seconds))
    total = time.perf_counter() - started
    print("\n=== summary ===")
    for name, status, seconds in results:
        print(f"{name:20s} {status:40s} {seconds:7.1f} s")
    print(f"{'total':20s} {'':40s} {total:7.1f} s  -> {BENCHMARKS}")
    return 1 if any(status == "FAILED" for _, status, _ in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
