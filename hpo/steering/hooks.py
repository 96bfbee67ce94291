"""Apply steering vectors to a model: forward hooks on block outputs, scoped by a context manager.

Layer `L` means the output residual stream of decoder block `L`. Positions are counted in the
whole sequence (prompt + generated): a pre-hook on the model reads how many positions precede
each forward chunk from the call itself (the KV cache's length, found by type under whatever
keyword the transformers version uses, else the attention mask's width), so steered generation
is the same with and without the cache, on every supported transformers version.

Gates (`hpo.steering.gates`) narrow the steered positions further; a model pre-hook hands
each forward chunk's token ids to the trigger gate. Site `heads` hooks the attention output
projections instead of the blocks (`hpo.steering.heads`). Modes: `hpo.core.modes`; positions
rules: `hpo.core.positions`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import nn

from hpo.core.errors import UserError
from hpo.model.kv import past_length, prompt_width
from hpo.steering.application import Application
from hpo.steering.handle import RowGroup, SteeringHandle, in_group, steer_rows
from hpo.steering.heads import register_head_hooks

__all__ = ["RowGroup", "SteeringHandle", "steer", "steer_groups"]


@contextmanager
def steer(
    model: nn.Module,
    blocks: nn.ModuleList,
    vectors: Mapping[int, torch.Tensor],
    app: Application | None = None,
    group: RowGroup | None = None,
) -> Iterator[SteeringHandle]:
    """Steer block `L`'s output by `app.layer_alpha(L)` along `vectors[L]` as `app` says.

    `app` (default: `Application()`, add at every position with alpha 1) was checked when it
    was built. `group`: steer only those rows of each batch (several trials in one pass,
    `steer_groups`); every other row passes through unchanged. At site heads `vectors[L]`
    lives in the input space of block `L`'s attention output projection and steers the heads
    `app.heads[L]`. Every hook is removed in `finally`, also when the body raises.

    Raises:
        UserError: a layer outside the model, or a zero vector for a mode that needs a unit
            vector.
    """
    app = Application() if app is None else app
    param = next(model.parameters())
    prepared: dict[int, torch.Tensor] = {}
    for layer, vector in vectors.items():
        if not 0 <= layer < len(blocks):
            raise UserError(f"layer must lie in [0, {len(blocks) - 1}], got {layer}")
        v = vector.detach().float()
        if app.mode_rule.unit_vector:
            norm = v.norm()
            if not torch.isfinite(norm) or norm == 0:
                raise UserError(f"cannot {app.mode} a zero or non-finite vector at layer {layer}")
            v = v / norm
        prepared[layer] = v.to(device=param.device, dtype=param.dtype)
    handle = SteeringHandle(app, prepared, app.alpha, group=group)

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
            a = app.layer_alpha(layer, handle.alpha)

            def apply(rows: torch.Tensor) -> torch.Tensor:
                mask = handle.open_mask((rows.shape[0], rows.shape[1]), layer, rows)
                return steer_rows(rows, app, handle.vectors[layer], a, start, mask)

            steered = in_group(handle, hidden, apply)
            return (steered, *output[1:]) if isinstance(output, tuple) else steered

        return hook

    hooks = [model.register_forward_pre_hook(pre_hook, with_kwargs=True)]
    try:
        if app.on_heads:
            hooks.extend(register_head_hooks(handle, blocks))
        else:
            for layer in prepared:
                hooks.append(blocks[layer].register_forward_hook(make_hook(layer)))
        yield handle
    finally:
        for h in hooks:
            h.remove()


@contextmanager
def steer_groups(
    model: nn.Module,
    blocks: nn.ModuleList,
    steerings: Sequence[tuple[Mapping[int, torch.Tensor], Application]],
) -> Iterator[list[SteeringHandle]]:
    """Several trials' steering in one batched pass: `steerings[g]` steers row group `g` of
    `len(steerings)` interleaved groups (`hpo.steering.handle.RowGroup`); one steering alone
    steers every row, exactly as `steer`. Every hook is removed on exit, also on errors."""
    count = len(steerings)
    with ExitStack() as stack:
        handles = [
            stack.enter_context(
                steer(model, blocks, vectors, app, RowGroup(g, count) if count > 1 else None)
            )
            for g, (vectors, app) in enumerate(steerings)
        ]
        yield handles
