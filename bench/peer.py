"""Peer comparison: the same trial done by hpo's worker path and by a hand-written Optuna loop
around `steering-vectors` (the way its README shows it: `train_steering_vector` on the train
pairs every trial, then `vector.apply(model, multiplier=alpha)` while scoring).

Both build a CAA vector (mean of positive - negative last-token activations) at one layer
(both count `L` as decoder block `L`'s output), add `alpha * vector` at every position, and score
the same validation items with the same letter-balanced A/B scorer, so the scores must agree.

    python -m bench.peer [--quick]
"""

from __future__ import annotations

import statistics
import tempfile
import time
from typing import Any

import optuna
import torch

from bench.common import command, machine_line, publish, quick_flag, ratios, spread, sycophancy

SPACE = (
    "search_space.positions=[all]",
    "search_space.aggregation=[last]",
    "search_space.method=[caa]",
    "search_space.alpha_scale=absolute",
)


def trial_params(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """The (layer, alpha) points both loops run, drawn once so both run the same work."""
    g = torch.Generator().manual_seed(seed)
    layers = torch.randint(3, 28, (n,), generator=g).tolist()
    alphas = (torch.rand(n, generator=g) * 8 - 4).tolist()
    return [
        {"layer": int(la), "alpha": round(float(a), 3)}
        for la, a in zip(layers, alphas, strict=True)
    ]


class PeerLoop:
    """A user's Optuna objective: re-extract and steer with steering-vectors every trial."""

    def __init__(self, worker: Any, train_rows: list[Any]) -> None:
        self.worker = worker
        pairs = worker.objective.train_pairs(train_rows)
        self.samples = [(p.prompt + p.positive, p.prompt + p.negative) for p in pairs]
        self.vectors: dict[int, torch.Tensor] = {}

    def __call__(self, trial: optuna.Trial) -> float:
        from steering_vectors import train_steering_vector

        layer = trial.suggest_int("layer", 3, 27)
        alpha = trial.suggest_float("alpha", -4.0, 4.0)
        loaded = self.worker.loaded
        vector = train_steering_vector(
            loaded.model, loaded.tokenizer, self.samples, layers=[layer], read_token_index=-1
        )
        self.vectors[trial.number] = vector.layer_activations[layer]
        with vector.apply(loaded.model, multiplier=alpha):
            score = self.worker.objective.score(loaded.model, self.worker.validation)
        return float(score.value)


def _one_trial(study: optuna.Study, objective: Any, params: dict[str, Any]) -> float:
    study.enqueue_trial(params)
    started = time.perf_counter()
    study.optimize(objective, n_trials=1)
    return time.perf_counter() - started


def same_tokens(worker: Any, train_rows: list[Any]) -> bool:
    """Whether prompt+completion tokenized jointly (peer) equals our prompt, then completion."""
    tok = worker.loaded.tokenizer
    for p in worker.objective.train_pairs(train_rows):
        for completion in (p.positive, p.negative):
            ours = tok.encode(p.prompt) + tok.encode(completion, add_special_tokens=False)
            if tok(p.prompt + completion)["input_ids"] != ours:
                return False
    return True


def main(quick: bool = False) -> None:
    """Run both loops on the same params, interleaved; print and record the ratio."""
    from hpo.run.study import check_config, open_study, prepare_worker
    from hpo.run.trial import TrialRunner

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    train, validation, n = (4, 2, 2) if quick else (8, 6, 4)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = sycophancy(train, validation, *SPACE, f"output_dir={tmp}", "study.baseline=false")
        task = check_config(cfg)
        started = time.perf_counter()
        worker = prepare_worker(cfg, task)
        setup = time.perf_counter() - started
        ours_study = open_study(cfg)
        peer = PeerLoop(worker, task.train)
        peer_study = optuna.create_study(direction="maximize")
        ours_runner = TrialRunner(worker)
        times: dict[str, list[float]] = {"peer": [], "hpo": []}
        for params in trial_params(n):
            full = {**params, "aggregation": "last", "method": "caa", "positions": "all"}
            times["peer"].append(_one_trial(peer_study, peer, params))
            times["hpo"].append(_one_trial(ours_study, ours_runner, full))
        ours_trials = ours_study.get_trials()
        diffs = [
            abs(float(a.value or 0) - float(b.value or 0))
            for a, b in zip(peer_study.get_trials(), ours_trials, strict=True)
        ]
        vec_diffs = []
        for t in peer_study.get_trials():
            ours_vec = worker.vectors({**t.params, "aggregation": "last", "method": "caa"})
            vec_diffs.append(
                float((peer.vectors[t.number] - ours_vec[t.params["layer"]]).abs().max())
            )
        residual = worker.residual
    r = ratios(times["peer"], times["hpo"])
    saved = statistics.median(times["peer"]) - statistics.median(times["hpo"])
    lines = [
        f"Sycophancy on SmolLM2-135M: {train} train items ({len(peer.samples)} contrastive pairs, "
        f"letter-balanced), {validation} validation items ({len(worker.validation.variants)} "
        f"scored prompts); CAA at one layer, absolute alpha, `positions: all`; {n} trials at the "
        "same random (layer, alpha) points, peer and hpo interleaved. hpo runs its shipped worker "
        "path (SQLite study, `TrialRunner`); the peer loop an in-memory Optuna study around "
        "`steering_vectors.train_steering_vector` (its default batch size 1) and "
        "`SteeringVector.apply`, scoring with the same letter-balanced scorer.",
        "",
        "| per trial | seconds, median (min-max) |",
        "|---|---|",
        f"| peer loop (re-extracts every trial) | {spread(times['peer'])} |",
        f"| hpo worker path | {spread(times['hpo'])} |",
        f"| **ratio peer / hpo** | **{spread(r)}** |",
        "",
        f"hpo's one-off setup (load model, extract and cache activations, tokenize): "
        f"{setup:.1f} s, paid back after {setup / max(saved, 1e-9):.1f} trials. "
        f"Block-output cache: {residual.hits if residual else 0} hits, "
        f"{residual.misses if residual else 0} misses over the hpo trials.",
        "",
        f"Equality where the methods coincide: tokenization of prompt + completion identical for "
        f"both: {same_tokens(worker, task.train)}; max |vector difference| "
        f"{max(vec_diffs):.2e}; max |score difference| {max(diffs):.2e} over {n} trials "
        f"(scores {', '.join(f'{t.value:.4f}' for t in ours_trials)}).",
        "",
        machine_line(command("peer", quick)),
    ]
    publish(
        "peer",
        "Peer comparison: hand-written steering-vectors loop vs hpo",
        "\n".join(lines),
        quick,
    )


if __name__ == "__main__":
    main(quick=quick_flag())
