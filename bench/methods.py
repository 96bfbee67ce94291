"""Vector building per method from the activation cache vs re-extracting activations each trial,
and steered vs unsteered forward and generation time per mode (and positions), on the shipped
SmolLM2-135M. Side by side, one run.

    python -m bench.methods [--quick]   -> prints tables; without --quick rewrites BENCHMARKS.md
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from bench.common import command, interleaved, machine_line, publish, quick_flag, ratios
from hpo import ModelConfig, TaskConfig
from hpo.model.batching import pad_left
from hpo.model.loading import LoadedModel, load_model
from hpo.run.tasks import load_task
from hpo.steering.activations import ActivationCache, extract_activations, load_or_build
from hpo.steering.application import Application
from hpo.steering.hooks import steer
from hpo.steering.methods import VectorBuilder
from objectives import make_objective
from objectives._base import ContrastivePair

LAYER = 15
AGGREGATION = "mean"


def _pairs(loaded: LoadedModel) -> list[ContrastivePair]:
    """The sentiment task's train pairs (the demo's), as a trial would see them."""
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    with initialize_config_module(config_module="conf", version_base="1.3"):
        raw = compose(config_name="hpo", overrides=["experiment=demo"])
    task = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TaskConfig), raw.task))
    assert isinstance(task, TaskConfig)
    objective = make_objective(task, loaded.tokenizer)
    return objective.train_pairs(load_task(task).train)


def _median_s(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _finetuned_stand_in(cache: ActivationCache) -> ActivationCache:
    """model_diff's second cache: the base cache shifted (timing only; the math is the same)."""
    return ActivationCache({k: v + 0.01 for k, v in cache.tensors.items()}, "shifted")


def vector_build_table(loaded: LoadedModel, quick: bool) -> str:
    """ms per trial to build one layer's vector from the cache vs re-extracting first."""
    pairs = _pairs(loaded)
    cache = load_or_build(loaded, pairs)
    finetuned = _finetuned_stand_in(cache)
    extract_s = _median_s(lambda: extract_activations(loaded, pairs), 1 if quick else 3)
    rows = [
        f"Sentiment train pairs: {len(pairs)}; layer {LAYER}, aggregation `{AGGREGATION}`, "
        "relative scale. *Cache*: a fresh builder per trial (the probe is fitted each time); "
        "*re-extract*: one extraction forward pass over the pairs (both models for "
        "model_diff) and then the same build, as a loop without the cache would do per trial.",
        "",
        "| method | from cache (ms) | re-extract + build (ms) | ratio |",
        "|---|---|---|---|",
    ]
    for method in ("caa", "pca", "probe", "model_diff"):

        def build(method: str = method) -> None:
            VectorBuilder(cache, finetuned).vector(method, AGGREGATION, LAYER, "relative")

        build()  # warm-up (first-call allocations)
        cached = _median_s(build, 5 if quick else 20)
        extract = extract_s * (2 if method == "model_diff" else 1)
        total = extract + cached
        rows.append(
            f"| {method} | {cached * 1000:.2f} | {total * 1000:.0f} | {total / cached:,.0f}x |"
        )
    return "\n".join(rows)


def _batch(loaded: LoadedModel) -> dict[str, torch.Tensor]:
    texts = [p.prompt + " " + p.positive for p in _pairs(loaded)[:16]]
    ids = [loaded.tokenizer.encode(t) for t in texts]
    return pad_left(ids, loaded.tokenizer.pad_token_id, loaded.device)


def _hook_seconds(blocks: torch.nn.ModuleList, layers: list[int], hidden: torch.Tensor) -> float:
    """Median seconds the installed steering hooks of `layers` take on one block output of the
    shape of `hidden` (the real hook functions, called directly: exact, free of model noise)."""
    hooks = [next(reversed(blocks[layer]._forward_hooks.values())) for layer in layers]
    output = (hidden,)

    def call() -> None:
        for hook in hooks:
            hook(blocks[0], (), output)

    with torch.inference_mode():
        call()
        return _median_s(call, 50)


def _overhead_table(
    intro: str,
    column: str,
    times: dict[str, list[float]],
    fmt: Callable[[float], str],
    hooks: dict[str, float],
) -> str:
    """Median time per case, the paired overhead vs `unsteered` (median over rounds of the
    ratio to the same round's unsteered time, with min-max) and the hooks' own share."""
    base = statistics.median(times["unsteered"])
    rows = [
        intro,
        "",
        f"| application | {column} | end-to-end overhead, median (min-max) | hook compute |",
        "|---|---|---|---|",
        f"| unsteered | {fmt(base)} | - | - |",
    ]
    for label, values in times.items():
        if label == "unsteered":
            continue
        pct = [(r - 1) * 100 for r in ratios(values, times["unsteered"])]
        rows.append(
            f"| {label} | {fmt(statistics.median(values))} | "
            f"{statistics.median(pct):+.1f}% ({min(pct):+.1f} to {max(pct):+.1f}) | "
            f"{hooks[label] / base * 100:.3f}% |"
        )
    return "\n".join(rows)


