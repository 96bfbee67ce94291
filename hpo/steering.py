"""Apply steering vectors to a model: forward hooks on block outputs, scoped by a context manager.

Layer `L` means the output residual stream of decoder block `L`. Positions are counted in the
whole sequence (prompt + generated), using the KV cache's length, so steered generation is the
same with and without the cache.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from hpo.errors import UserError
from hpo.vocabulary import POSITIONS


@dataclass
class SteeringHandle:
    """Live controls of an active steering context.

    Attributes:
        alpha: multiplier of every vector; change it between forward passes.
        enabled: `False` runs the model unsteered without removing the hooks.
        prompt_length: tokens in the prompt (set by generation helpers); when `None`, a forward
            pass without cache treats its whole input as the prompt.
    """

    vectors: dict[int, torch.Tensor]
    alpha: float
    positions: str
    enabled: bool = True
    prompt_length: int | None = None
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


def _past_length(kwargs: Mapping[str, Any]) -> int:
    cache = kwargs.get("past_key_values")
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    if isinstance(cache, tuple) and cache and isinstance(cache[0], tuple):
        return int(cache[0][0].shape[-2])
    return 0


@contextmanager
def steer(
    model: nn.Module,
    blocks: nn.ModuleList,
    vectors: Mapping[int, torch.Tensor],
    alpha: float = 1.0,
    positions: str = "all",
) -> Iterator[SteeringHandle]:
    """Add `alpha * vectors[L]` to the output of block `L` while the context is open.

    Every hook is removed in `finally`, also when the body raises.

    Raises:
        UserError: unknown positions, a layer outside the model, or a vector of the wrong size.
    """
    if positions not in POSITIONS:
        raise UserError(f"positions must be one of {list(POSITIONS)}, got {positions!r}")
    param = next(model.parameters())
    prepared: dict[int, torch.Tensor] = {}
    for layer, vector in vectors.items():
        if not 0 <= layer < len(blocks):
            raise UserError(f"layer must lie in [0, {len(blocks) - 1}], got {layer}")
        prepared[layer] = vector.detach().to(device=param.device, dtype=param.dtype)
    handle = SteeringHandle(prepared, alpha, positions)

    def pre_hook(_m: nn.Module, _args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        handle._past_length = _past_length(kwargs)

    def make_hook(layer: int):  # type: ignore[no-untyped-def]
        def hook(_m: nn.Module, _args: tuple[Any, ...], output: Any) -> Any:
            if not handle.enabled:
                return output
            hidden = output[0] if isinstance(output, tuple) else output
            start = handle.start_index(hidden.shape[1])
            if start >= hidden.shape[1]:
                return output
            delta = handle.alpha * handle.vectors[layer]
            if start == 0:
                steered = hidden + delta
            else:
                steered = torch.cat([hidden[:, :start], hidden[:, start:] + delta], dim=1)
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
