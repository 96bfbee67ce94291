"""Layer choice by attribution patching: rank the layers before the first trial.

Each layer's vector (the space's first method and aggregation, as the trials build it) gets its
first-order effect on the train pairs' log-odds (`hpo.steering.attribution`). A layer's
*predicted gain* is that effect times the alpha bound that moves the quantity up
(`max(alpha.low * effect, alpha.high * effect)`): the first-order change the study can reach at
that layer. `search_space.layer_selection` then either narrows the layer range to the
`top_k`-wide window of the highest summed gain, or enqueues the `top_k` best layers as the first
trials. The ranking is computed once per study and stored in a study attribute, so every worker
(and a worker joining later) narrows the same way and the enqueued trials are enqueued once.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import optuna

from hpo.core.config import IntRange, SearchSpaceConfig
from hpo.core.errors import UserError
from hpo.core.modes import add_modes
from hpo.run.tasks import load_task
from hpo.run.worker import Worker
from hpo.steering.attribution import LayerEffect, attribute_layers

log = logging.getLogger(__name__)

SELECTION_ATTR = "layer_selection"
# Quantity per objective kind: the choice kinds' answer-letter log-odds, else the completions'.


@dataclass(frozen=True)
class LayerRanking:
    """Per-layer effects and what the study makes of them.

    Attributes:
        effects: every attributed layer's effect (per unit alpha).
        alpha: the search space's alpha bounds (low, high).
        candidates: the layers the search space may steer (the range, ascending).
        setup: how the vectors and the quantity were chosen (method, aggregation, positions,
            quantity, reduce, pairs).
    """

    effects: list[LayerEffect]
    alpha: tuple[float, float]
    candidates: list[int]
    setup: dict[str, Any]

    def gain(self, effect: LayerEffect) -> float:
        """First-order change of the quantity at the alpha bound that raises it."""
        low, high = self.alpha
        return max(low * effect.effect, high * effect.effect)

    def ranked(self) -> list[LayerEffect]:
        """The candidate layers, highest predicted gain first (ties: larger |effect|)."""
        pool = [e for e in self.effects if e.layer in self.candidates]
        return sorted(pool, key=lambda e: (-self.gain(e), -abs(e.effect), e.layer))

    def top(self, k: int) -> list[int]:
        """The `k` candidate layers of highest predicted gain."""
        return [e.layer for e in self.ranked()[:k]]

    def window(self, k: int) -> tuple[int, int]:
        """The `k` consecutive candidates (in the range's step) of highest summed gain."""
        gains = {e.layer: self.gain(e) for e in self.effects}
        c = self.candidates
        k = min(k, len(c))
        start = max(range(len(c) - k + 1), key=lambda i: (sum(gains[x] for x in c[i : i + k]), -i))
        return c[start], c[start + k - 1]

    def record(self, top_k: int) -> dict[str, Any]:
        """Plain data for the study attribute, `layers.json` and the plot."""
        return {
            **self.setup,
            "alpha": list(self.alpha),
            "candidates": self.candidates,
            "layers": [
                {**dataclasses.asdict(e), "gain": self.gain(e)}
                for e in sorted(self.effects, key=lambda e: e.layer)
            ],
            "top": self.top(top_k),
            "window": list(self.window(top_k)),
        }


def candidate_layers(space: SearchSpaceConfig) -> list[int]:
    """The first steered layers the space allows.

    Raises:
        UserError: the space uses `layer_sets`, has no add mode, or `top_k` exceeds the range.
    """
    selection = space.layer_selection
    if space.layer_sets:
        raise UserError(
            "search_space.layer_selection needs a layer range (search_space.layers), "
            f"got layer_sets {space.layer_sets}"
        )
    if not any(m in add_modes() for m in space.mode):
        raise UserError(
            "search_space.layer_selection ranks layers by adding the vector: search_space.mode "
            f"must list one of {list(add_modes())}, got {space.mode}"
        )
    layers = list(range(space.layers.low, space.layers.high + 1, space.layers.step))
    if selection.top_k > len(layers):
        raise UserError(
            f"search_space.layer_selection.top_k must be <= the {len(layers)} layers of "
            f"search_space.layers, got {selection.top_k}"
        )
    return layers


def rank_layers(worker: Worker, train: list[dict[str, Any]] | None = None) -> LayerRanking:
    """Attribute every layer of the worker's model on its task's train pairs.

    `train`: the train rows (read from the task when omitted).
    """
    cfg = worker.cfg
    space = cfg.search_space
    selection = space.layer_selection
    candidates = candidate_layers(space)
    rows = load_task(cfg.task).train if train is None else train
    pairs = worker.objective.train_pairs(rows)
    if selection.pairs is not None:
        pairs = pairs[: selection.pairs]
    method, aggregation, positions = space.method[0], space.aggregation[0], space.positions[0]
    n_layers = worker.loaded.shape.num_layers
    vectors = {
        layer: worker.planner.builder.vector(method, aggregation, layer, space.alpha_scale)
        for layer in range(n_layers)
    }
    quantity, reduce = worker.objective.attribution
    effects = attribute_layers(
        worker.loaded, pairs, vectors, positions, quantity, reduce, selection.batch_size
    )
    setup = {
        "method": method,
        "aggregation": aggregation,
        "positions": positions,
        "quantity": quantity,
        "reduce": reduce,
        "pairs": len(pairs),
        "alpha_scale": space.alpha_scale,
    }
    return LayerRanking(effects, (space.alpha.low, space.alpha.high), candidates, setup)


def enqueue_params(space: SearchSpaceConfig, record: dict[str, Any]) -> list[dict[str, Any]]:
    """The first trials of `enqueue`: each top layer with the vector it was attributed with."""
    mode = next(m for m in space.mode if m in add_modes())
    effects = {row["layer"]: row["effect"] for row in record["layers"]}
    low, high = record["alpha"]
    out = []
    for layer in record["top"]:
        # Half the favourable bound: the range's edges are where steering breaks the model.
        bound = high if high * effects[layer] >= low * effects[layer] else low
        out.append(
            {
                "layer": layer,
                "window": space.window.low,
                "mode": mode,
                "alpha": min(max(bound / 2, low), high),
                "aggregation": record["aggregation"],
                "method": record["method"],
                "positions": record["positions"],
            }
        )
    return out


def narrowed(space: SearchSpaceConfig, record: dict[str, Any]) -> SearchSpaceConfig:
    """The space with `layers` narrowed to the recorded window."""
    low, high = record["window"]
    return dataclasses.replace(space, layers=IntRange(low, high, space.layers.step))


def select_layers(study: optuna.Study, worker: Worker) -> SearchSpaceConfig:
    """Apply `search_space.layer_selection` to a study before its trials run.

    The ranking is computed by the first worker and stored in the study; `enqueue` adds its
    trials then, `narrow` narrows the space this worker's trials sample (every worker reads the
    same record). Returns the space the trials sample: the worker's own unless narrowed.
    """
    space = worker.cfg.search_space
    selection = space.layer_selection
    enqueue, narrow = selection.enqueues, selection.narrows
    if not (enqueue or narrow):
        return space
    record = study.user_attrs.get(SELECTION_ATTR)
    if record is None:
        ranking = rank_layers(worker)
        record = ranking.record(selection.top_k)
        study.set_user_attr(SELECTION_ATTR, record)
        if enqueue:
            for params in enqueue_params(space, record):
                study.enqueue_trial(params, skip_if_exists=True)
        log.info(
            "layer selection (%s): top layers %s, window %s",
            selection.mode,
            record["top"],
            record["window"],
        )
    return narrowed(space, record) if narrow else space
