"""Where a bundle may be written, and how it is put there without losing anything.

`hpo export` writes into a new or empty directory, or replaces a bundle it wrote before (found by
its marker file) when `export.force=true`. Anything else is refused in one line: a regular file,
a folder holding other files, the run's output directory or its study database and artifacts.
The bundle is built in a hidden sibling directory and renamed into place, so the target holds
either the old bundle or the new one, never half of either; the old one is deleted only once the
new one is in place, and only the files its marker lists.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from hpo.core.errors import UserError

# Written last into every bundle: which files `hpo export` put there (and may replace).
MARKER = ".hpo-bundle"
WRITTEN_BY = "steering-hpo"
# Beside the target while one export measures and writes it: `.<name>.hpo-export`.
CLAIM_SUFFIX = ".hpo-export"
CLAIM_POLL_S = 0.5


@dataclass(frozen=True)
class Protected:
    """A path export must never delete or write into.

    Attributes:
        path: the path (resolved).
        what: what it is, for the message (`output_dir`, `the study database`).
        inside: also refuse a target inside it (artifacts), not only the path or a parent of it.
    """

    path: Path
    what: str
    inside: bool = False


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def bundle_files(target: Path) -> list[str] | None:
    """The files a bundle directory's marker lists (a bundle from before the marker: its
    sha256 map), or None when it is not a bundle hpo wrote."""
    try:
        data = json.loads((target / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return _legacy_bundle_files(target)
    files = data.get("files") if isinstance(data, dict) else None
    if data.get("written_by") != WRITTEN_BY or not isinstance(files, list):
        return None
    if not all(isinstance(f, str) for f in files):
        return None
    return files


def _legacy_bundle_files(target: Path) -> list[str] | None:
    """A bundle written before the marker existed: its `steering.json` names steering-hpo and
    lists every other file in its sha256 map (anything else in the folder is still refused)."""
    try:
        meta = json.loads((target / "steering.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or (meta.get("package") or {}).get("name") != WRITTEN_BY:
        return None
    digests = meta.get("sha256")
    if not isinstance(digests, dict) or not all(isinstance(k, str) for k in digests):
        return None
    return sorted({*digests, "steering.json"})


def _foreign(target: Path, files: list[str]) -> list[str]:
    """Entries of `target` that are neither a listed file, a folder of one, nor the marker."""
    allowed = {*files, MARKER}
    folders = {str(p) for f in files for p in Path(f).parents if str(p) != "."}
    out = []
    for path in sorted(target.rglob("*")):
        rel = str(path.relative_to(target))
        listed = rel in allowed and path.is_file()
        folder = rel in folders and path.is_dir()
        if path.is_symlink() or not (listed or folder):
            out.append(rel)
    return out


def _shown(names: Iterable[str], limit: int = 3) -> str:
    names = list(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(repr(n) for n in names[:limit]) + more


def _writable_parent(target: Path) -> None:
    """Refuse a target whose parent cannot be created or written (checked before any work)."""
    parent = target.parent
    while not parent.exists():
        if parent.is_symlink():  # a dangling link
            break
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"export.dir {str(target)!r} lies under {str(parent)!r}, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(
            f"export.dir {str(target)!r} cannot be written: {str(parent)!r} is not writable"
        )
    try:  # permissions are not the whole story (root, read-only mounts, /proc): try it
        os.rmdir(tempfile.mkdtemp(prefix=".hpo-probe.", dir=parent))
    except OSError as e:
        raise UserError(
            f"export.dir {str(target)!r} cannot be written: {str(parent)!r}: {e.strerror}"
        ) from e


def check_target(target: str | Path, force: bool, protected: Iterable[Protected] = ()) -> Path:
    """Refuse an export target that would lose data; return it resolved.

    Args:
        target: `export.dir`.
        force: `export.force`: replace a bundle `hpo export` wrote there before.
        protected: paths the export must not replace or write into.

    Raises:
        UserError: the target is (or contains) a protected path, is a file, is a non-empty
            folder that is not a bundle, holds a bundle plus other files, holds a bundle and
            `force` is off, or its parent cannot be written.
    """
    raw = Path(target).expanduser()
    resolved = raw.resolve()
    for p in protected:
        if resolved == p.path or p.path.is_relative_to(resolved):
            raise UserError(
                f"export.dir must not be or contain {p.what} ({p.path}), got {str(raw)!r}; "
                "choose a new directory such as <output_dir>/bundle"
            )
        if p.inside and resolved.is_relative_to(p.path):
            raise UserError(
                f"export.dir must not lie inside {p.what} ({p.path}), got {str(raw)!r}"
            )
    if resolved.exists() and not resolved.is_dir():
        raise UserError(
            f"export.dir must be a new or empty directory or an earlier bundle, got the file "
            f"{str(raw)!r}"
        )
    if resolved.is_dir() and any(resolved.iterdir()):
        files = bundle_files(resolved)
        if files is None:
            found = sorted(p.name for p in resolved.iterdir())
            raise UserError(
                f"export.dir must be a new or empty directory or a bundle hpo wrote, got "
                f"{str(raw)!r} holding {_shown(found)} (no {MARKER} marker); nothing was changed"
            )
        foreign = _foreign(resolved, files)
        if foreign:
            raise UserError(
                f"export.dir {str(raw)!r} holds a bundle plus files it did not write "
                f"({_shown(foreign)}); move them or choose another export.dir"
            )
        if not force:
            raise UserError(
                f"export.dir {str(raw)!r} already holds a bundle; set export.force=true to "
                "replace it, or choose another export.dir"
            )
    _writable_parent(resolved)
    return resolved


def staging_dir(target: Path) -> Path:
    """A new hidden sibling of `target` to build the bundle in (same filesystem: atomic rename).

    Raises:
        UserError: the parent cannot be created or written.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as e:
        raise UserError(f"export.dir {str(target)!r} cannot be written: {e.strerror}") from e
    return tmp


