"""Scoring throughput on the shipped model: batched vs per-item forward-only choice scoring and
greedy generation (issue 5's tokens/s ratio), length-sorted vs unsorted batches, and the memory
peak per batch size. Every compared pair runs interleaved, repeated, on the same items.

    python -m bench.throughput [--quick]
"""

from __future__ import annotations

import dataclasses
import random
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psutil

from bench.common import (
    command,
    compose,
    interleaved,
    machine_line,
    publish,
    quick_flag,
    ratios,
    spread,
    sycophancy,
)


@contextmanager
def rss_peak() -> Iterator[list[float]]:
    """Peak resident memory above the starting RSS (MiB), sampled every 2 ms by a thread."""
    process = psutil.Process()
    start = process.memory_info().rss
    peak = [start]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.002)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    out: list[float] = []
    try:
        yield out
    finally:
        stop.set()
        thread.join()
        out.append((peak[0] - start) / 2**20)


def _padding(prepared: Any) -> int:
    ids = prepared.token_ids
    return sum(
        max(len(ids[i]) for i in b) * len(b) - sum(len(ids[i]) for i in b)
        for b in prepared.batches
    )


def choice_scoring(loaded: Any, quick: bool, repeats: int) -> list[str]:
    """Forward-only A/B scoring: batched vs per-item, sorted vs unsorted, memory per batch size."""
    from hpo.run.tasks import load_task
    from objectives import make_objective
    from objectives.choice_probability import PreparedChoices

    validation, batch = (3, 4) if quick else (8, 8)
    cfg = sycophancy(4, validation, f"task.objective.batch_size={batch}")
    task = load_task(cfg.task)
    objective = make_objective(cfg.task, loaded.tokenizer)
    prepared = objective.prepare(task.validation)
    assert isinstance(prepared, PreparedChoices)
    n = len(prepared.variants)
    order = list(range(n))
    random.Random(0).shuffle(order)
    variants = {
        "sorted": prepared,
        "unsorted": dataclasses.replace(
            prepared, batches=[order[i : i + batch] for i in range(0, n, batch)]
        ),
        "per-item": dataclasses.replace(prepared, batches=[[i] for i in range(n)]),
    }
    scores: dict[str, list[float]] = {}

    def run(name: str) -> Callable[[], None]:
        def go() -> None:
            scores[name] = objective.score(loaded.model, variants[name]).per_item

        return go

    t = interleaved({name: run(name) for name in variants}, repeats)
    diff = max(abs(a - b) for a, b in zip(scores["sorted"], scores["per-item"], strict=True))
    tokens = sum(len(x) for x in prepared.token_ids)
    lines = [
        f"Forward-only A/B scoring (sycophancy, {n} prompts, {tokens} tokens, "
        f"`logits_to_keep=1`), batch size {batch}, median (min-max) of {repeats}:",
        "",
        "| batching | padding tokens | s | prompts / s | x per-item |",
        "|---|---|---|---|---|",
    ]
    for name, prep in variants.items():
        r = ratios(t["per-item"], t[name])
        rate = [n / s for s in t[name]]
        lines.append(
            f"| {name} | {_padding(prep)} | {spread(t[name])} | {spread(rate, digits=1)} | "
            f"{spread(r)} |"
        )
    lines += ["", f"Batched vs per-item item scores agree to {diff:.1e} (max |difference|).", ""]
    lines += [
        "Memory peak per batch size (peak RSS during scoring minus RSS before, sampled every "
        "2 ms with psutil; CPU float32, torch's allocator, smallest batch first):",
        "",
        "| batch size | peak extra MiB | s |",
        "|---|---|---|",
    ]
    sizes = [1, 4] if quick else [1, 4, 8, 16]
    ordered = sorted(range(n), key=lambda i: -len(prepared.token_ids[i]))
    for size in sizes:
        prep = dataclasses.replace(
            prepared, batches=[ordered[i : i + size] for i in range(0, n, size)]
        )
        started = time.perf_counter()
        with rss_peak() as peak:
            objective.score(loaded.model, prep)
        lines.append(f"| {size} | {peak[0]:.0f} | {time.perf_counter() - started:.2f} |")
    return lines


def generation(loaded: Any, quick: bool, repeats: int) -> tuple[list[str], list[float]]:
    """Greedy generation of the sentiment prompts: a left-padded batch vs one prompt at a time."""
    from hpo.model.decoding import generate_ids
    from hpo.run.tasks import load_task
    from objectives import make_objective

    cfg = compose("task=sentiment", "task.splits.validation=" + ("3" if quick else "8"))
    task = load_task(cfg.task)
    objective = make_objective(cfg.task, loaded.tokenizer)
    prepared = objective.prepare(task.validation)
    ids = prepared.token_ids
    new = 8 if quick else 24
    outputs: dict[str, list[list[int]]] = {}

    def batched() -> None:
        outputs["batched"] = generate_ids(loaded.model, loaded.tokenizer, ids, new)

    def per_item() -> None:
        outputs["per-item"] = [
            generate_ids(loaded.model, loaded.tokenizer, [x], new)[0] for x in ids
        ]

    t = interleaved({"batched": batched, "per-item": per_item}, repeats)
    produced = sum(len(x) for x in outputs["batched"])
    same = sum(a == b for a, b in zip(outputs["batched"], outputs["per-item"], strict=True))
    rate = {k: [produced / s for s in v] for k, v in t.items()}
    r = ratios(t["per-item"], t["batched"])
    lines = [
        f"Greedy generation, sentiment prompts ({len(ids)} prompts, {new} new tokens each, "
        f"KV cache), one left-padded batch vs a per-prompt loop, median (min-max) of {repeats}:",
        "",
        "| generation | s | new tokens / s |",
        "|---|---|---|",
        f"| batched | {spread(t['batched'])} | {spread(rate['batched'], digits=1)} |",
        f"| per-prompt loop | {spread(t['per-item'])} | {spread(rate['per-item'], digits=1)} |",
        f"| **tokens/s ratio batched / per-prompt** | | **{spread(r)}** |",
        "",
        f"Identical greedy continuations batched vs alone: {same} of {len(ids)} (left padding "
        "changes float rounding, so a near-tie can flip a token).",
    ]
    return lines, r


def main(quick: bool = False) -> None:
    """Print the tables and rewrite the `throughput` section."""
    from hpo import ModelConfig
    from hpo.model.loading import load_model

    loaded = load_model(ModelConfig())
    repeats = 1 if quick else 3
    lines = choice_scoring(loaded, quick, repeats)
    gen, r = generation(loaded, quick, repeats)
    lines += ["", *gen, "", machine_line(command("throughput", quick))]
    publish("throughput", "Scoring throughput and memory", "\n".join(lines), quick)
    print(f"generation tokens/s ratio: {statistics.median(r):.2f}")


if __name__ == "__main__":
    main(quick=quick_flag())
