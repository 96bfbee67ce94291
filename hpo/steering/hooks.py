"""Apply steering vectors to a model: forward hooks on block outputs, scoped by a context manager.

Layer `L` means the output residual stream of decoder block `L`. Positions are counted in the
whole sequence (prompt + generated): a pre-hook on the model reads how many positions precede
each forward chunk from the call itself (the KV cache's length, found by type under whatever
keyword the transformers version uses, else the attention mask's width), so steered generation
is the same with and without the cache, on every supported transformers version.

Gates (`hpo.steering.gates`) narrow the steered positions further; a model pre-hook hands
each forward chunk's token ids to the trigger gate. Site `heads` hooks the attention output
projections instead of the blocks (`hpo.steering.heads`). The modes are in
`hpo.steering.handle`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch
from torch import nn

from hpo.core.errors import UserError
from hpo.core.vocabulary import HEAD_MODES, MODES, POSITIONS
from hpo.model.kv import past_length, prompt_width
from hpo.steering.application import Application
from hpo.steering.gates import Gate
from hpo.steering.handle import SteeringHandle, apply_mode, steer_positions
from hpo.steering.heads import register_head_hooks

__all__ = ["SteeringHandle", "apply_mode", "steer", "steer_with"]


def steer_with(
    model: nn.Module,
    blocks: nn.ModuleList,
    vectors: Mapping[int, torch.Tensor],
    application: Application,
) -> AbstractContextManager[SteeringHandle]:
    """`steer` with a typed `Application` (alpha, positions, mode, per-layer scales, site,
    heads, gates)."""
    return steer(
        model,
        blocks,
        vectors,
        application.alpha,
        application.positions,
        mode=application.mode,
        scales=application.scales,
        gate=application.gate,
        heads=application.heads if application.site == "heads" else None,
        head_dim=application.head_dim,
        head_point=application.head_point,
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
    gate: Gate | None = None,
    heads: Mapping[int, tuple[int, ...]] | None = None,
    head_dim: int = 0,
    head_point: str = "pre_o_proj",
) -> Iterator[SteeringHandle]:
    """Steer the output of block `L` by `alpha * scales[L]` along `vectors[L]` in `mode`.

    With `heads` (site heads), `vectors[L]` lives in the input space of block `L`'s attention
    output projection and steers the heads `heads[L]` (of `head_dim` each) at `head_point`.
    `gate` steers only the positions it opens. Every hook is removed in `finally`, also when
    the body raises.

    Raises:
        UserError: unknown positions or mode, a layer outside the model, a vector of the wrong
            size, or a zero vector to ablate.
    """
    if positions not in POSITIONS:
        raise UserError(f"positions must be one of {list(POSITIONS)}, got {positions!r}")
    if mode not in MODES:
        raise UserError(f"mode must be one of {list(MODES)}, got {mode!r}")
    if heads is not None and mode not in HEAD_MODES:
        raise UserError(f"site heads takes mode {list(HEAD_MODES)}, got {mode!r}")
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
    handle = SteeringHandle(
        prepared, alpha, positions, mode=mode, scales=dict(scales or {}), gate=gate
    )

    def pre_hook(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        # Never from one keyword's name: transformers 5.24 renamed `past_key_values` to `cache`.
        ids = kwargs.get("input_ids", args[0] if args else None)
        handle.begin_chunk(past_length(args, kwargs), ids, prompt_width(args, kwargs))

    def make_hook(layer: int):  # type: ignore[no-untyped-def]
        def hook(_m: nn.Module, _args: tuple[Any, ...], output: Any) -> Any:
            if not handle.enabled:
                return output
            hidden = output[0] if isinstance(output, tuple) else output
            start = handle.start_index(hidden.shape[1])
            if start >= hidden.shape[1]:
                return output
            a, vector, mode = handle.layer_alpha(layer), handle.vectors[layer], handle.mode
            mask = handle.open_mask(hidden.shape[:2], layer, hidden)
            steered = steer_positions(
                hidden, start, mask, lambda h: apply_mode(h, vector, a, mode)
            )
            return (steered, *output[1:]) if isinstance(output, tuple) else steered

        return hook

    hooks = [model.register_forward_pre_hook(pre_hook, with_kwargs=True)]
    try:
        if heads is not None:
            hooks.extend(register_head_hooks(handle, blocks, dict(heads), head_dim, head_point))
        else:
            for layer in prepared:
                hooks.append(blocks[layer].register_forward_hook(make_hook(layer)))
        yield handle
    finally:
        for h in hooks:
            h.remove()
