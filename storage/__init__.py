"""Study storage: a thin factory from a URL to Optuna's `RDBStorage`."""

from __future__ import annotations

from storage._factory import create_storage, default_sqlite_url, mask_url, parse_url, sqlite_path
from storage._heartbeats import rdb_of, trials_without_heartbeat
from storage._retry import RetryStaleTrial

__all__ = [
    "RetryStaleTrial",
    "create_storage",
    "default_sqlite_url",
    "mask_url",
    "parse_url",
    "rdb_of",
    "sqlite_path",
    "trials_without_heartbeat",
]
