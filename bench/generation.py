"""Generation trials side by side: hpo's demo trial against the loop a user writes by hand with
steering-vectors, the same loop batched, and the floor (the same prompts generated unsteered in
one batch, no hooks); plus where hpo's trial spends its time.

The demo setting (`experiment=demo`: SmolLM2-135M-Instruct, 20 validation prompts x 32 new
tokens, greedy, sentiment scorer). Every round runs each variant once, in a fresh random order,
so load drift hits all alike; only the per-round ratios are compared. One untimed warm-up round
runs first: what a worker does once (KL reference, the first best trial's artifacts, first-call
imports) is not a trial's cost.

- hpo trial: one trial as `hpo optimize` runs it on an already prepared worker: the CLI's
  `run_trials` (exact budget bookkeeping, SQLite storage with heartbeats) with its `Publisher`,
  guards included (KL on 12 neutral prompts, fluency constraints), at `prompt_end_onward`, so
  the prompt prefix is reused.
- hpo generation: the trial's steered generation + scoring alone (with and without the reused
  prefix).
- README loop: `train_steering_vector` on the train pairs (its defaults: batch 1, last token),
  then `vector.apply(model, multiplier=...)` and `model.generate` on each prompt, scored with the
  same scorer. The multiplier gives the added vector hpo's norm (alpha x the layer's mean
  activation norm), so both steer equally hard and generate comparable text.
- batched loop: the same, generating all prompts in one left-padded batch.
- floor: the prompts generated unsteered in one left-padded batch, no hooks, no scoring.

    python -m bench.generation [--quick] [--rounds N] [--profile]

`--profile` prints a cProfile of one steady trial and of a best trial (artifacts), no rounds.
"""

from __future__ import annotations

import cProfile
import io
import itertools
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
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
ROUNDS = 6
EARLIER = (
    "The variants are described in `bench/generation.py`. An earlier `--quick` run reported 89% "
    "of its one trial outside generation, KL and fluency: that trial built the worker's one-off "
    "KL reference (12 prompts x 16 tokens generated unsteered, on first use), larger than the "
    "quick trial itself; the warm-up round now keeps one-off costs out of the timed trials."
)
SHIPPED, BEFORE = "fluency pass (from the prefix cache)", "fluency pass, full (before)"
# Trials per batched pass of the `k per pass` variant (`study.trials_per_pass`).
PER_PASS = 4
PASSED = f"hpo trial, {PER_PASS} per pass (per trial)"
# Phases of one trial, timed by spies on the real calls (nested ones are subtracted).
PHASES = ("generate", "scorer", "KL", "fluency", "publish")


def _uptime() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def _rounds(quick: bool) -> int:
    args = sys.argv[1:]
    if "--rounds" in args:
        return int(args[args.index("--rounds") + 1])
    return 1 if quick else ROUNDS


def _verdict(values: list[float], target: float, at_least: bool) -> str:
    """Whether the median per-round ratio meets its target, and by how much it misses."""
    median = statistics.median(values)
    if (median >= target) if at_least else (median <= target):
        return "met"
    factor = target / median if at_least else median / target
    return f"missed: {factor:.2f}x short"


def _mean_tokens(ids: list[list[int]], eos: int) -> float:
    """Mean continuation length before EOS: the decode work a variant's text asked for."""
    return sum(len(x[: x.index(eos)] if eos in x else x) for x in ids) / len(ids)


