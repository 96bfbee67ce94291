"""Generation trials side by side: hpo's demo trial against the loop a user writes by hand with
steering-vectors, the same loop batched, and the floor (the same prompts generated unsteered in
one batch, no hooks); plus where hpo's trial spends its time.

The demo setting (`experiment=demo`: SmolLM2-135M-Instruct, 20 validation prompts x 32 new
tokens, sentiment scorer). Every round runs each variant once, in a fresh random order, so load
drift hits all alike; only the per-round ratios are compared.

- hpo trial: a real trial on the worker path (`TrialRunner`, SQLite study), guards
  included (KL on 12 neutral prompts, fluency constraints), `positions: prompt_end_onward` so
  the prompt prefix is reused.
- hpo generation: the trial's steered generation alone (with and without the reused prefix).
- README loop: `train_steering_vector` on the train pairs, then `vector.apply(model, ...)` and
  `model.generate` on each prompt, scored with the same scorer (steering-vectors' README).
- batched loop: the same, generating all prompts in one left-padded batch.
- floor: the prompts generated unsteered in one left-padded batch, no hooks.

    python -m bench.generation [--quick]
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any
from unittest import mock

import optuna
import torch

from bench.common import command as bench_command
from bench.common import compose, interleaved, machine_line, publish, quick_flag, ratios, spread

LAYER, ALPHA = 12, 0.5
PARAMS: dict[str, object] = {
    "layer": LAYER,
    "alpha": ALPHA,
    "aggregation": "mean",
    "positions": "prompt_end_onward",
}
PHASES = ("generation", "KL", "fluency")


def _uptime() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


class PeerLoop:
    """What a user writes with steering-vectors: train the vector every trial, then generate."""

    def __init__(self, worker: Any, train_rows: list[Any], batched: bool) -> None:
        self.worker, self.batched = worker, batched
        pairs = worker.objective.train_pairs(train_rows)
        self.samples = [(p.prompt + p.positive, p.prompt + p.negative) for p in pairs]

    def __call__(self, layer: int, multiplier: float) -> list[str]:
        from steering_vectors import train_steering_vector

        loaded, objective = self.worker.loaded, self.worker.objective
        model, tok = loaded.model, loaded.tokenizer
        vector = train_steering_vector(
            model, tok, self.samples, layers=[layer], read_token_index=-1
        )
        prompts = self.worker.validation.token_ids
        new_tokens = self.worker.cfg.task.objective.max_new_tokens
        texts: list[str] = []
        with vector.apply(model, multiplier=multiplier), torch.inference_mode():
            if self.batched:
                tok.padding_side = "left"
                batch = tok.pad({"input_ids": prompts}, return_tensors="pt")
                out = model.generate(
                    **batch,
                    max_new_tokens=new_tokens,
                    do_sample=False,
                    pad_token_id=tok.pad_token_id,
                )
                width = batch["input_ids"].shape[1]
                texts = tok.batch_decode(out[:, width:], skip_special_tokens=True)
            else:
                for ids in prompts:
                    out = model.generate(
                        torch.tensor([ids]),
                        max_new_tokens=new_tokens,
                        do_sample=False,
                        pad_token_id=tok.pad_token_id,
                    )
                    texts.append(tok.decode(out[0, len(ids) :], skip_special_tokens=True))
        for text in texts:
            objective.scorer(text, None)
        return texts


def _spied(worker: Any, spent: dict[str, float]) -> list[Any]:
    """Spies that time the real generation, KL and fluency calls of a trial."""

    def timed(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - started

        return call

    objective = worker.objective
    return [
        mock.patch.object(objective, "score", timed("generation", objective.score)),
        mock.patch.object(worker, "_add_kl", timed("KL", worker._add_kl)),
        mock.patch.object(objective, "fluency", timed("fluency", objective.fluency)),
    ]


def main(quick: bool = False) -> None:
    """Run every variant in interleaved rounds; print and record the ratios."""
    from hpo.model.decoding import generate_ids
    from hpo.run.study import check_config, open_study, prepare_worker
    from hpo.run.trial import TrialRunner
    from hpo.steering.hooks import steer

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rounds = 1 if quick else 4
    extra = ("task.splits.validation=4", "task.objective.max_new_tokens=8") if quick else ()
    load_before = _uptime()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose(
            "experiment=demo", f"output_dir={tmp}", "study.baseline=false", "pruner=none", *extra
        )
        task = check_config(cfg)
        started = time.perf_counter()
        worker = prepare_worker(cfg, task)
        setup = time.perf_counter() - started
        study = open_study(cfg)
        runner = TrialRunner(worker)
        plan = worker.plan({**PARAMS, "method": "caa"})
        loaded, prepared = worker.loaded, worker.validation
        readme, batched = PeerLoop(worker, task.train, False), PeerLoop(worker, task.train, True)
        norm = float(plan.vectors[LAYER].norm())
        spent: dict[str, float] = {}
        phases: list[dict[str, float]] = []

        def hpo_trial() -> None:
            spent.clear()
            study.enqueue_trial(dict(PARAMS))
            spies = _spied(worker, spent)
            for spy in spies:
                spy.start()
            try:
                study.optimize(runner, n_trials=1)
            finally:
                for spy in spies:
                    spy.stop()
            phases.append(dict(spent))

        def generation(reuse: bool) -> Callable[[], None]:
            def run() -> None:
                with steer(loaded.model, loaded.blocks, plan.vectors, plan.application):
                    worker.objective.score(loaded.model, prepared, reuse_prefix=reuse)

            return run

        def floor() -> None:
            new = cfg.task.objective.max_new_tokens
            generate_ids(loaded.model, loaded.tokenizer, prepared.token_ids, new)

        variants = {
            "hpo trial": hpo_trial,
            "hpo generation": generation(True),
            "hpo generation, prefix not reused": generation(False),
            "README loop": lambda: readme(LAYER, ALPHA * norm),
            "batched loop": lambda: batched(LAYER, ALPHA * norm),
            "floor": floor,
        }
        times = interleaved(variants, rounds, shuffle_seed=0)
        walls = times["hpo trial"]
    load_after = _uptime()
    t = times
    lines = [
        f"Demo setting: SmolLM2-135M-Instruct, {len(prepared.prompts)} validation prompts x "
        f"{cfg.task.objective.max_new_tokens} new tokens (greedy), sentiment scorer; "
        f"one trial at {PARAMS}; {rounds} interleaved rounds (fresh order each). Load average "
        f"(1, 5, 15 min) before {load_before}, after {load_after}: only the per-round ratios "
        "count. hpo's one-off worker setup (model, activation cache, unsteered baseline and "
        f"references, prefix caches): {setup:.1f} s.",
        "",
        "| per trial | seconds, median (min-max) |",
        "|---|---|",
        *(f"| {name} | {spread(values)} |" for name, values in t.items()),
        "",
        "| ratio, per round | median (min-max) | target |",
        "|---|---|---|",
        f"| README loop / hpo trial | {spread(ratios(t['README loop'], walls))} | >= 5 |",
        f"| batched loop / hpo trial | {spread(ratios(t['batched loop'], walls))} | >= 3 |",
        f"| hpo trial / floor | {spread(ratios(walls, t['floor']))} | <= 1.5 |",
        f"| hpo generation / floor | {spread(ratios(t['hpo generation'], t['floor']))} | |",
        f"| batched loop / floor | {spread(ratios(t['batched loop'], t['floor']))} | |",
        "| hpo generation, prefix not reused / reused | "
        f"{spread(ratios(t['hpo generation, prefix not reused'], t['hpo generation']))} | |",
        "",
        "Where hpo's trial goes (share of its wall time, per round):",
        "",
        "| " + " | ".join(PHASES) + " | rest (suggest, vector, storage, Optuna) |",
        "|---" * (len(PHASES) + 1) + "|",
        "| "
        + " | ".join(
            spread([100 * p.get(name, 0.0) / w for p, w in zip(phases, walls, strict=True)], 1)
            + " %"
            for name in PHASES
        )
        + " | "
        + spread([100 * (1 - sum(p.values()) / w) for p, w in zip(phases, walls, strict=True)], 1)
        + " % |",
        "",
        machine_line(bench_command("generation", quick)),
    ]
    publish(
        "generation",
        "Generation trials: hpo vs the hand-written loop and the floor",
        "\n".join(lines),
        quick,
    )
    print(f"trial spread: {statistics.median(walls):.2f} s median")


if __name__ == "__main__":
    main(quick=quick_flag())
