"""`hpo dashboard`: optuna-dashboard on the study's storage, with the artifact store wired in.

optuna-dashboard has no authentication, so it listens on 127.0.0.1 unless `dashboard.host` says
otherwise, and then a warning says who can now read (and edit notes of) every study.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from hpo.core.errors import UserError

log = logging.getLogger(__name__)

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def exposure_warning(host: str, port: int) -> str | None:
    """The warning printed when the dashboard listens beyond this machine, else None."""
    if host in LOOPBACK:
        return None
    return (
        f"warning: the dashboard listens on {host}:{port} and has no authentication: anyone "
        "who reaches that address can read every study in this storage and edit its notes; "
        "prefer the default 127.0.0.1 with an SSH tunnel (ssh -L 8080:127.0.0.1:8080 host)"
    )


def serve(storage: Any, host: str, port: int, artifacts_dir: str | None, url_shown: str) -> None:
    """Run optuna-dashboard until interrupted (blocks).

    Args:
        storage: the study's Optuna storage (SQLite or PostgreSQL `RDBStorage`).
        host: address to bind; only loopback is quiet.
        port: TCP port.
        artifacts_dir: the `FileSystemArtifactStore` root the workers upload to, or None.
        url_shown: the storage URL with its password masked, for the start line.

    Raises:
        UserError: the port is taken or the address cannot be bound.
    """
    from optuna_dashboard import run_server

    from hpo.monitor.artifacts import artifact_store

    warning = exposure_warning(host, port)
    if warning:
        print(warning, file=sys.stderr)
    store = artifact_store(artifacts_dir) if artifacts_dir else None
    shown = f"[{host}]" if ":" in host else host
    print(
        f"dashboard   http://{shown}:{port}/dashboard/  (storage {url_shown}, artifacts "
        f"{artifacts_dir or 'none'}); Ctrl-C stops",
        flush=True,
    )
    try:
        run_server(storage, host=host, port=port, artifact_store=store)
    except OSError as e:
        raise UserError(f"dashboard cannot listen on {host}:{port}: {e.strerror or e}") from e
