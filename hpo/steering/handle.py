"""The live state of a steering context and the arithmetic of a steering mode.

Shared by the residual-stream hooks (`hpo.steering.hooks`) and the attention-head hooks
(`hpo.steering.heads`). Modes (what a hook does to a steered activation `h`, with `a` the
unit's alpha):

- `add`: `h + a * v`.
- `add_norm_preserving`: `h + a * v`, rescaled back to `|h|` (seed 003's norm preservation: the
  direction turns, the magnitude the next module expects stays).
- `ablate`: `h - a * (h . u) u` with `u = v / |v|`: at `a = 1` the component along the direction
  is removed; the vector's length does not matter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from hpo.core.errors import UserError
from hpo.core.vocabulary import MODES
from hpo.steering.gates import Gate, TriggerState


@dataclass
class SteeringHandle:
    """Live controls of an active steering context.

    Attributes:
        alpha: multiplier of every vector; change it between forward passes.
        enabled: `False` runs the model unsteered without removing the hooks.
        prompt_length: tokens in the prompt (set by generation helpers); when `None`, a forward
            pass without cache treats its whole input as the prompt.
        mode: `add`, `add_norm_preserving` or `ablate` (see the module docstring).
        scales: per-layer multiplier of `alpha` (e.g. `1 / n` over an `n`-layer window).
        gate: the conditions a position must meet to be steered (None: every position).
    """

    vectors: dict[int, torch.Tensor]
    alpha: float
    positions: str
    enabled: bool = True
    prompt_length: int | None = None
    mode: str = "add"
    scales: dict[int, float] = field(default_factory=dict)
    gate: Gate | None = None
    _past_length: int = field(default=0, repr=False)
    # The prompt width a reused prefix cache carries (None: no marked prefix in this chunk).
    _prompt_width: int | None = field(default=None, repr=False)
    # The trigger gate's `[B, T]` mask of the current forward chunk (None: no trigger gate).
    _trigger: torch.Tensor | None = field(default=None, repr=False)
    _trigger_state: TriggerState = field(default_factory=TriggerState, repr=False)

    def start_index(self, seq_len: int) -> int:
        """First position of the current forward chunk that gets the vector."""
        past = self._past_length
        if self.positions == "all":
            return 0
        announced = self.prompt_length if self.prompt_length is not None else self._prompt_width
        prompt = announced if announced is not None else past + seq_len
        if past > 0 and announced is None:
            prompt = past  # decoding with a cache after an unannounced prompt
        first = prompt - 1 if self.positions == "prompt_end_onward" else prompt
        return max(first - past, 0)

    def layer_alpha(self, layer: int) -> float:
        """The multiplier applied at one layer: `alpha * scales[layer]`."""
        return self.alpha * self.scales.get(layer, 1.0)

    def begin_chunk(
        self, past: int, ids: torch.Tensor | None, prompt_width: int | None = None
    ) -> None:
        """Called before every model forward: where the chunk sits, the prompt width a reused
        prefix cache carries, and the trigger mask."""
        self._past_length = past
        self._prompt_width = prompt_width
        gate = self.gate
        if gate is None or not gate.trigger:
            return
        if ids is None or ids.dim() != 2 or ids.is_floating_point():
            raise UserError("a trigger gate needs the model called with input_ids")
        assert gate.trigger_ids is not None
        self._trigger = self._trigger_state.mask(ids, past, gate.trigger_ids)

    def open_mask(
        self, shape: tuple[int, int], key: Any = None, acts: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """`[B, T]` (or `[B, T, units]` for per-head `acts` `[B, T, units, D]`) bool: where the
        chunk may be steered; None when every position from `start_index` may.

        `key` / `acts`: the probe gate's unit key(s) and the unit's current activations.
        """
        gate = self.gate
        if gate is None or not gate.active:
            return None
        rows, width = shape
        device = acts.device if acts is not None else None
        mask = torch.ones(rows, width, dtype=torch.bool, device=device)
        if self._trigger is not None:
            mask = mask & self._trigger.to(mask.device)
        if gate.probe != "off":
            assert acts is not None
            if isinstance(key, list):
                opened = torch.stack(
                    [gate.probe_open(k, acts[:, :, i]) for i, k in enumerate(key)], dim=-1
                )
                return mask[..., None] & opened
            mask = mask & gate.probe_open(key, acts)
        return mask


def apply_mode(hidden: torch.Tensor, vector: torch.Tensor, a: float, mode: str) -> torch.Tensor:
    """Steer activations `[..., D]` by `a` along `vector` in `mode` (see the module docstring).

    For `ablate`, `vector` must already be a unit vector.
    """
    if mode == "add":
        return hidden + a * vector
    if mode == "add_norm_preserving":
        steered = hidden + a * vector
        # In float32 so a bf16 model keeps its norms as well as its dtype allows.
        before = hidden.float().norm(dim=-1, keepdim=True)
        after = steered.float().norm(dim=-1, keepdim=True)
        ratio = before / after.clamp_min(torch.finfo(torch.float32).tiny)
        return (steered.float() * ratio).to(hidden.dtype)
    if mode == "ablate":
        along = (hidden * vector).sum(dim=-1, keepdim=True)
        return hidden - a * along * vector
    raise UserError(f"mode must be one of {list(MODES)}, got {mode!r}")


def steer_positions(
    hidden: torch.Tensor, start: int, mask: torch.Tensor | None, steer: Any
) -> torch.Tensor:
    """`hidden` `[B, T, ...]` with `steer(part)` applied from position `start` on, and only
    where `mask` (`[B, T, ...]` bool, broadcast over the last dim) is true; every other position
    keeps its exact value."""
    if mask is None:
        if start == 0:
            return steer(hidden)
        return torch.cat([hidden[:, :start], steer(hidden[:, start:])], dim=1)
    if start:
        mask = mask.clone()
        mask[:, :start] = False
    return torch.where(mask[..., None], steer(hidden), hidden)
