"""Names and paths that come from config or bundle content, kept inside their root.

A task name becomes a directory inside a bundle and a bundle's `sha256` keys name files to read:
either could climb out with `../` or an absolute path. Every such name is checked here, and every
path built from one is resolved and checked to lie under its root.
"""

from __future__ import annotations

import math
import re
import reprlib
from pathlib import Path, PurePosixPath

from hpo.core.errors import UserError

# A file or directory name: starts with a letter or digit, then letters, digits, `._-`.
NAME_RULE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 40
_REPR.maxlist = _REPR.maxdict = _REPR.maxtuple = _REPR.maxset = 4
_REPR.maxlevel = 2


def brief(value: object) -> str:
    """`repr(value)` cut to a few items and characters: a value from a file in a short line."""
    return _REPR.repr(value)


def check_name(key: str, value: object) -> str:
    """Return `value` when it is a safe single path component, else raise.

    Args:
        key: the config key or bundle field the name came from, for the message.
        value: the name.

    Raises:
        UserError: not a string, empty, longer than 128 characters, or holding anything but
            letters, digits, `.`, `_`, `-` (so no `/`, `..` or absolute path).
    """
    if not isinstance(value, str) or not NAME_RULE.fullmatch(value) or ".." in value:
        raise UserError(
            f"{key} must be a name of letters, digits, '.', '_' and '-' (no '/' or '..', at "
            f"most 128 characters), got {brief(value)}"
        )
    return value


def confined(root: Path, relative: object, key: str) -> Path:
    """`root / relative`, refused unless it is a relative POSIX path that stays under `root`.

    Raises:
        UserError: an absolute path, a `..` component, a backslash, or a path that resolves
            (through symlinks) outside `root`.
    """
    text = relative if isinstance(relative, str) else ""
    parts = PurePosixPath(text).parts
    if (
        not text
        or "\\" in text
        or "\x00" in text
        or PurePosixPath(text).is_absolute()
        or any(p in ("..", ".") for p in parts)
    ):
        raise UserError(f"{key} must be a relative path inside {root}, got {brief(relative)}")
    path = root / text
    base = root.resolve()
    if not path.resolve().is_relative_to(base):
        raise UserError(f"{key} {brief(relative)} resolves outside {root} (a symlink?)")
    return path


def finite(key: str, value: object) -> float:
    """`value` as a float, refused unless it is a finite real number (not a bool or a string).

    Raises:
        UserError: NaN, an infinity, or not a number at all.
    """
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UserError(f"{key} must be a finite number, got {brief(value)}")
    return float(value)
