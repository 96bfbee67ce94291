"""How a trial's vectors are applied, typed: built once from the resolved params, then the one
argument of the hook layer (`hpo.steering.hooks.steer`), used alike by the residual path, the
export and the bundle.

Layer `L` gets `alpha * scales[L]` (`layer_alpha(L)`, with the live alpha of an open context when
given) in `mode` at `positions`; this is the one place that product is computed. Site `heads`
steers the heads `heads[L]` of layer `L` around its attention output projection (`head_point`);
a `gate` narrows the steered positions. Every check happens once, in the constructor.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from hpo.core.errors import UserError
from hpo.core.modes import Mode, head_modes, mode_named
from hpo.core.positions import Positions, positions_named
from hpo.core.vocabulary import HEAD_POINTS, SITES
from hpo.steering.gates import Gate


@dataclass(frozen=True)
class Application:
    """alpha, positions, mode and the per-layer multiplier of alpha.

    Attributes:
        alpha: the multiplier of every vector (for `ablate`, the share of the component removed).
        positions: a name of `hpo.core.positions.POSITIONS` (`positions_rule` is its rule).
        mode: a name of `hpo.core.modes.MODES` (`mode_rule` is the mode).
        scales: per-layer multiplier of `alpha` (e.g. `1 / n` over an `n`-layer window); a layer
            not listed gets 1.
        site: `residual` (block outputs) or `heads` (attention heads, CREST).
        heads: site heads: per layer, the steered heads.
        head_dim: site heads: the width of one head's slice.
        n_heads: site heads: heads per layer.
        head_point: site heads: `pre_o_proj` (head space) or `post_o_proj` (model space).
        gate: the conditions a position must meet to be steered (None: none).
    """

    alpha: float = 1.0
    positions: str = "all"
    mode: str = "add"
    scales: dict[int, float] = field(default_factory=dict)
    site: str = "residual"
    heads: dict[int, tuple[int, ...]] = field(default_factory=dict)
    head_dim: int = 0
    n_heads: int = 0
    head_point: str = "pre_o_proj"
    gate: Gate | None = None
    positions_rule: Positions = field(init=False, repr=False, compare=False)
    mode_rule: Mode = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "positions_rule", positions_named(self.positions))
        object.__setattr__(self, "mode_rule", mode_named(self.mode))
        if self.site not in SITES:
            raise UserError(f"site must be one of {list(SITES)}, got {self.site!r}")
        if self.on_heads:
            if not self.mode_rule.on_heads:
                raise UserError(f"site heads takes mode {list(head_modes())}, got {self.mode!r}")
            if self.head_point not in HEAD_POINTS:
                raise UserError(
                    f"head_point must be one of {list(HEAD_POINTS)}, got {self.head_point!r}"
                )
            if not self.heads or self.head_dim < 1:
                raise UserError("site heads needs at least one steered head and its head_dim")

    @property
    def gated(self) -> bool:
        """Whether a gate narrows the steered positions."""
        return self.gate is not None and self.gate.active

    @property
    def on_heads(self) -> bool:
        """Whether the vectors steer attention heads (site heads) rather than block outputs."""
        return self.site == "heads"

    def layer_alpha(self, layer: int, alpha: float | None = None) -> float:
        """What layer `layer` is steered by: `alpha * scales[layer]` (`alpha`: a live override
        of `self.alpha`, e.g. an open steering context's)."""
        return (self.alpha if alpha is None else alpha) * self.scales.get(layer, 1.0)

    def at(self, positions: str) -> Application:
        """The same application at other positions (llama.cpp's control vector: `all`)."""
        return replace(self, positions=positions)

    def record(self) -> dict[str, Any]:
        """As steering.json's `application`: positions, mode, scales (string keys), and for
        head or gated steering the site, heads, head point and gate."""
        out: dict[str, Any] = {
            "positions": self.positions,
            "mode": self.mode,
            "scales": {str(layer): scale for layer, scale in sorted(self.scales.items())},
        }
        if self.on_heads:
            out.update(
                site="heads",
                head_point=self.head_point,
                head_dim=self.head_dim,
                n_heads=self.n_heads,
                heads={str(layer): list(h) for layer, h in sorted(self.heads.items())},
            )
        if self.gated:
            assert self.gate is not None
            out["gate"] = self.gate.record()
        return out