def forward_overhead_table(loaded: LoadedModel, quick: bool) -> str:
    """Forward time unsteered vs steered per mode (paired rounds), and the hooks' own cost."""
    inputs = _batch(loaded)
    hidden = loaded.shape.hidden_size
    vector = torch.randn(hidden, generator=torch.Generator().manual_seed(0))
    configs: dict[str, dict[int, torch.Tensor]] = {
        "1 layer": {LAYER: vector},
        "3-layer window": {LAYER + i: vector for i in range(3)},
    }
    rounds = 3 if quick else 9
    shape = tuple(inputs["input_ids"].shape)
    sample = torch.randn(shape[0], shape[1], hidden)

    def forward() -> None:
        with torch.inference_mode():
            loaded.model(**inputs, use_cache=False)

    def steered(mode: str, vecs: dict[int, torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            scales = {layer: 1 / len(vecs) for layer in vecs}
            with steer(
                loaded.model,
                loaded.blocks,
                vecs,
                Application(alpha=0.5, positions="all", mode=mode, scales=scales),
            ):
                forward()

        return run

    forward()
    variants: dict[str, Callable[[], None]] = {"unsteered": forward}
    hooks: dict[str, float] = {}
    for name, vecs in configs.items():
        for mode in ("add", "add_norm_preserving", "ablate"):
            label = f"{mode}, {name}"
            variants[label] = steered(mode, vecs)
            with steer(
                loaded.model,
                loaded.blocks,
                vecs,
                Application(alpha=0.5, positions="all", mode=mode),
            ):
                hooks[label] = _hook_seconds(loaded.blocks, list(vecs), sample)
    times = interleaved(variants, rounds, shuffle_seed=0)
    intro = (
        f"One forward pass of a {shape[0]} x {shape[1]} token batch, positions `all`, "
        f"{rounds} rounds. *End-to-end*: steered / unsteered time of the same round - 1, "
        "which at this size is dominated by run-to-run noise; *hook compute*: the installed "
        "hooks called directly on a block output of the same shape (all steered layers), as "
        "a share of the unsteered forward. Goal: overhead under 3%."
    )
    return _overhead_table(intro, "forward (ms)", times, lambda t: f"{t * 1000:.1f}", hooks)


def generation_overhead_table(loaded: LoadedModel, quick: bool) -> str:
    """Greedy-generation time unsteered vs steered per mode x positions (paired rounds), and
    the hooks' own cost (the prompt pass plus one call per decoded token)."""
    from hpo.model.decoding import generate_ids

    prompts = [loaded.tokenizer.encode(p.prompt) for p in _pairs(loaded)[: 4 if quick else 8]]
    new = 8 if quick else 16
    hidden = loaded.shape.hidden_size
    vector = torch.randn(hidden, generator=torch.Generator().manual_seed(0))
    width = max(len(p) for p in prompts)
    prefill, step = torch.randn(len(prompts), width, hidden), torch.randn(len(prompts), 1, hidden)
    # A tiny alpha: the steered text stays (nearly) the unsteered text, so every case decodes
    # the same number of tokens and only the hook's cost differs.
    alpha = 1e-6
    rounds = 2 if quick else 4
    lengths: dict[str, int] = {}

    def generate(
        label: str, mode: str | None = None, positions: str = "all"
    ) -> Callable[[], None]:
        def run() -> None:
            if mode is None:
                out = generate_ids(loaded.model, loaded.tokenizer, prompts, new)
            else:
                vecs = {LAYER: vector}
                with steer(
                    loaded.model,
                    loaded.blocks,
                    vecs,
                    Application(alpha=alpha, positions=positions, mode=mode),
                ) as h:
                    out = generate_ids(loaded.model, loaded.tokenizer, prompts, new, h)
            lengths[label] = sum(len(row) for row in out)

        return run

    variants: dict[str, Callable[[], None]] = {"unsteered": generate("unsteered")}
    hooks: dict[str, float] = {}
    for mode in ("add", "add_norm_preserving", "ablate"):
        for positions in ("all", "prompt_end_onward", "generated"):
            label = f"{mode}, {positions}"
            variants[label] = generate(label, mode, positions)
            with steer(
                loaded.model,
                loaded.blocks,
                {LAYER: vector},
                Application(alpha=alpha, positions=positions, mode=mode),
            ) as h:
                h.prompt_length, h._past_length = width, 0  # the prompt pass
                first = _hook_seconds(loaded.blocks, [LAYER], prefill)
                h._past_length = width  # a decoding step
                hooks[label] = first + (new - 1) * _hook_seconds(loaded.blocks, [LAYER], step)
    generate_ids(loaded.model, loaded.tokenizer, prompts, 2)  # warm-up
    times = interleaved(variants, rounds, shuffle_seed=0)
    low, high = min(lengths.values()), max(lengths.values())
    decoded = f"{low} in every case" if low == high else f"{low}-{high} across cases"
    intro = (
        f"Greedy generation of {len(prompts)} prompts x {new} new tokens (one left-padded batch, "
        f"KV cache), one layer ({LAYER}), {rounds} rounds; new tokens decoded: {decoded}. "
        "*Hook compute*: the hook on the prompt pass plus one call per decoded token."
    )
    return _overhead_table(intro, "generation (s)", times, lambda t: f"{t:.2f}", hooks)


def main(quick: bool = False) -> None:
    """Run the comparisons on the shipped model; write BENCHMARKS.md's `methods` section."""
    loaded = load_model(ModelConfig())
    build = vector_build_table(loaded, quick)
    forward = forward_overhead_table(loaded, quick)
    generation = generation_overhead_table(loaded, quick)
    body = (
        f"SmolLM2-135M-Instruct, float32, {loaded.device}.\n\n### Vector per trial\n\n{build}"
        f"\n\n### Steering overhead\n\n{forward}\n\n{generation}\n\n"
        f"{machine_line(command('methods', quick))}"
    )
    publish("methods", "Methods and modes", body, quick)


if __name__ == "__main__":
    main(quick=quick_flag())