class PeerLoop:
    """What a user writes with steering-vectors: train the vector every trial, then generate."""

    def __init__(self, worker: Any, train_rows: list[Any], batched: bool) -> None:
        self.worker, self.batched = worker, batched
        pairs = worker.objective.train_pairs(train_rows)
        self.samples = [(p.prompt + p.positive, p.prompt + p.negative) for p in pairs]
        self.tokens = 0.0  # mean new tokens of the last call

    def __call__(self, layer: int, norm: float) -> list[str]:
        """One trial at `layer`, adding a vector of norm `norm`; returns the texts."""
        from steering_vectors import train_steering_vector

        loaded, objective = self.worker.loaded, self.worker.objective
        model, tok = loaded.model, loaded.tokenizer
        vector = train_steering_vector(model, tok, self.samples, layers=[layer])
        multiplier = norm / float(vector.layer_activations[layer].norm())
        prompts = self.worker.validation.token_ids
        new_tokens = self.worker.cfg.task.objective.max_new_tokens
        greedy = {
            "max_new_tokens": new_tokens,
            "do_sample": False,
            "pad_token_id": tok.pad_token_id,
        }
        conts: list[list[int]] = []
        with vector.apply(model, multiplier=multiplier), torch.inference_mode():
            if self.batched:
                tok.padding_side = "left"
                batch = tok.pad({"input_ids": prompts}, return_tensors="pt")
                out = model.generate(**batch, **greedy)
                conts = out[:, batch["input_ids"].shape[1] :].tolist()
            else:
                for ids in prompts:
                    inputs = torch.tensor([ids])
                    out = model.generate(inputs, attention_mask=torch.ones_like(inputs), **greedy)
                    conts.append(out[0, len(ids) :].tolist())
        texts = tok.batch_decode(conts, skip_special_tokens=True)
        for text in texts:
            objective.scorer(text, None)
        self.tokens = _mean_tokens(conts, tok.eos_token_id)
        return texts


