"""The server's connection ceiling: what a worker holds, and one line when the server is full.

A worker holds `CONNECTIONS_PER_WORKER` server connections: the trial loop's and the heartbeat
thread's (Optuna records heartbeats from a thread of its own while a trial runs). Both are
opened when the storage opens, so a full server refuses a worker before it claims a trial,
never halfway through one.
"""

from __future__ import annotations

from hpo.core.errors import UserError

CONNECTIONS_PER_WORKER = 2
# What PostgreSQL says when max_connections is reached (superuser slots: PostgreSQL 15 and 16+).
REFUSALS = ("too many clients", "remaining connection slots are reserved", "too many connections")


def refused(error: BaseException) -> bool:
    """Whether `error` (or its cause) is the server refusing a connection for lack of slots."""
    seen: BaseException | None = error
    while seen is not None:
        text = str(getattr(seen, "orig", None) or seen).lower()
        if any(r in text for r in REFUSALS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def ceiling_error(masked_url: str) -> UserError:
    """The one line a worker stops with when the server has no connection slot left."""
    return UserError(
        f"the database server of {masked_url!r} refused a connection: its max_connections is "
        f"reached; each worker needs {CONNECTIONS_PER_WORKER} connections (trial loop + "
        f"heartbeat), so N workers need {CONNECTIONS_PER_WORKER}*N plus one per `hpo status` or "
        "dashboard, below max_connections (PostgreSQL's default 100 leaves 97 to non-superusers:"
        " 48 workers); raise max_connections, run fewer workers, or put PgBouncer in transaction"
        " mode in front and set storage.pooler=true (README: Running on a cluster)"
    )
