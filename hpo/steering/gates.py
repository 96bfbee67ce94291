"""Conditional steering: which positions a vector may act on, decided while the model runs.

Two gates, each optional, combined with AND (and with the application's `positions`):

- `trigger`: steer a position only when the token before it ends with a text pattern (e.g. a
  blank line `"\\n\\n"`, as CREST steers the first token of each reasoning step). The pattern is
  turned once into the set of token ids whose text ends with it, so the gate needs only the
  previous token: with the KV cache that is the last token of the previous forward chunk, which
  the steering context remembers per row (left padding and batching change nothing).
- `probe`: steer a position only when a linear probe's probability of the positive class on the
  current (unsteered) activation of the steered unit is `>= threshold` (`present`: steer where
  the behaviour is there) or `< threshold` (`absent`: steer where it is missing). The unit is a
  steered layer's block output, or a steered head's slice of the attention output projection's
  input; each unit is gated by its own probe.

A position the gates close is left exactly as the unsteered model computes it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from hpo.core.errors import UserError
from hpo.core.names import brief
from hpo.core.vocabulary import PROBE_GATES


@dataclass(frozen=True, eq=False)
class Gate:
    """The gates of one application.

    Attributes:
        trigger: the text pattern ("" = no trigger gate).
        trigger_ids: token ids whose text ends with `trigger` (`[n]` int64).
        probe: `off`, `present` or `absent`.
        threshold: the probe gate's probability threshold in (0, 1).
        probes: per unit key (layer `L`, or `(L, head)`) the probe's `(weight, bias)`.
    """

    trigger: str = ""
    trigger_ids: torch.Tensor | None = None
    probe: str = "off"
    threshold: float = 0.5
    probes: dict[Any, tuple[torch.Tensor, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.probe not in PROBE_GATES:
            raise UserError(f"probe_gate must be one of {list(PROBE_GATES)}, got {self.probe!r}")
        if self.probe != "off" and not 0.0 < self.threshold < 1.0:
            raise UserError(f"gate_threshold must lie in (0, 1), got {self.threshold}")
        if self.trigger and (self.trigger_ids is None or self.trigger_ids.numel() == 0):
            raise UserError(f"trigger {brief(self.trigger)} matches no token of the tokenizer")

    @property
    def active(self) -> bool:
        """Whether any gate is on."""
        return bool(self.trigger) or self.probe != "off"

    def record(self) -> dict[str, Any]:
        """As steering.json's `application.gate`."""
        return {"trigger": self.trigger, "probe": self.probe, "threshold": self.threshold}

    def probe_open(self, key: Any, activations: torch.Tensor) -> torch.Tensor:
        """`[..., D]` activations -> `[...]` bool: where the probe gate lets `key` steer."""
        weight, bias = self.probes[key]
        logit = activations.float() @ weight.to(activations.device) + bias
        # p >= t  <=>  logit >= log(t / (1 - t)): no sigmoid rounding near the threshold.
        cut = float(torch.logit(torch.tensor(self.threshold, dtype=torch.float64)))
        return logit >= cut if self.probe == "present" else logit < cut


def trigger_token_ids(tokenizer: Any, pattern: str) -> torch.Tensor:
    """The ids of every token whose text ends with `pattern` (once per study).

    Raises:
        UserError: no token's text ends with the pattern (it could never fire).
    """
    if not pattern:
        raise UserError("a trigger pattern must be non-empty, got ''")
    ids = range(len(tokenizer))
    texts = tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False)
    found = [i for i, text in zip(ids, texts, strict=True) if text.endswith(pattern)]
    if not found:
        raise UserError(f"trigger {brief(pattern)} ends no token's text in this tokenizer")
    return torch.tensor(found, dtype=torch.long)


@dataclass
class TriggerState:
    """The previous token of every row across forward chunks (what the trigger gate reads)."""

    last: torch.Tensor | None = None
    seen: int = 0

    def mask(self, ids: torch.Tensor, past: int, trigger_ids: torch.Tensor) -> torch.Tensor:
        """`[B, T]` bool: positions whose previous token is a trigger token.

        `past` is how many positions precede the chunk: 0 starts a fresh sequence; otherwise it
        must continue the chunk seen last (generation), whose last token is remembered.
        """
        rows = ids.shape[0]
        if past == 0:
            prev = torch.full((rows, 1), -1, dtype=ids.dtype, device=ids.device)
        elif self.last is not None and self.seen == past and self.last.shape[0] == rows:
            prev = self.last
        else:
            raise UserError(
                "a trigger gate needs every sequence from its first token (or the chunk before "
                f"it): got a chunk after {past} positions it has not seen"
            )
        before = torch.cat([prev, ids[:, :-1]], dim=1)
        self.last, self.seen = ids[:, -1:].clone(), past + ids.shape[1]
        return torch.isin(before, trigger_ids.to(ids.device))
