"""KV-cache helpers that hold on every supported transformers version.

transformers 5.24 renamed the forward keyword `past_key_values` to `cache` (the old name is a
deprecated alias until 5.40) and the output field likewise. Nothing here reads a keyword or a
field by one name only: the cache is found by what it is (an object with `get_seq_length`),
and the keyword a model's forward takes is read from its signature.

Reusing an unsteered KV cache across trials: `scratch_cache` extends it for one pass, then
restores it. Rolling back by `crop` is cheap, but a sliding-window layer (Mistral, Gemma 2/3)
cannot be cropped once it has reached its window, because it no longer holds the states it
would need. Caches with such layers are copied instead, so the shared prefix is never changed.
A reused prompt prefix is marked with the width of the prompt it belongs to (`mark_prompt`), so
the steering hooks know where that prompt ends whichever chunk of it runs first.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

# Older releases' name first is irrelevant: whichever the forward declares wins.
_CACHE_KEYWORDS = ("cache", "past_key_values")
# Set on a prompt-prefix cache: the padded width of the whole prompt it is the prefix of.
_PROMPT_WIDTH = "hpo_prompt_width"


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


def is_cache(value: Any) -> bool:
    """Whether `value` is a KV cache: a transformers `Cache` or the legacy tuple of tuples."""
    if hasattr(value, "get_seq_length"):
        return True
    return (
        isinstance(value, tuple)
        and bool(value)
        and isinstance(value[0], tuple)
        and bool(value[0])
        and hasattr(value[0][0], "shape")
    )


def cache_length(value: Any) -> int:
    """Tokens held by a KV cache (see `is_cache`)."""
    if hasattr(value, "get_seq_length"):
        return int(value.get_seq_length())
    return int(value[0][0].shape[-2])


def find_cache(values: Iterable[Any]) -> Any | None:
    """The first KV cache among `values` (a forward call's arguments), whatever its keyword."""
    return next((v for v in values if v is not None and is_cache(v)), None)


def past_length(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int:
    """How many positions precede the chunk a model forward is about to run.

    Read from the KV cache among the call's arguments (any keyword: `past_key_values` before
    transformers 5.24, `cache` after); without one, from a 2-D attention mask wider than the
    input (`generate` always passes the full mask); else 0 (a fresh sequence).
    """
    cache = find_cache([*args, *kwargs.values()])
    if cache is not None:
        return cache_length(cache)
    mask = kwargs.get("attention_mask")
    ids = kwargs.get("input_ids")
    if ids is None:
        ids = kwargs.get("inputs_embeds")
    if ids is None and args and hasattr(args[0], "shape"):
        ids = args[0]
    if mask is not None and ids is not None and getattr(mask, "dim", lambda: 0)() == 2:
        return max(int(mask.shape[1]) - int(ids.shape[1]), 0)
    return 0


def mark_prompt(cache: Any, width: int) -> Any:
    """Mark `cache` as the unsteered prefix of a `width`-token (padded) prompt; returns it."""
    setattr(cache, _PROMPT_WIDTH, int(width))
    return cache


def prompt_width(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int | None:
    """The prompt width marked on the call's KV cache (`mark_prompt`), else None."""
    cache = find_cache([*args, *kwargs.values()])
    width = getattr(cache, _PROMPT_WIDTH, None) if cache is not None else None
    return None if width is None else int(width)


def cache_keyword(model: Any) -> str:
    """The keyword `model.forward` takes its KV cache under (`cache` or `past_key_values`)."""
    params = inspect.signature(model.forward).parameters
    return next((name for name in _CACHE_KEYWORDS if name in params), "past_key_values")


def with_cache(model: Any, cache: Any) -> dict[str, Any]:
    """`{keyword: cache}` to pass a KV cache to `model` under the name it declares."""
    return {cache_keyword(model): cache}


def output_cache(output: Any) -> Any:
    """The KV cache a forward returned (`cache` from 5.24, `past_key_values` before)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


def repeat_rows(cache: Any, count: int) -> Any:
    """A copy of `cache` with every row repeated `count` times, interleaved (row `r` of the
    copy is row `r // count` of `cache`): the prompt prefix of a pass that scores `count`
    trials at once (`hpo.steering.handle.RowGroup`). The prompt mark is kept."""
    if count == 1:
        return cache
    if hasattr(cache, "batch_repeat_interleave"):
        out = copy.deepcopy(cache)
        out.batch_repeat_interleave(count)
        return out
    if is_cache(cache):  # the legacy tuple of (key, value) per layer
        return tuple(tuple(t.repeat_interleave(count, dim=0) for t in layer) for layer in cache)
    raise TypeError(f"cannot repeat the rows of a {type(cache).__name__}")


class RepeatedPrefixes:
    """Per batch and row count, the prompt-prefix caches `repeat_rows` makes, built on first
    use and kept (a worker scores every pass of `count` trials from the same copies)."""

    def __init__(self) -> None:
        self._made: dict[tuple[int, int], Any] = {}

    def get(self, prefixes: list[Any], step: int, count: int) -> Any:
        """Batch `step`'s prefix (of `prefixes`) with its rows repeated `count` times."""
        if count == 1 or prefixes[step] is None:
            return prefixes[step]
        key = (step, count)
        if key not in self._made:
            self._made[key] = repeat_rows(prefixes[step], count)
        return self._made[key]
