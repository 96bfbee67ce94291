"""User-facing errors: a rule and the offending value, turned into exit code 2 by the CLI."""

from __future__ import annotations


class UserError(ValueError):
    """A mistake the user can fix: bad config, bad data, unknown name, unusable bundle.

    The message is one line that states the rule and the value that broke it.
    """


class TrialFailure(RuntimeError):
    """A single trial could not produce a usable score (NaN/inf, out of memory).

    The study marks that trial FAIL with this message and goes on.
    """
