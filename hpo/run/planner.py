"""The planner: a trial's params -> its `Plan` (vectors, application, and what the build found).

It holds what plans are built from, loaded or fitted once per worker: the vector builder over the
activation cache(s), the per-head bank of site-heads spaces, the per-layer probes of the residual
probe gate and the trigger patterns' token ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from hpo.core.config import SearchSpaceConfig
from hpo.core.errors import UserError
from hpo.core.record import HEADS_STEERED_ATTR, PROBE_ACCURACY_ATTR
from hpo.model.loading import LoadedModel
from hpo.steering.activations import ActivationCache
from hpo.steering.application import Application
from hpo.steering.gates import Gate, trigger_token_ids
from hpo.steering.head_vectors import HeadBank, layer_probes
from hpo.steering.heads import head_shape
from hpo.steering.methods import VectorBuilder
from hpo.steering.probe import ProbeBank
from search_spaces import layer_scales, resolve, steered_layers


@dataclass(frozen=True)
class Plan:
    """One trial's steering, resolved once: what is applied where, and how.

    Attributes:
        params: the params as sampled (what Optuna records).
        resolved: `params` completed with fixed dimensions and derived values.
        vectors: the vector(s) added at alpha = 1, one per steered layer.
        application: alpha, positions, mode and per-layer scales.
        info: scalars about the build, recorded with the trial (`probe_accuracy`: the mean
            held-out accuracy of the probes it used; `heads_steered`: site heads).
    """

    params: dict[str, Any]
    resolved: dict[str, Any]
    vectors: dict[int, torch.Tensor]
    application: Application
    info: dict[str, float] = field(default_factory=dict)


@dataclass
class Planner:
    """Turns a trial's params into its `Plan`, from state built once per worker.

    Attributes:
        space: the search space the params come from.
        loaded: the steered model (its tokenizer reads triggers; its shape sizes the heads).
        cache: the steered model's activations.
        finetuned: the finetuned model's activations (method `model_diff` only).
        seed: seeds the probes' held-out splits.
    """

    space: SearchSpaceConfig
    loaded: LoadedModel
    cache: ActivationCache
    finetuned: ActivationCache | None = None
    seed: int = 0
    builder: VectorBuilder = field(init=False)
    # Site heads: every head's direction, norm and probe (None when the space has no heads).
    heads: HeadBank | None = field(default=None, init=False)
    _layer_probes: dict[str, ProbeBank] = field(default_factory=dict, init=False, repr=False)
    _triggers: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        space = self.space
        self.builder = VectorBuilder(self.cache, self.finetuned, self.seed)
        if "heads" in space.site and self.cache.has_heads:
            n_heads, head_dim = head_shape(self.loaded.model, self.loaded.blocks)
            self.heads = HeadBank(self.cache, n_heads, head_dim, self.seed)
            # Fitted once here, so no trial pays for the per-head probes.
            for aggregation in space.aggregation:
                self.heads.fits(aggregation)
        if list(space.probe_gate) != ["off"] and "residual" in space.site:
            for aggregation in space.aggregation:
                self.layer_probes(aggregation)

    def plan(self, params: dict[str, Any], resolved: dict[str, Any] | None = None) -> Plan:
        """A trial's vectors and application, from its params resolved once (pass `resolved`
        when `search_spaces.suggest` already resolved them)."""
        if resolved is None:
            resolved = resolve(params, self.space)
        if resolved.get("site", "residual") == "heads":
            return self._head_plan(params, resolved)
        vectors = self.builder.vectors(
            resolved["method"],
            resolved["aggregation"],
            steered_layers(resolved),
            self.space.alpha_scale,
        )
        application = Application(
            alpha=float(resolved["alpha"]),
            positions=resolved["positions"],
            mode=resolved["mode"],
            scales=layer_scales(resolved, self.space),
            gate=self._gate(resolved, {layer: layer for layer in vectors}),
        )
        return Plan(dict(params), resolved, vectors, application, dict(self.builder.info))

    def _head_plan(self, params: dict[str, Any], resolved: dict[str, Any]) -> Plan:
        """A site-heads trial: the top heads by probe accuracy, each steered along its CAA
        direction around the attention output projection (CREST: heads ranked by a linear
        probe's held-out accuracy, `hpo.steering.heads`)."""
        bank = self.heads
        if bank is None:
            raise UserError(
                "site heads needs search_space.site to list heads when the worker starts "
                "(its activation cache records the heads)"
            )
        aggregation = resolved["aggregation"]
        top_k = resolved.get("heads_top_k")
        heads = bank.select(
            aggregation,
            ratio=resolved.get("head_ratio"),
            top_k=None if top_k is None else int(top_k),
        )
        vectors = bank.vectors(aggregation, heads, self.space.alpha_scale)
        accuracies = bank.accuracies(aggregation, heads)
        info = {
            HEADS_STEERED_ATTR: float(len(accuracies)),
            PROBE_ACCURACY_ATTR: sum(accuracies) / len(accuracies),
        }
        keys = {(layer, h): (layer, h) for layer, chosen in heads.items() for h in chosen}
        application = Application(
            alpha=float(resolved["alpha"]),
            positions=resolved["positions"],
            mode=resolved["mode"],
            site="heads",
            heads=heads,
            head_dim=bank.head_dim,
            n_heads=bank.n_heads,
            head_point=resolved["head_point"],
            gate=self._gate(resolved, keys, heads),
        )
        return Plan(dict(params), resolved, vectors, application, info)

    def layer_probes(self, aggregation: str) -> ProbeBank:
        """A probe per layer's block output (the residual site's probe gate), fitted once."""
        if aggregation not in self._layer_probes:
            self._layer_probes[aggregation] = layer_probes(self.cache, aggregation, self.seed)
        return self._layer_probes[aggregation]

    def _gate(
        self,
        resolved: dict[str, Any],
        keys: dict[Any, Any],
        heads: dict[int, tuple[int, ...]] | None = None,
    ) -> Gate | None:
        """The trial's gates (None when both are off); `keys` are the gated units."""
        trigger = str(resolved.get("trigger", ""))
        probe = str(resolved.get("probe_gate", "off"))
        if not trigger and probe == "off":
            return None
        if trigger and trigger not in self._triggers:
            self._triggers[trigger] = trigger_token_ids(self.loaded.tokenizer, trigger)
        probes: dict[Any, tuple[torch.Tensor, float]] = {}
        if probe != "off":
            aggregation = resolved["aggregation"]
            if heads is not None:
                assert self.heads is not None
                probes = self.heads.head_probes(aggregation, heads)
            else:
                bank = self.layer_probes(aggregation)
                probes = {k: (bank.weight[k], float(bank.bias[k])) for k in keys}
        return Gate(
            trigger=trigger,
            trigger_ids=self._triggers.get(trigger),
            probe=probe,
            threshold=float(resolved.get("gate_threshold", 0.5)),
            probes=probes,
        )
