"""URL -> Optuna `RDBStorage`: SQLite embedded by default, PostgreSQL when shared.

Optuna owns the schema. We only tune the engine: SQLite gets a long busy timeout, WAL and
`BEGIN IMMEDIATE` (writers queue instead of failing with "database is locked"); servers get small
pools with `pool_pre_ping`. Heartbeats let a dead worker's trial be failed and retried.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import sqlalchemy
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RDBStorage
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from hpo.core.config import StorageConfig
from hpo.core.errors import UserError
from storage._retry import RetryStaleTrial

SUPPORTED = ("sqlite", "postgresql", "mysql")


def mask_url(url: str) -> str:
    """The URL with any password replaced by `***`, safe for logs, attributes and errors."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable storage URL>"


def parse_url(url: str) -> URL:
    """Parse and check a storage URL.

    Raises:
        UserError: not a SQLAlchemy URL, or a backend Optuna cannot use. The password is masked.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as e:
        raise UserError(
            f"storage.url must be a SQLAlchemy URL like sqlite:///study.db or "
            f"postgresql+psycopg://user@host/db, got {mask_url(url)!r}"
        ) from e
    if parsed.get_backend_name() not in SUPPORTED:
        raise UserError(
            f"storage.url backend must be one of {list(SUPPORTED)}, "
            f"got {parsed.get_backend_name()!r} in {mask_url(url)!r}"
        )
    return parsed


def default_sqlite_url(output_dir: str | Path) -> str:
    """The embedded default: `study.db` in the run's output directory."""
    path = Path(output_dir).expanduser().resolve() / "study.db"
    return f"sqlite:///{path}"


def _sqlite_pragmas(engine: sqlalchemy.Engine) -> None:
    @sqlalchemy.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let the "begin" event below own transactions
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    @sqlalchemy.event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def create_storage(cfg: StorageConfig, url: str) -> RDBStorage:
    """Open (creating if needed) the study database at `url` as an Optuna `RDBStorage`.

    Raises:
        UserError: a bad URL, a missing driver, or a database that cannot be reached.
    """
    parsed = parse_url(url)
    backend = parsed.get_backend_name()
    engine_kwargs: dict[str, Any]
    if backend == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": cfg.sqlite_timeout}}
    else:
        engine_kwargs = {"pool_size": 2, "max_overflow": 2, "pool_pre_ping": True}
        if backend == "postgresql":
            engine_kwargs["connect_args"] = {"connect_timeout": 10}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            storage = RDBStorage(
                url,
                engine_kwargs=engine_kwargs,
                heartbeat_interval=cfg.heartbeat_interval,
                grace_period=cfg.grace_period,
                heartbeat_stale_trial_callback=RetryStaleTrial(max_retry=cfg.max_retry),
            )
    except (NoSuchModuleError, ImportError) as e:
        raise UserError(
            f"storage.url {mask_url(url)!r} needs a database driver that is not installed "
            f"(for PostgreSQL: pip install 'steering-hpo[postgres]'): {type(e).__name__}"
        ) from e
    except SQLAlchemyError as e:
        reason = str(getattr(e, "orig", e)).splitlines()[0].replace(str(parsed.password), "***")
        raise UserError(f"cannot open storage {mask_url(url)!r}: {reason}") from e
    if backend == "sqlite":
        _sqlite_pragmas(storage.engine)
        storage.engine.dispose()  # pooled connections from here on get the pragmas above
    return storage
