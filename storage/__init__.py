"""Study storage: a thin factory from a URL to Optuna's `RDBStorage`."""

from __future__ import annotations

from storage._factory import create_storage, default_sqlite_url, mask_url, parse_url

__all__ = ["create_storage", "default_sqlite_url", "mask_url", "parse_url"]
