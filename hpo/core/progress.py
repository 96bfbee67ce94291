"""Progress bars for the slow loops (activation caching, scoring, generation), terminal only.

Bars go to stderr and only when it is a terminal and `CI` is unset, so logs, pipes and CI output
stay one line per event; `HPO_PROGRESS=0` turns them off, `HPO_PROGRESS=1` forces them on.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress_enabled() -> bool:
    """Whether progress bars are shown: a terminal on stderr, not CI, not turned off."""
    forced = os.environ.get("HPO_PROGRESS")
    if forced is not None:
        return forced not in ("", "0", "false", "no")
    return sys.stderr.isatty() and not os.environ.get("CI")


def progress(
    items: Iterable[T], desc: str, total: int | None = None, unit: str = "batch"
) -> Iterator[T]:
    """`items`, with a transient tqdm bar on a terminal (see `progress_enabled`)."""
    from tqdm.auto import tqdm

    yield from tqdm(
        items,
        desc=desc,
        total=total,
        unit=unit,
        leave=False,
        dynamic_ncols=True,
        disable=not progress_enabled(),
        file=sys.stderr,
    )
