"""How a steered activation changes: the `mode` registry.

With `h` the steered activation, `v` the layer's vector and `a` its alpha:

- `add`: `h + a * v`.
- `add_norm_preserving`: `h + a * v`, rescaled back to `|h|` (CREST-style norm preservation:
  the direction turns, the magnitude the next module expects stays).
- `ablate`: `h - a * (h . u) u` with `u = v / |v|`: at `a = 1` the component along the direction
  is removed; the vector's length does not matter.

The arithmetic uses tensor methods only, so this module imports without torch (the config and
the search space validate mode names before any model loads). Adding a mode is one entry in
`MODES`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hpo.core.errors import named

if TYPE_CHECKING:
    from torch import Tensor

# torch.finfo(torch.float32).tiny, without importing torch here.
FLOAT32_TINY = 1.1754943508222875e-38


@dataclass(frozen=True)
class Mode:
    """One steering mode.

    Attributes:
        name: the name in configs, params and steering.json.
        apply: `(h [..., D], v [D], a) -> steered h`.
        has_alpha: alpha scales what is added, and alpha = 0 is the unsteered model (the search
            samples alpha); False: alpha is fixed (`ablate`: the share removed).
        on_heads: allowed at site heads.
        unit_vector: the vector is normalised to unit length before `apply` (a zero vector is
            refused).
        shift: `apply` is exactly `h + a * v`, so the residual cache may add `a * v` to a cached
            unsteered block output instead of running the steered forward.
    """

    name: str
    apply: Callable[[Tensor, Tensor, float], Tensor]
    has_alpha: bool = True
    on_heads: bool = True
    unit_vector: bool = False
    shift: bool = False


def add(hidden: Tensor, vector: Tensor, a: float) -> Tensor:
    """`h + a * v`."""
    return hidden + a * vector


def add_norm_preserving(hidden: Tensor, vector: Tensor, a: float) -> Tensor:
    """`h + a * v` rescaled to `|h|` per position."""
    steered = hidden + a * vector
    # In float32 so a bf16 model keeps its norms as well as its dtype allows.
    before = hidden.float().norm(dim=-1, keepdim=True)
    after = steered.float().norm(dim=-1, keepdim=True)
    ratio = before / after.clamp_min(FLOAT32_TINY)
    return (steered.float() * ratio).to(hidden.dtype)


def ablate(hidden: Tensor, vector: Tensor, a: float) -> Tensor:
    """`h - a * (h . u) u` (`vector` is the unit vector `u`)."""
    along = (hidden * vector).sum(dim=-1, keepdim=True)
    return hidden - a * along * vector


MODES: dict[str, Mode] = {
    "add": Mode("add", add, shift=True),
    "add_norm_preserving": Mode("add_norm_preserving", add_norm_preserving),
    "ablate": Mode("ablate", ablate, has_alpha=False, on_heads=False, unit_vector=True),
}


def mode_named(name: str) -> Mode:
    """The mode `name`.

    Raises:
        UserError: an unknown name (the message lists the known ones).
    """
    return named("mode", MODES, name)


def add_modes() -> tuple[str, ...]:
    """The modes whose alpha is sampled (alpha = 0 is the unsteered model), as registered now."""
    return tuple(name for name, mode in MODES.items() if mode.has_alpha)


def head_modes() -> tuple[str, ...]:
    """The modes allowed at site heads, as registered now."""
    return tuple(name for name, mode in MODES.items() if mode.on_heads)
