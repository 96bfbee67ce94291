"""The search-space schema: layer(s), alpha, aggregation, method, sites, gates, layer choice."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from hpo.core.config_rules import _at_least, _check_choice
from hpo.core.errors import UserError
from hpo.core.prompting import NONE, PROMPTINGS


@dataclass
class IntRange:
    """An integer search dimension `[low, high]` (both inclusive)."""

    low: int = 0
    high: int = 0
    step: int = 1


@dataclass
class FloatRange:
    """A float search dimension `[low, high]`, optionally log-scaled."""

    low: float = 0.0
    high: float = 1.0
    log: bool = False


LAYER_SELECTIONS = ("none", "narrow", "enqueue")
# Per layer-selection mode: (enqueues the top layers, narrows the layer range).
_SELECTION_ACTIONS = {"none": (False, False), "narrow": (False, True), "enqueue": (True, False)}


@dataclass
class LayerSelectionConfig:
    """Attribution-patching layer choice (`hpo layers`): before the first trial, each
    layer's first-order effect of its vector on the train pairs' log-odds ranks the layers.

    `mode`: `none`; `narrow` (the layer range becomes the `top_k`-wide window of the highest
    predicted gain); `enqueue` (the `top_k` best layers run first, at half the favourable alpha
    bound). `pairs`: train pairs used (null = all); `batch_size`: sequences per backward pass.
    """

    mode: str = "none"
    top_k: int = 3
    pairs: int | None = 64
    batch_size: int = 8

    @property
    def enqueues(self) -> bool:
        """`enqueue`: the top layers' trials run first."""
        return _SELECTION_ACTIONS[self.mode][0]

    @property
    def narrows(self) -> bool:
        """`narrow`: the layer range shrinks to the best window."""
        return _SELECTION_ACTIONS[self.mode][1]

    def __post_init__(self) -> None:
        _check_choice("search_space.layer_selection.mode", self.mode, LAYER_SELECTIONS)
        _at_least("search_space.layer_selection.top_k", self.top_k)
        _at_least("search_space.layer_selection.pairs", self.pairs)
        _at_least("search_space.layer_selection.batch_size", self.batch_size)


@dataclass
class SearchSpaceConfig:
    """The search space: layer(s), alpha, aggregation, method, and how the vector is applied.

    `layers` is the first steered layer and `window` how many consecutive layers from it are
    steered; `layer_sets` (when non-empty) replaces both with a choice among explicit sets.
    `derived` names sympy expressions of `alpha`, `layer` and `window`; `layer_alpha` is the
    alpha each steered layer gets (`alpha / window` by default: the layers share alpha).
    """

    layers: IntRange = field(default_factory=IntRange)
    alpha: FloatRange = field(default_factory=FloatRange)
    aggregation: list[str] = field(default_factory=lambda: ["choice"])
    method: list[str] = field(default_factory=lambda: ["caa"])
    positions: list[str] = field(default_factory=lambda: ["all"])
    alpha_scale: str = "relative"
    mode: list[str] = field(default_factory=lambda: ["add"])
    window: IntRange = field(default_factory=lambda: IntRange(1, 1))
    layer_sets: list[list[int]] = field(default_factory=list)
    derived: dict[str, str] = field(default_factory=lambda: {"layer_alpha": "alpha / window"})
    # Attribution-patching layer choice before the first trial (`hpo layers` shows it).
    layer_selection: LayerSelectionConfig = field(default_factory=LayerSelectionConfig)
    # CREST's head steering: `site: [residual, heads]`; heads are the top `head_ratio` of all
    # heads by probe accuracy (or the top `heads_top_k`), steered before or after the output
    # projection.
    site: list[str] = field(default_factory=lambda: ["residual"])
    head_ratio: FloatRange = field(default_factory=lambda: FloatRange(0.38, 0.38))
    heads_top_k: IntRange | None = None
    head_point: list[str] = field(default_factory=lambda: ["pre_o_proj"])
    head_mode: list[str] = field(default_factory=lambda: ["add"])
    # Gates, off by default: `trigger` patterns ("" = none), `probe_gate` off/present/absent.
    trigger: list[str] = field(default_factory=lambda: [""])
    probe_gate: list[str] = field(default_factory=lambda: ["off"])
    gate_threshold: FloatRange = field(default_factory=lambda: FloatRange(0.5, 0.5))
    # Steering on top of the task's instruction: `[none, instruction]` searches both.
    prompting: list[str] = field(default_factory=lambda: [NONE])

    def __post_init__(self) -> None:
        if not self.prompting or any(p not in PROMPTINGS for p in self.prompting):
            raise UserError(
                f"search_space.prompting must list some of {list(PROMPTINGS)}, "
                f"got {list(self.prompting)}"
            )
        # The other rules need the model's layer count: `search_spaces.validate`.
        for key in ("low", "high"):
            value = getattr(self.alpha, key)
            if not math.isfinite(value):
                raise UserError(f"search_space.alpha.{key} must be a finite number, got {value}")