def _files_of(tmp: Path) -> list[str]:
    return sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())


def publish(tmp: Path, target: Path, force: bool, protected: Iterable[Protected] = ()) -> Path:
    """Mark the finished bundle in `tmp` and rename it to `target`, replacing an old bundle.

    The target is checked again first (the export ran for a while). Folders get the usual
    permissions (`mkdtemp` makes them private). The old bundle is renamed aside, the new one
    renamed in, and only then is the old one deleted; if the second rename fails, the old one
    is put back.

    Raises:
        UserError: the target became unusable while the bundle was measured.
    """
    target = check_target(target, force, protected)
    marker = {"written_by": WRITTEN_BY, "files": _files_of(tmp)}
    (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    mode = 0o777 & ~_umask()
    for folder in [tmp, *(p for p in tmp.rglob("*") if p.is_dir())]:
        folder.chmod(mode)
    old: Path | None = None
    try:
        if target.is_dir() and any(target.iterdir()):
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.replace(target, old / "bundle")
        try:
            os.replace(tmp, target)
        except OSError:
            if old is not None:
                os.replace(old / "bundle", target)
                old.rmdir()
                old = None
            raise
    except OSError as e:
        kept = f"; the old bundle is in {old}" if old is not None else ""
        raise UserError(f"export.dir {str(target)!r} cannot be written: {e}{kept}") from e
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def protected_paths(
    output_dir: str, storage_url: str, artifacts_dir: str | None
) -> list[Protected]:
    """What an export must leave alone: the run's output directory (a bundle may go in a new
    folder inside it), the SQLite study database, and the artifact store."""
    out = [Protected(Path(output_dir).expanduser().resolve(), "output_dir")]
    if storage_url.startswith("sqlite:///"):
        db = storage_url[len("sqlite:///") :].split("?", 1)[0]
        if db and db != ":memory:":
            out.append(Protected(Path(db).expanduser().resolve(), "the study database"))
    if artifacts_dir:
        out.append(
            Protected(Path(artifacts_dir).expanduser().resolve(), "artifacts_dir", inside=True)
        )
    return out


def claim_path(target: str | Path) -> Path:
    """The claim file of an export target: a hidden sibling, so the target stays as it was."""
    resolved = Path(target).expanduser().resolve()
    return resolved.parent / f".{resolved.name}{CLAIM_SUFFIX}"


def _holder(path: Path) -> dict[str, object] | None:
    """The claim's `{pid, host, since}`, or None when it is gone or its process is dead."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {"pid": "?", "host": "?", "since": 0}  # half-written: someone holds it
    if not isinstance(data, dict):
        return {"pid": "?", "host": "?", "since": 0}
    pid = data.get("pid")
    if data.get("host") == socket.gethostname() and isinstance(pid, int):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None  # killed mid-export on this machine: the claim is stale
        except PermissionError:
            pass
    return data


@contextmanager
def claimed(target: str | Path, wait_s: float = 0.0) -> Iterator[None]:
    """Hold `export.dir` for this export from before its measurement to its rename, so a second
    export into the same directory is refused at once instead of after measuring.

    Args:
        target: `export.dir`.
        wait_s: how long to wait for another export's claim to go before refusing (`hpo
            optimize`: a peer process of the same study exports the same winner, then this one
            finds its bundle).

    Raises:
        UserError: another live export holds the target (still, after `wait_s`).
    """
    path = claim_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    own = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if holder is None:
                path.unlink(missing_ok=True)
                continue
            if time.monotonic() < deadline:
                time.sleep(CLAIM_POLL_S)
                continue
            raise UserError(
                f"export.dir {str(target)!r} is being written by another export (pid "
                f"{holder.get('pid')} on {holder.get('host')}); wait for it or choose another "
                f"export.dir (if none runs, remove {path.name} beside it)"
            ) from None
        except OSError as e:
            raise UserError(f"export.dir {str(target)!r} cannot be written: {e.strerror}") from e
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(own)
        break
    try:
        yield
    finally:
        path.unlink(missing_ok=True)
