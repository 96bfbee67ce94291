"""Reuse an unsteered KV cache across trials: extend it for one pass, then restore it.

Rolling back by `crop` is cheap, but a sliding-window layer (Mistral, Gemma 2/3) cannot be
cropped once it has reached its window, because it no longer holds the states it would need.
Caches with such layers are copied instead, so the shared prefix is never changed.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def _croppable(cache: Any) -> bool:
    return not any(hasattr(layer, "sliding_window") for layer in getattr(cache, "layers", ()))


@contextmanager
def scratch_cache(cache: Any) -> Iterator[Any]:
    """A cache the body may extend; `cache` holds exactly its original states afterwards."""
    if not _croppable(cache):
        yield copy.deepcopy(cache)
        return
    width = cache.get_seq_length()
    try:
        yield cache
    finally:
        added = cache.get_seq_length() - width
        if added:
            cache.crop(-added)
