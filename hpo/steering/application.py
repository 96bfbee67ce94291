"""How a trial's vectors are applied, typed: built once from the resolved params, then used by
the hooks, the residual path, the export and the bundle alike.

Layer `L` gets `alpha * scales[L]` (`layer_alpha(L)`) in `mode` at `positions`; this is the one
place that product is computed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from hpo.core.errors import UserError
from hpo.core.vocabulary import MODES, POSITIONS


@dataclass(frozen=True)
class Application:
    """alpha, positions, mode and the per-layer multiplier of alpha.

    Attributes:
        alpha: the multiplier of every vector (for `ablate`, the share of the component removed).
        positions: `all`, `prompt_end_onward` or `generated`.
        mode: `add`, `add_norm_preserving` or `ablate`.
        scales: per-layer multiplier of `alpha` (e.g. `1 / n` over an `n`-layer window); a layer
            not listed gets 1.
    """

    alpha: float = 1.0
    positions: str = "all"
    mode: str = "add"
    scales: dict[int, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.positions not in POSITIONS:
            raise UserError(f"positions must be one of {list(POSITIONS)}, got {self.positions!r}")
        if self.mode not in MODES:
            raise UserError(f"mode must be one of {list(MODES)}, got {self.mode!r}")

    def layer_alpha(self, layer: int) -> float:
        """What layer `layer` is steered by: `alpha * scales[layer]`."""
        return self.alpha * self.scales.get(layer, 1.0)

    def at(self, positions: str) -> Application:
        """The same application at other positions (llama.cpp's control vector: `all`)."""
        return replace(self, positions=positions)

    def record(self) -> dict[str, Any]:
        """As steering.json's `application`: positions, mode, scales (string keys)."""
        return {
            "positions": self.positions,
            "mode": self.mode,
            "scales": {str(layer): scale for layer, scale in sorted(self.scales.items())},
        }
