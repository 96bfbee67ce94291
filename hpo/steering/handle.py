"""The live state of a steering context, and how one application steers a slice of activations.

Shared by the residual-stream hooks (`hpo.steering.hooks`) and the attention-head hooks
(`hpo.steering.heads`). What a context applies is its `Application` (`handle.app`); the handle
holds only what changes while the context is open. The modes' arithmetic is in
`hpo.core.modes`.

Several trials can share one batched pass: the batch then holds `count` copies of every row,
interleaved (row `r` is item `r // count` under trial `r % count`), and each trial's context
steers only its `RowGroup` of rows, so `count` contexts open at once on one model steer their
rows independently (`hpo.steering.hooks.steer_groups`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from hpo.core.errors import UserError
from hpo.steering.application import Application
from hpo.steering.gates import TriggerState


@dataclass(frozen=True)
class RowGroup:
    """Rows `index, index + count, index + 2 * count, ...` of a batch: one trial's rows when
    `count` trials share a pass (see the module docstring)."""

    index: int
    count: int

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ValueError(f"row group {self.index} of {self.count}")

    def take(self, t: torch.Tensor) -> torch.Tensor:
        """This group's rows of `t` (batch first)."""
        if t.shape[0] % self.count:
            raise RuntimeError(
                f"a batch of {t.shape[0]} rows does not hold {self.count} interleaved groups"
            )
        return t[self.index :: self.count]

    def put(self, t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """A copy of `t` with this group's rows replaced by `rows`."""
        out = t.clone()
        out[self.index :: self.count] = rows
        return out


@dataclass
class SteeringHandle:
    """Live controls of an active steering context.

    Attributes:
        app: what is applied (positions, mode, per-layer scales, site, gate), fixed for the
            context.
        vectors: per steered layer, the vector at alpha = 1 (on the model's device and dtype; a
            unit vector for a mode that needs one).
        alpha: multiplier of every vector (`steer` starts it at `app.alpha`); change it between
            forward passes.
        enabled: `False` runs the model unsteered without removing the hooks.
        prompt_length: tokens in the prompt (set by generation helpers); when `None`, a forward
            pass without cache treats its whole input as the prompt.
        group: the rows this context steers when several trials share a batch (None: all).
    """

    app: Application
    vectors: dict[int, torch.Tensor]
    alpha: float
    enabled: bool = True
    prompt_length: int | None = None
    group: RowGroup | None = None
    _past_length: int = field(default=0, repr=False)
    # The prompt width a reused prefix cache carries (None: no marked prefix in this chunk).
    _prompt_width: int | None = field(default=None, repr=False)
    # The trigger gate's `[B, T]` mask of the current forward chunk (None: no trigger gate).
    _trigger: torch.Tensor | None = field(default=None, repr=False)
    _trigger_state: TriggerState = field(default_factory=TriggerState, repr=False)

    def start_index(self, seq_len: int) -> int:
        """First position of the current forward chunk that gets the vector."""
        announced = self.prompt_length if self.prompt_length is not None else self._prompt_width
        return self.app.positions_rule.first_steered(announced, self._past_length, seq_len)

    def begin_chunk(
        self, past: int, ids: torch.Tensor | None, prompt_width: int | None = None
    ) -> None:
        """Called before every model forward: where the chunk sits, the prompt width a reused
        prefix cache carries, and the trigger mask."""
        self._past_length = past
        self._prompt_width = prompt_width
        gate = self.app.gate
        if gate is None or not gate.trigger:
            return
        if ids is None or ids.dim() != 2 or ids.is_floating_point():
            raise UserError("a trigger gate needs the model called with input_ids")
        assert gate.trigger_ids is not None
        if self.group is not None:
            ids = self.group.take(ids)
        self._trigger = self._trigger_state.mask(ids, past, gate.trigger_ids)

    def open_mask(
        self, shape: tuple[int, int], key: Any = None, acts: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """`[B, T]` (or `[B, T, units]` for per-head `acts` `[B, T, units, D]`) bool: where the
        chunk may be steered; None when every position from `start_index` may.

        `key` / `acts`: the probe gate's unit key(s) and the unit's current activations.
        """
        gate = self.app.gate
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


def in_group(handle: SteeringHandle, t: torch.Tensor, steer: Any) -> torch.Tensor:
    """`steer(rows)` applied to the handle's rows of `t` (all of `t` without a row group);
    every other row keeps its exact value."""
    group = handle.group
    if group is None:
        return steer(t)
    return group.put(t, steer(group.take(t)))


def steer_rows(
    hidden: torch.Tensor,
    app: Application,
    vector: torch.Tensor,
    a: float,
    start: int,
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """`hidden` `[B, T, ..., D]` steered by one application: its mode with alpha `a` along
    `vector`, from position `start` on and where `mask` is open (see `steer_positions`).

    Every hook steers through here, with the rows of its own context (`in_group`).
    """
    mode = app.mode_rule
    return steer_positions(hidden, start, mask, lambda h: mode.apply(h, vector, a))


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
