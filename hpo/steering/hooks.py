"""Apply steering vectors to a model: forward hooks on block outputs, scoped by a context manager.

Layer `L` means the output residual stream of decoder block `L`. Positions are counted in the
whole sequence (prompt + generated): a pre-hook on the model reads how many positions precede
each forward chunk from the call itself (the KV cache's length, found by type under whatever
keyword the transformers version uses, else the attention mask's width), so steered generation
is the same with and without the cache, on every supported transformers version.

Modes (what a hook does to each steered position's hidden state `h`, with `a = alpha * scale[L]`):

- `add`: `h + a * v`.
- `add_norm_preserving`: `h + a * v`, rescaled back to `|h|` (seed 003's norm preservation: the
  direction turns, the magnitude the next block expects stays).
- `ablate`: `h - a * (h . u) u` with `u = v / |v|`: at `a = 1` the component along the direction
  is removed; the vector's length does not matter.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hpo.core.errors import UserError
from hpo.core.vocabulary import MODES, POSITIONS
from hpo.model.kv import past_length
from hpo.steering.application import Application


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
    """

    vectors: dict[int, torch.Tensor]
    alpha: float
    positions: str
    enabled: bool = True
    prompt_length: int | None = None
    mode: str = "add"
    scales: dict[int, float] = field(default_factory=dict)
    _past_length: int = field(default=0, repr=False)

    def start_index(self, seq_len: int) -> int:
        """First position of the current forward chunk that gets the vector."""
        past = self._past_length
        if self.positions == "all":
            return 0
        prompt = self.prompt_length if self.prompt_length is not None else past + seq_len
        if past > 0 and self.prompt_length is None:
            prompt = past  # decoding with a cache after an unannounced prompt
        first = prompt - 1 if self.positions == "prompt_end_onward" else prompt
        return max(first - past, 0)

    def layer_alpha(self, layer: int) -> float:
        """The multiplier applied at one layer: `alpha * scales[layer]`."""
        return self.alpha * self.scales.get(layer, 1.0)


def apply_mode(hidden: torch.Tensor, vector: torch.Tensor, a: float, mode: str) -> torch.Tensor:
    """Steer hidden states `[..., H]` by `a` along `vector` in `mode` (see the module docstring).

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


def steer_with(
    model: nn.Module,
    blocks: nn.ModuleList,
    vectors: Mapping[int, torch.Tensor],
    application: Application,
) -> AbstractContextManager[SteeringHandle]:
    """`steer` with a typed `Application` (alpha, positions, mode, per-layer scales)."""
    return steer(
        model,
        blocks,
        vectors,
        application.alpha,
        application.positions,
        mode=application.mode,
        scales=application.scales,
    )


@contextmanager
def steer(
    model: nn.Module,
    blocks: nn.ModuleList,
    vectors: Mapping[int, torch.Tensor],
    alpha: float = 1.0,
    positions: str = "all",
    *,
    mode: str = "add",
    scales: Mapping[int, float] | None = None,
) -> Iterator[SteeringHandle]:
    """Steer the output of block `L` by `alpha * scales[L]` along `vectors[L]` in `mode`.

    Every hook is removed in `finally`, also when the body raises.

    Raises:
        UserError: unknown positions or mode, a layer outside the model, a vector of the wrong
            size, or a zero vector to ablate.
    """
    if positions not in POSITIONS:
        raise UserError(f"positions must be one of {list(POSITIONS)}, got {positions!r}")
    if mode not in MODES:
        raise UserError(f"mode must be one of {list(MODES)}, got {mode!r}")
    param = next(model.parameters())
    prepared: dict[int, torch.Tensor] = {}
    for layer, vector in vectors.items():
        if not 0 <= layer < len(blocks):
            raise UserError(f"layer must lie in [0, {len(blocks) - 1}], got {layer}")
        v = vector.detach().float()
        if mode == "ablate":
            norm = v.norm()
            if not torch.isfinite(norm) or norm == 0:
                raise UserError(f"cannot ablate a zero or non-finite vector at layer {layer}")
            v = v / norm
        prepared[layer] = v.to(device=param.device, dtype=param.dtype)
    handle = SteeringHandle(prepared, alpha, positions, mode=mode, scales=dict(scales or {}))

    def pre_hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        # Never from one keyword's name: transformers 5.24 renamed `past_key_values` to `cache`.
        handle._past_length = past_length(args, kwargs)

    def make_hook(layer: int):  # type: ignore[no-untyped-def]
        def hook(_m: nn.Module, _args: tuple[Any, ...], output: Any) -> Any:
            if not handle.enabled:
                return output
            hidden = output[0] if isinstance(output, tuple) else output
            start = handle.start_index(hidden.shape[1])
            if start >= hidden.shape[1]:
                return output
            a, vector = handle.layer_alpha(layer), handle.vectors[layer]
            if start == 0:
                steered = apply_mode(hidden, vector, a, handle.mode)
            else:
                tail = apply_mode(hidden[:, start:], vector, a, handle.mode)
                steered = torch.cat([hidden[:, :start], tail], dim=1)
            return (steered, *output[1:]) if isinstance(output, tuple) else steered

        return hook

    hooks = [model.register_forward_pre_hook(pre_hook, with_kwargs=True)]
    try:
        for layer in prepared:
            hooks.append(blocks[layer].register_forward_hook(make_hook(layer)))
        yield handle
    finally:
        for h in hooks:
            h.remove()
