"""User-facing errors: a rule and the offending value, turned into exit code 2 by the CLI."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

T = TypeVar("T")


class UserError(ValueError):
    """A mistake the user can fix: bad config, bad data, unknown name, unusable bundle.

    The message is one line that states the rule and the value that broke it.
    """


class TrialFailure(RuntimeError):
    """A single trial could not produce a usable score (NaN/inf, out of memory).

    The study marks that trial FAIL with this message and goes on.
    """


def named(what: str, registry: Mapping[str, T], name: str) -> T:
    """`registry[name]`, or a `UserError` naming the rule (`what`) and the known names."""
    try:
        return registry[name]
    except (KeyError, TypeError):
        raise UserError(f"{what} must be one of {list(registry)}, got {name!r}") from None
