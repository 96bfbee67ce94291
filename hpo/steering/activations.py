"""The activation cache: one forward pass over the train pairs, every layer, every aggregation.

Trials build vectors from this cache in milliseconds and never re-run extraction. The file is
safetensors under a content hash of everything that determines it (model weights, dtype,
tokenizer, the rendered pairs, the aggregations), written to a temp file and renamed, so workers
on one machine share it safely.

With `heads=True` (a space with `site: heads`) the same pass also records, per layer, the input
of the attention output projection (every head's output side by side, for CREST-style head
steering) under `<side>.<agg>.heads`; such a cache has its own hash, so residual-only caches are
unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from hpo.core.errors import UserError
from hpo.core.paths import cache_dir
from hpo.core.progress import progress
from hpo.core.vocabulary import AGGREGATIONS
from hpo.model.batching import length_sorted_batches, pad_left
from hpo.model.kv import output_cache, scratch_cache, with_cache
from hpo.model.loading import LoadedModel
from hpo.steering.heads import head_width, out_projection
from objectives import ContrastivePair

log = logging.getLogger(__name__)


SIDES = ("positive", "negative")
CACHE_FORMAT = 2


class ActivationCache:
    """Cached block outputs: `positive.<agg>` / `negative.<agg>`, `[pairs, layers, H]`; with
    heads, `positive.<agg>.heads` / `negative.<agg>.heads`, `[pairs, layers, heads * head_dim]`."""

    def __init__(self, tensors: dict[str, torch.Tensor], key: str) -> None:
        self.tensors = tensors
        self.key = key
        self._norms: dict[tuple[str, int], float] = {}

    def pair(self, aggregation: str, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Positive and negative activations `[pairs, H]` at one layer and aggregation."""
        return (
            self.tensors[f"positive.{aggregation}"][:, layer, :],
            self.tensors[f"negative.{aggregation}"][:, layer, :],
        )

    @property
    def has_heads(self) -> bool:
        """Whether the attention output projections' inputs were recorded."""
        return f"positive.{AGGREGATIONS[0]}.heads" in self.tensors

    def head_pair(self, aggregation: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Positive and negative projection inputs `[pairs, layers, heads * head_dim]`.

        Raises:
            UserError: the cache was built without heads.
        """
        if not self.has_heads:
            raise UserError("site heads needs an activation cache built with heads=True")
        return (
            self.tensors[f"positive.{aggregation}.heads"],
            self.tensors[f"negative.{aggregation}.heads"],
        )

    def mean_norm(self, aggregation: str, layer: int) -> float:
        """Mean L2 norm of the cached activations at a layer: the unit of relative alpha."""
        if (aggregation, layer) not in self._norms:
            pos, neg = self.pair(aggregation, layer)
            self._norms[(aggregation, layer)] = float(torch.cat([pos, neg]).norm(dim=-1).mean())
        return self._norms[(aggregation, layer)]

    @property
    def num_pairs(self) -> int:
        """How many contrastive pairs the cache holds."""
        return int(self.tensors[f"positive.{AGGREGATIONS[0]}"].shape[0])


def cache_key(loaded: LoadedModel, pairs: Sequence[ContrastivePair], heads: bool = False) -> str:
    """Content hash of everything the cached activations depend on."""
    tok = loaded.tokenizer
    payload = {
        "format": CACHE_FORMAT,
        "model": loaded.fingerprint,
        "tokenizer": [type(tok).__name__, len(tok), tok.pad_token],
        "pairs": [[p.prompt, p.positive, p.negative] for p in pairs],
        "aggregations": AGGREGATIONS,
    }
    if heads:
        payload["sites"] = ["residual", "heads"]
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:32]


def extract_activations(
    loaded: LoadedModel,
    pairs: Sequence[ContrastivePair],
    batch_size: int = 8,
    heads: bool = False,
) -> dict[str, torch.Tensor]:
    """Run the model over every pair and record each block's output at each aggregation (and
    with `heads`, each attention output projection's input).

    Each prompt runs once; both completions then run on top of its KV cache (right-padded, so
    real tokens never see padding), which halves the work of a naive pass over both sequences.
    """
    tok = loaded.tokenizer
    prompts = [tok.encode(p.prompt) for p in pairs]
    completions = {
        "positive": [tok.encode(p.positive, add_special_tokens=False) for p in pairs],
        "negative": [tok.encode(p.negative, add_special_tokens=False) for p in pairs],
    }
    for side, side_ids in completions.items():
        empty = [i for i, c in enumerate(side_ids) if not c]
        if empty:
            raise UserError(f"pair {empty[0]} has an empty {side} completion")
    n_layers, hidden = loaded.shape.num_layers, loaded.shape.hidden_size
    out = {
        f"{side}.{agg}": torch.zeros(len(pairs), n_layers, hidden)
        for side in SIDES
        for agg in AGGREGATIONS
    }
    projections = [out_projection(b) for b in loaded.blocks] if heads else []
    if heads:
        width = head_width(projections[0])
        for side in SIDES:
            for agg in AGGREGATIONS:
                out[f"{side}.{agg}.heads"] = torch.zeros(len(pairs), n_layers, width)
    captured: dict[int, torch.Tensor] = {}
    captured_heads: dict[int, torch.Tensor] = {}

    def make_hook(layer: int):  # type: ignore[no-untyped-def]
        def hook(_module: torch.nn.Module, _args: object, output: object) -> None:
            hidden_states = output[0] if isinstance(output, tuple) else output
            assert isinstance(hidden_states, torch.Tensor)
            captured[layer] = hidden_states.detach().float()

        return hook

    def make_head_hook(layer: int):  # type: ignore[no-untyped-def]
        def hook(_module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            captured_heads[layer] = args[0].detach().float()

        return hook

    model, device = loaded.model, loaded.device
    batches = length_sorted_batches([len(p) for p in prompts], batch_size)
    for batch in progress(batches, "caching activations"):
        prompt_in = pad_left([prompts[i] for i in batch], tok.pad_token_id, device)
        with torch.inference_mode():
            cache = output_cache(model(**prompt_in, use_cache=True))
        width = cache.get_seq_length()
        next_pos = prompt_in["position_ids"][:, -1:] + 1
        for side in SIDES:
            comps = [completions[side][i] for i in batch]
            lengths = [len(c) for c in comps]
            span = max(lengths)
            ids = torch.full((len(batch), span), tok.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(batch), span), dtype=torch.long)
            for row, c in enumerate(comps):
                ids[row, : len(c)] = torch.tensor(c)
                mask[row, : len(c)] = 1
            handles = [b.register_forward_hook(make_hook(i)) for i, b in enumerate(loaded.blocks)]
            handles += [
                p.register_forward_pre_hook(make_head_hook(i)) for i, p in enumerate(projections)
            ]
            try:
                with torch.inference_mode(), scratch_cache(cache) as extended:
                    model(
                        input_ids=ids.to(device),
                        attention_mask=torch.cat(
                            [prompt_in["attention_mask"], mask.to(device)], 1
                        ),
                        position_ids=next_pos + torch.arange(span, device=device),
                        **with_cache(model, extended),
                        use_cache=True,
                    )
            finally:
                for h in handles:
                    h.remove()
            assert cache.get_seq_length() == width
            stacked = torch.stack([captured[i] for i in range(n_layers)], dim=1).cpu()
            _aggregate(out, side, "", stacked, batch, lengths)
            if heads:
                per_head = torch.stack([captured_heads[i] for i in range(n_layers)], dim=1)
                _aggregate(out, side, ".heads", per_head.cpu(), batch, lengths)
            captured.clear()
            captured_heads.clear()
    return out


def _aggregate(
    out: dict[str, torch.Tensor],
    side: str,
    suffix: str,
    stacked: torch.Tensor,
    batch: list[int],
    lengths: list[int],
) -> None:
    """Write one batch's `[rows, layers, T, D]` activations at every aggregation."""
    for row, i in enumerate(batch):
        n = lengths[row]
        out[f"{side}.choice{suffix}"][i] = stacked[row, :, 0]
        out[f"{side}.last{suffix}"][i] = stacked[row, :, n - 1]
        out[f"{side}.mean{suffix}"][i] = stacked[row, :, :n].mean(dim=1)


def _cache_path(key: str) -> Path:
    return cache_dir() / "activations" / f"{key}.safetensors"


def load_or_build(
    loaded: LoadedModel, pairs: Sequence[ContrastivePair], heads: bool = False
) -> ActivationCache:
    """Return the cached activations for these pairs, extracting them only if none are on disk.

    `heads`: also record the attention output projections' inputs (site heads).

    Raises:
        UserError: `heads` for a family without an attention output projection.
    """
    if heads:
        out_projection(loaded.blocks[0])  # refuse before any work
    key = cache_key(loaded, pairs, heads)
    path = _cache_path(key)
    if path.is_file():
        try:
            tensors = load_file(str(path))
            log.info("activation cache hit: %s", path.name)
            return ActivationCache(tensors, key)
        except (SafetensorError, OSError) as e:
            log.warning("activation cache %s unreadable (%s); rebuilding it", path, e)
    log.info("extracting activations for %d pairs (once)", len(pairs))
    tensors = extract_activations(loaded, pairs, heads=heads)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"key": key, "model": loaded.fingerprint})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return ActivationCache(tensors, key)
