"""Skip the blocks below the steered layer: cache block `L`'s unsteered output, re-run only above.

With `positions: all` a single vector at layer `L` changes nothing below block `L + 1`, so every
trial at `L` recomputes the same blocks `0..L`. `ResidualCache` keeps each scored batch's
unsteered block-`L` output (computed on first use, least recently used evicted past a byte cap)
and a trial runs `output + alpha * vector` through blocks `L + 1..` and the final norm and LM head
only: on average about half of a forward pass per trial over a layer range in the middle.

It works by handing the model's own forward `inputs_embeds` with its block list cut to the blocks
above `L`, so rotary positions, the left-padding attention mask and the head are the model's own
code. Architectures whose forward changes `inputs_embeds` (GPT-2 adds position embeddings) would
not match: the first use compares the cached path with a full forward bit for bit and turns itself
off (with a log line) when they differ. Llama, Qwen2, Mistral, Gemma 2/3, NeoX, Phi take it.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from hpo.model.loading import LoadedModel
from hpo.steering.application import Application
from hpo.steering.hooks import steer

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 1 << 30


class _Stop(Exception):
    """Raised by the capture hook to end a forward pass once block `L` has run."""


def _owner_of(model: nn.Module, blocks: nn.ModuleList) -> tuple[nn.Module, str] | None:
    """The module holding `blocks` as an attribute, and the attribute's name."""
    for module in model.modules():
        for name, child in module.named_children():
            if child is blocks:
                return module, name
    return None


class ResidualCache:
    """Unsteered block outputs of scored batches, keyed by layer and the batch's tokens."""

    def __init__(self, loaded: LoadedModel, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.model = loaded.model
        self.blocks = loaded.blocks
        self.max_bytes = max_bytes
        self.owner = _owner_of(self.model, self.blocks)
        # None: not checked yet; then whether the cached path equals a full forward.
        self.exact: bool | None = None if self.owner is not None else False
        self._store: OrderedDict[tuple[int, str], torch.Tensor] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0

    def applies(self, application: Application, vectors: dict[int, torch.Tensor]) -> bool:
        """Whether a trial can take the cached path: one vector added at every position."""
        return (
            application.positions_rule.every
            and application.mode_rule.shift
            and not application.on_heads
            and not application.gated
            and len(vectors) == 1
            and self.exact is not False
        )

    def _key(self, layer: int, inputs: dict[str, torch.Tensor]) -> tuple[int, str]:
        digest = hashlib.sha1(usedforsecurity=False)
        for name in ("input_ids", "attention_mask", "position_ids"):
            digest.update(inputs[name].cpu().numpy().tobytes())
            digest.update(repr(tuple(inputs[name].shape)).encode())
        return layer, digest.hexdigest()

    def block_output(self, layer: int, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The unsteered output of block `layer` for a batch (from the cache, else computed).

        Must be called with no steering hook on the model.
        """
        key = self._key(layer, inputs)
        if key in self._store:
            self._store.move_to_end(key)
            self.hits += 1
            return self._store[key]
        self.misses += 1
        captured: list[torch.Tensor] = []

        def hook(_m: nn.Module, _args: Any, output: Any) -> None:
            captured.append(output[0] if isinstance(output, tuple) else output)
            raise _Stop

        handle = self.blocks[layer].register_forward_hook(hook)
        try:
            with torch.inference_mode():
                self.model(**inputs, use_cache=False)
        except _Stop:
            pass
        finally:
            handle.remove()
        hidden = captured[0].clone()
        self._store[key] = hidden
        self._bytes += hidden.numel() * hidden.element_size()
        while self._bytes > self.max_bytes and len(self._store) > 1:
            _, old = self._store.popitem(last=False)
            self._bytes -= old.numel() * old.element_size()
        return hidden

    def run_above(
        self, layer: int, hidden: torch.Tensor, inputs: dict[str, torch.Tensor], **kwargs: Any
    ) -> Any:
        """The model's output when block `layer` emits `hidden` (blocks above it, norm, head)."""
        assert self.owner is not None
        owner, name = self.owner
        above = nn.ModuleList(list(self.blocks)[layer + 1 :])
        setattr(owner, name, above)
        try:
            with torch.inference_mode():
                return self.model(
                    inputs_embeds=hidden,
                    attention_mask=inputs["attention_mask"],
                    position_ids=inputs["position_ids"],
                    use_cache=False,
                    **kwargs,
                )
        finally:
            setattr(owner, name, self.blocks)

    def check(self, layer: int, inputs: dict[str, torch.Tensor], **kwargs: Any) -> bool:
        """Compare the cached path with a full forward once (unsteered); remember the answer."""
        if self.exact is None:
            with torch.inference_mode():
                full = self.model(**inputs, use_cache=False, **kwargs).logits
            cached = self.run_above(layer, self.block_output(layer, inputs), inputs, **kwargs)
            self.exact = bool(torch.equal(full, cached.logits))
            if not self.exact:
                log.info(
                    "%s: scoring above the steered layer differs from a full forward "
                    "(max |diff| %.3g); trials run full forward passes",
                    type(self.model).__name__,
                    float((full - cached.logits).abs().max()),
                )
        return self.exact


class SteeredAbove:
    """Stands in for the model steered by `alpha * vector` at every position of block `layer`.

    Called like the model by a forward-only objective (`input_ids`, mask, position ids); the
    addition is done exactly as `steer` does it (vector cast first, then scaled).
    """

    def __init__(
        self, cache: ResidualCache, layer: int, vector: torch.Tensor, alpha: float
    ) -> None:
        self.cache = cache
        self.layer = layer
        self.vector, self.alpha = vector, alpha
        param = next(cache.model.parameters())
        self.delta = alpha * vector.detach().to(device=param.device, dtype=param.dtype)

    def parameters(self) -> Iterator[nn.Parameter]:
        """The real model's parameters (objectives read the device from them)."""
        return iter(self.cache.model.parameters())

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        use_cache: bool = False,
        logits_to_keep: int = 0,
    ) -> Any:
        """Logits of the steered model for one batch, from the cached block output."""
        inputs = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
        }
        keep = {"logits_to_keep": logits_to_keep} if logits_to_keep else {}
        cache = self.cache
        if not cache.check(self.layer, inputs, **keep):
            with torch.inference_mode():
                return _full_steered(cache, self.layer, self.vector, self.alpha, inputs, keep)
        hidden = cache.block_output(self.layer, inputs)
        return cache.run_above(self.layer, hidden + self.delta, inputs, **keep)

    __call__ = forward


def _full_steered(
    cache: ResidualCache,
    layer: int,
    vector: torch.Tensor,
    alpha: float,
    inputs: dict[str, torch.Tensor],
    keep: dict[str, int],
) -> Any:
    """Fallback: a full forward steered by the one add hook (`hpo.steering.hooks.steer`)."""
    with steer(cache.model, cache.blocks, {layer: vector}, Application(alpha=alpha)):
        return cache.model(**inputs, use_cache=False, **keep)
