"""Attention-head steering (CREST): act on single heads around the output projection.

The input of a block's attention output projection (`o_proj`; `dense` in Phi and GPT-NeoX,
`c_proj` in GPT-2) is the concatenation of every head's output, `[B, T, heads * head_dim]`; head
`h` owns the slice `[h * head_dim, (h + 1) * head_dim)`. A head-site vector lives in that space
(zero outside the steered heads) and acts at one of two points:

- `pre_o_proj` (head space): each steered head's slice gets `a * v_h` added; the norm-preserving
  mode keeps each steered slice's norm.
- `post_o_proj` (model space): the projection's output gets `a * W v` added (`W v` is the
  projection of the masked head-space vector, without bias); the norm-preserving mode keeps the
  output's norm at every steered position.

CREST: "Understanding and Steering the Cognitive Behaviors of Reasoning Models at Test-Time"
(github.com/togethercomputer/CREST) ranks heads by a linear probe's accuracy and steers the top
~38% of them, norm-preserving.

Gates act per head: a position's head is steered only where the gates are open for it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hpo.core.errors import UserError
from hpo.steering.handle import SteeringHandle, in_group, steer_rows

ATTENTION_NAMES = ("self_attn", "attn", "attention")
PROJECTION_NAMES = ("o_proj", "dense", "c_proj", "out_proj")


def out_projection(block: nn.Module) -> nn.Module:
    """A decoder block's attention output projection.

    Raises:
        UserError: no attention module, or none of the known projections in it (the message
            names the children found, so a new family's layout can be added).
    """
    attention = next((getattr(block, n) for n in ATTENTION_NAMES if hasattr(block, n)), None)
    if attention is None:
        children = ", ".join(name for name, _ in block.named_children()) or "none"
        raise UserError(
            f"site heads needs an attention module ({', '.join(ATTENTION_NAMES)}) in "
            f"{type(block).__name__}, whose children are: {children}"
        )
    for name in PROJECTION_NAMES:
        proj = getattr(attention, name, None)
        if isinstance(proj, nn.Module):
            return proj
    children = ", ".join(f"{n} ({type(m).__name__})" for n, m in attention.named_children())
    raise UserError(
        f"site heads needs an attention output projection ({', '.join(PROJECTION_NAMES)}) in "
        f"{type(attention).__name__}, whose children are: {children or 'none'}"
    )


def head_width(proj: nn.Module) -> int:
    """The width of an output projection's input (`heads * head_dim`)."""
    width = getattr(proj, "in_features", None) or getattr(proj, "nx", None)
    if not isinstance(width, int):
        raise UserError(f"site heads: cannot tell the input width of {type(proj).__name__}")
    return width


def head_shape(model: nn.Module, blocks: nn.ModuleList) -> tuple[int, int]:
    """`(heads, head_dim)` of the attention output projection's input.

    Raises:
        UserError: no projection (see `out_projection`), or an input width that is not a
            whole number of heads.
    """
    config: Any = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = getattr(text, "num_attention_heads", None) or getattr(text, "n_head", None)
    proj = out_projection(blocks[0])
    width = head_width(proj)
    if not isinstance(heads, int) or width % heads:
        raise UserError(
            f"cannot split the {width}-wide input of {type(proj).__name__} into "
            f"{heads} attention heads"
        )
    return heads, width // heads


def head_mask(
    heads: dict[int, tuple[int, ...]], n_heads: int, head_dim: int
) -> dict[int, torch.Tensor]:
    """Per layer, `[heads * head_dim]` bool: the slices of the steered heads."""
    out = {}
    for layer, chosen in heads.items():
        mask = torch.zeros(n_heads, head_dim, dtype=torch.bool)
        mask[list(chosen)] = True
        out[layer] = mask.flatten()
    return out


def register_head_hooks(handle: SteeringHandle, blocks: nn.ModuleList) -> list[Any]:
    """Hooks steering `app.heads[L]` of every layer `L` in `handle.vectors` at `app.head_point`
    (`app = handle.app`, checked when it was built).

    `handle.vectors[L]` is the head-space vector `[heads * head_dim]` added at alpha = 1.
    Returns the hook handles (the caller removes them).
    """
    app = handle.app
    hooks = []
    for layer in handle.vectors:
        proj = out_projection(blocks[layer])
        chosen = list(app.heads[layer])
        make = _pre_hooks if app.head_point == "pre_o_proj" else _post_hooks
        hooks.extend(make(handle, proj, layer, chosen, app.head_dim))
    return hooks


def _slices(x: torch.Tensor, head_dim: int) -> torch.Tensor:
    return x.unflatten(-1, (x.shape[-1] // head_dim, head_dim))


def _pre_hooks(
    handle: SteeringHandle, proj: nn.Module, layer: int, chosen: list[int], head_dim: int
) -> list[Any]:
    def pre_hook(_m: nn.Module, args: tuple[Any, ...]) -> Any:
        if not handle.enabled:
            return None
        x = args[0]
        start = handle.start_index(x.shape[1])
        if start >= x.shape[1]:
            return None
        index = torch.tensor(chosen, device=x.device)
        vector = _slices(handle.vectors[layer], head_dim).index_select(0, index)
        app = handle.app
        a = app.layer_alpha(layer, handle.alpha)

        def apply(rows: torch.Tensor) -> torch.Tensor:
            heads = _slices(rows, head_dim)
            picked = heads.index_select(2, index)  # [B, T, k, head_dim]
            mask = handle.open_mask(
                (rows.shape[0], rows.shape[1]), [(layer, h) for h in chosen], picked
            )
            out = heads.clone()
            out[:, :, index] = steer_rows(picked, app, vector, a, start, mask)
            return out.flatten(-2)

        return (in_group(handle, x, apply), *args[1:])

    return [proj.register_forward_pre_hook(pre_hook)]


def project(proj: nn.Module, v: torch.Tensor) -> torch.Tensor:
    """The linear part of an output projection (no bias) applied to `v` `[..., in]`: `nn.Linear`
    weights are `[out, in]`, GPT-2's `Conv1D` weights `[in, out]`."""
    weight = getattr(proj, "weight", None)
    if not isinstance(weight, torch.Tensor):
        raise UserError(f"site heads: {type(proj).__name__} has no weight to project with")
    if isinstance(proj, nn.Linear):
        return torch.nn.functional.linear(v, weight)
    return v @ weight


def _post_hooks(
    handle: SteeringHandle, proj: nn.Module, layer: int, chosen: list[int], head_dim: int
) -> list[Any]:
    state: dict[str, torch.Tensor | None] = {}

    def pre_hook(_m: nn.Module, args: tuple[Any, ...]) -> None:
        state.clear()
        gate = handle.app.gate
        if not handle.enabled or gate is None or not gate.active:
            return
        x = args[0] if handle.group is None else handle.group.take(args[0])
        picked = _slices(x, head_dim)[:, :, chosen]
        state["mask"] = handle.open_mask(
            (x.shape[0], x.shape[1]), [(layer, h) for h in chosen], picked
        )

    def hook(_m: nn.Module, _args: tuple[Any, ...], output: torch.Tensor) -> Any:
        if not handle.enabled:
            return None
        start = handle.start_index(output.shape[1])
        if start >= output.shape[1]:
            return None
        app = handle.app
        vector, a = handle.vectors[layer], app.layer_alpha(layer, handle.alpha)
        mask = state.pop("mask", None)

        def apply(rows: torch.Tensor) -> torch.Tensor:
            if mask is None:
                return steer_rows(rows, app, project(proj, vector), a, start, None)
            # Per position, only the open heads' slices of the vector are projected.
            heads = _slices(vector, head_dim)
            shape = (*mask.shape[:2], *heads.shape)
            full = torch.zeros(shape, dtype=vector.dtype, device=vector.device)
            full[:, :, chosen] = mask[..., None].to(vector.dtype) * heads[chosen]
            per_position = project(proj, full.flatten(-2))
            return steer_rows(rows, app, per_position, a, start, mask.any(dim=-1))

        return in_group(handle, output, apply)

    return [proj.register_forward_pre_hook(pre_hook), proj.register_forward_hook(hook)]