@contextmanager
def _spied(worker: Any, spent: dict[str, float]) -> Iterator[None]:
    """Time the real generate, scorer, KL and fluency calls of a trial (seconds per phase)."""

    def timed(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - started

        return call

    objective = worker.objective
    with ExitStack() as stack:
        for target, attr, name in (
            (objective, "_generate", "generate"),
            (objective, "scorer", "scorer"),
            (worker, "_add_kl", "KL"),
            (objective, "fluency", "fluency"),
        ):
            stack.enter_context(
                mock.patch.object(target, attr, timed(name, getattr(target, attr)))
            )
        yield


def _full_perplexities(
    model: Any, pad_id: int, prepared: Any, continuations: list[list[int]]
) -> list[float]:
    """The fluency pass as it ran before the prefix reuse: every prompt again in full."""
    from objectives.fluency import perplexities

    return perplexities(model, pad_id, prepared.token_ids, continuations)


def _shipped_perplexities(
    model: Any, pad_id: int, prepared: Any, continuations: list[list[int]]
) -> list[float]:
    """The fluency pass as the trial runs it: from the prompt-prefix cache."""
    from objectives.fluency import perplexities_from_prefix

    return perplexities_from_prefix(
        model, pad_id, prepared.token_ids, prepared.batches, prepared.prefix, continuations
    )


def _why(med: dict[str, float], share: dict[str, float], n: int) -> str:
    """Why the peer targets are met or missed, from the medians (seconds; shares of a trial)."""
    trial, batched, floor = med["hpo trial"], med["batched loop"], med["floor"]
    generation, readme, passed = med["hpo generation"], med["README loop"], med[PASSED]
    guards = trial * (share["KL"] + share["fluency"] + share["rest"] + share["publish"])
    return (
        f"Why, from the medians: the batched loop is the floor ({floor:.1f} s; its generation "
        f"is the same unsteered-cost pass) plus the vector trained every trial (about "
        f"{batched - floor:.1f} s); the README loop adds {readme - batched:.1f} s of {n} separate "
        f"`generate` calls. hpo's steered generation alone is {generation:.1f} s (no prompt "
        f"prefill), and one trial adds {guards:.1f} s of guards and bookkeeping (KL "
        f"{100 * share['KL']:.0f}%, fluency {100 * share['fluency']:.0f}%, the rest "
        f"{100 * (share['rest'] + share['publish']):.0f}% of the trial) that the peers do not "
        f"run. {PER_PASS} trials per pass (`study.trials_per_pass={PER_PASS}`) take "
        f"{passed:.1f} s a trial: {readme / passed:.1f}x faster than the README loop, "
        f"{batched / passed:.1f}x than the batched loop, {passed / floor:.2f}x the floor: the "
        "shared pass pays the per-step overhead of generation, KL and fluency once for all "
        f"{PER_PASS}, and the batch of {PER_PASS} x {n} rows uses the cores better than {n}."
    )


class Trials:
    """One trial at a time through the CLI's path on a prepared worker (`hpo optimize`)."""

    def __init__(self, cfg: Any, worker: Any) -> None:
        from hpo.monitor.publisher import Publisher
        from hpo.run.study import open_study

        self.cfg, self.worker = cfg, worker
        self.study = open_study(cfg)
        self.publisher = Publisher(cfg)
        self.spent: dict[str, float] = {}
        self.phases: list[dict[str, float]] = []

    def publish(self, outcome: Any) -> None:
        started = time.perf_counter()
        try:
            self.publisher(outcome)
        finally:
            self.spent["publish"] = time.perf_counter() - started

    def run(self, params: dict[str, object] | None = None, record: bool = True) -> None:
        """Enqueue `params` (default PARAMS) and run it to the study's next finished trial."""
        from hpo.run.budget import finished_trials
        from hpo.run.study import run_trials

        self.study.enqueue_trial(dict(PARAMS if params is None else params))
        n = finished_trials(self.study) + 1
        self.spent.clear()
        with _spied(self.worker, self.spent):
            run_trials(self.study, self.worker, n, self.publish)
        if record:
            self.phases.append(dict(self.spent))

    def tokens(self) -> float:
        """Mean new tokens before EOS of the last trial."""
        from hpo.core.record import METRICS_ATTR

        return float(self.study.trials[-1].user_attrs[METRICS_ATTR]["tokens"])


def _profile(trials: Trials) -> None:
    """cProfile of a best trial (it uploads artifacts) and of a steady one, top entries."""
    for label, params in (
        ("first steered trial (best so far: note + artifacts)", None),
        ("steady trial (same params: not a new best)", None),
    ):
        profiler = cProfile.Profile()
        started = time.perf_counter()
        profiler.enable()
        trials.run(params, record=False)
        profiler.disable()
        wall = time.perf_counter() - started
        print(f"\n### {label}: {wall:.2f} s; phases {trials.spent}")
        for key in ("cumulative", "tottime"):
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats(key).print_stats(30)
            print(out.getvalue())


def main(quick: bool = False) -> None:
    """Run every variant in interleaved rounds; print and record the ratios."""
    from hpo.model.decoding import generate_ids
    from hpo.run.passes import run_passes
    from hpo.run.study import check_config, prepare_worker
    from hpo.run.trial import TrialRunner
    from hpo.steering.hooks import steer

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rounds = _rounds(quick)
    extra = ("task.splits.validation=4", "task.objective.max_new_tokens=8") if quick else ()
    load_before = _uptime()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = compose(
            "experiment=demo", f"output_dir={tmp}", "study.baseline=false", "pruner=none", *extra
        )
        task = check_config(cfg)
        started = time.perf_counter()
        worker = prepare_worker(cfg, task)
        worker.kl_reference("validation")  # what the baseline trial builds in a real study
        setup = time.perf_counter() - started
        trials = Trials(cfg, worker)
        if "--profile" in sys.argv[1:]:
            _profile(trials)
            return
        plan = worker.plan({**PARAMS, "method": "caa"})
        loaded, prepared = worker.loaded, worker.validation
        tok = loaded.tokenizer
        readme, batched = PeerLoop(worker, task.train, False), PeerLoop(worker, task.train, True)
        norm = ALPHA * float(plan.vectors[LAYER].norm())
        new = cfg.task.objective.max_new_tokens
        tokens: dict[str, float] = {}
        texts: dict[str, list[list[int]]] = {}

        def hpo_trial() -> None:
            trials.run()
            tokens["hpo trial"] = trials.tokens()

        passes = itertools.count()
        runner = TrialRunner(worker)

        def hpo_pass() -> None:
            # PER_PASS trials near the one-trial variant's params, scored in one batched pass.
            study = optuna.create_study(
                storage=f"sqlite:///{tmp}/passes.db",
                study_name=f"pass-{next(passes)}",
                direction="maximize",
                sampler=optuna.samplers.TPESampler(seed=0, constant_liar=True),
            )
            for i in range(PER_PASS):
                study.enqueue_trial({**PARAMS, "alpha": ALPHA * (1 - 0.1 * i)})
            run_passes(study, runner, PER_PASS, PER_PASS)

        def generation(reuse: bool) -> Callable[[], None]:
            def run() -> None:
                with steer(loaded.model, loaded.blocks, plan.vectors, plan.application):
                    result = worker.objective.score(loaded.model, prepared, reuse_prefix=reuse)
                tokens["hpo generation"] = result.metrics["tokens"]
                texts["continuations"] = result.continuations or []

            return run

        def peer(name: str, loop: PeerLoop) -> Callable[[], None]:
            def run() -> None:
                loop(LAYER, norm)
                tokens[name] = loop.tokens

            return run

        def floor() -> None:
            ids = generate_ids(loaded.model, tok, prepared.token_ids, new)
            tokens["floor"] = _mean_tokens(ids, tok.eos_token_id)

        def fluency(full: bool) -> Callable[[], None]:
            pass_ = _full_perplexities if full else _shipped_perplexities

            def run() -> None:
                pass_(loaded.model, tok.pad_token_id, prepared, texts["continuations"])

            return run

        variants = {
            "hpo trial": hpo_trial,
            "hpo generation": generation(True),
            "hpo generation, prefix not reused": generation(False),
            "README loop": peer("README loop", readme),
            "batched loop": peer("batched loop", batched),
            "floor": floor,
            PASSED: hpo_pass,
            SHIPPED: fluency(False),
            BEFORE: fluency(True),
        }
        warm_started = time.perf_counter()
        interleaved(variants, 1)  # warm-up: first-call costs, the first best trial's artifacts
        warm = time.perf_counter() - warm_started
        trials.phases.clear()
        times = interleaved(variants, rounds, shuffle_seed=0)
        times[PASSED] = [x / PER_PASS for x in times[PASSED]]
        conts = texts["continuations"]
        fast = _shipped_perplexities(loaded.model, tok.pad_token_id, prepared, conts)
        slow = _full_perplexities(loaded.model, tok.pad_token_id, prepared, conts)
        fluency_diff = max(abs(a / b - 1) for a, b in zip(fast, slow, strict=True))
    load_after = _uptime()
    t, walls, phases = times, times["hpo trial"], trials.phases
    rest = [w - sum(p.values()) for p, w in zip(phases, walls, strict=True)]
    split_rows = [(name, [p.get(name, 0.0) for p in phases]) for name in PHASES]
    split_rows.append(("rest", rest))
    share = {name: statistics.median(ratios(v, walls)) for name, v in split_rows}
    readme_x = ratios(t["README loop"], walls)
    batched_x = ratios(t["batched loop"], walls)
    floor_x = ratios(walls, t["floor"])
    fluency_x = ratios(t[BEFORE], t[SHIPPED])
    passed = t[PASSED]
    lines = [
        f"Demo setting: SmolLM2-135M-Instruct (float32, CPU), {len(prepared.prompts)} validation "
        f"prompts x {new} new tokens (greedy), sentiment scorer; one trial at {PARAMS}; "
        f"{rounds} interleaved rounds (fresh order each) after one untimed warm-up round "
        f"({warm:.0f} s). Load average (1, 5, 15 min) before {load_before}, after {load_after} "
        "(other engineers' tests share the 2 cores): only the per-round ratios count. hpo's "
        "one-off worker setup (model, activation cache, unsteered baseline and fluency "
        f"reference, prompt-prefix caches, KL reference): {setup:.1f} s."
        + (
            f" Torch ran {torch.get_num_threads()} thread(s) on {os.cpu_count()} shared cores "
            "(`OMP_NUM_THREADS`): with every core busy, more threads than free cores slow each "
            "forward several times over."
            if torch.get_num_threads() < (os.cpu_count() or 1)
            else ""
        ),
        "",
        EARLIER,
        "",
        "| per call | seconds, median (min-max) | new tokens per prompt (before EOS) |",
        "|---|---|---|",
        *(
            f"| {name} | {spread(values)} | "
            + (f"{tokens[name.split(',')[0]]:.1f} |" if name.split(",")[0] in tokens else " |")
            for name, values in t.items()
        ),
        "",
        "| ratio, per round | median (min-max) | target | verdict |",
        "|---|---|---|---|",
        f"| README loop / hpo trial | {spread(readme_x)} | >= 5 | {_verdict(readme_x, 5, True)} |",
        f"| batched loop / hpo trial | {spread(batched_x)} | >= 3 | "
        f"{_verdict(batched_x, 3, True)} |",
        f"| hpo trial / floor | {spread(floor_x)} | <= 1.5 | {_verdict(floor_x, 1.5, False)} |",
        f"| hpo generation / floor | {spread(ratios(t['hpo generation'], t['floor']))} | | |",
        f"| batched loop / floor | {spread(ratios(t['batched loop'], t['floor']))} | | |",
        f"| README loop / hpo generation | "
        f"{spread(ratios(t['README loop'], t['hpo generation']))} | | |",
        "| hpo generation, prefix not reused / reused | "
        f"{spread(ratios(t['hpo generation, prefix not reused'], t['hpo generation']))} | | |",
        f"| fluency pass, full (before) / from the prefix cache | {spread(fluency_x)} | | |",
        f"| README loop / hpo trial, {PER_PASS} per pass | "
        f"{spread(ratios(t['README loop'], passed))} | >= 5 | "
        f"{_verdict(ratios(t['README loop'], passed), 5, True)} |",
        f"| batched loop / hpo trial, {PER_PASS} per pass | "
        f"{spread(ratios(t['batched loop'], passed))} | >= 3 | "
        f"{_verdict(ratios(t['batched loop'], passed), 3, True)} |",
        f"| hpo trial, {PER_PASS} per pass / floor | {spread(ratios(passed, t['floor']))} | "
        f"<= 1.5 | {_verdict(ratios(passed, t['floor']), 1.5, False)} |",
        f"| hpo trial / hpo trial, {PER_PASS} per pass | {spread(ratios(walls, passed))} | | |",
        "",
        "Where hpo's trial goes, per round: `generate` is the steered `model.generate` (from the "
        f"prompt-prefix cache), `scorer` the sentiment scorer on the {len(prepared.prompts)} "
        "texts, KL the teacher-forced pass on the 12 neutral prompts, fluency the unsteered "
        "perplexity pass, publish the dashboard publisher (no new best: no artifacts), rest all "
        "else (suggest, vector build, decoding, SQLite attribute writes, Optuna ask/tell, budget "
        "bookkeeping):",
        "",
        "| phase | seconds, median (min-max) | share of the trial, % |",
        "|---|---|---|",
        *(
            f"| {name} | {spread(values, digits=3)} | {spread(ratios(values, walls), 100, 1)} |"
            for name, values in split_rows
        ),
        "",
        f"The fluency guard's perplexity pass ({100 * share['fluency']:.0f}% of the trial) runs "
        "from the unsteered prompt-prefix cache the trial already holds (the pass is unsteered, "
        "so the prompt's states are exactly those cached) and makes only the continuation's "
        f"logits: {spread(fluency_x)} times less than the full pass it replaced (largest "
        f"relative difference between the two {fluency_diff:.1e}).",
        "",
        _why(
            {k: statistics.median(v) for k, v in t.items()},
            share,
            len(prepared.prompts),
        ),
        "",
        machine_line(bench_command("generation", quick)),
    ]
    publish(
        "generation",
        "Generation trials: hpo vs the hand-written loop and the floor",
        "\n".join(lines),
        quick,
    )


if __name__ == "__main__":
    main(quick=quick_flag())
