"""URL -> Optuna `RDBStorage`: SQLite embedded by default, PostgreSQL when shared.

Optuna owns the schema. We only tune the engine: SQLite gets a long busy timeout, WAL and
`BEGIN IMMEDIATE` (writers queue instead of failing with "database is locked"); servers get small
pools with `pool_pre_ping`. Heartbeats let a dead worker's trial be failed and retried.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote

import sqlalchemy
from optuna.exceptions import ExperimentalWarning
from optuna.storages import RDBStorage
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, SQLAlchemyError

from hpo.core.config import StorageConfig
from hpo.core.errors import UserError
from storage._ceiling import CONNECTIONS_PER_WORKER, ceiling_error, refused
from storage._retry import RetryStaleTrial

SUPPORTED = ("sqlite", "postgresql", "mysql")
SCHEMA_RACE_ATTEMPTS = 5
# Query parameters that carry a secret (libpq and MySQL drivers accept a password there too).
SECRET_PARAMS = {"password", "passwd", "pwd", "sslpassword"}


def _credentials(url: str) -> tuple[str, str, str | None, str] | None:
    """`(scheme, user, password or None, rest)` of `scheme://user:password@rest`.

    Parsed, not matched: the user info runs to the *last* `@`, so a password holding an
    unencoded `@`, `:` or `/` is masked whole (an `@` later in the URL masks more, never less).
    None when the URL has no authority (`sqlite:///path`) or no user info.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or rest.startswith("/"):
        return None
    userinfo, at, tail = rest.rpartition("@")
    if not at:
        return None
    user, colon, password = userinfo.partition(":")
    return scheme, user, password if colon else None, tail


def mask_url(url: str) -> str:
    """The URL with any password replaced by `***`, safe for logs, attributes and errors.

    Masks the password of the user info however it is written, and `password=` style query
    parameters.
    """
    creds = _credentials(url)
    if creds is not None:
        scheme, user, password, tail = creds
        url = f"{scheme}://{user}{':***' if password is not None else ''}@{tail}"
    base, question, query = url.partition("?")
    if question:
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(k.lower() in SECRET_PARAMS for k, _ in pairs):
            query = "&".join(f"{k}={'***' if k.lower() in SECRET_PARAMS else v}" for k, v in pairs)
        url = f"{base}?{query}"
    return url


def _secrets(url: str) -> list[str]:
    """Every password the URL holds (raw and decoded), to scrub from driver messages."""
    creds = _credentials(url)
    found = [creds[2], unquote(creds[2])] if creds and creds[2] else []
    query = url.partition("?")[2]
    found += [v for k, v in parse_qsl(query) if k.lower() in SECRET_PARAMS and v]
    return sorted({s for s in found if s}, key=len, reverse=True)


def sqlite_path(url: str) -> Path | None:
    """The database file of a `sqlite:///...` URL (also `sqlite:///file:...?uri=true`), else
    None (another backend, or an in-memory database)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    if str(parsed.query.get("uri", "")).lower() in ("true", "1") and database.startswith("file:"):
        database = database[len("file:") :].split("?", 1)[0]
    return Path(database).expanduser()


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
    creds = _credentials(url)
    if creds is not None and creds[2] is not None and parsed.password != unquote(creds[2]):
        raise UserError(
            "storage.url's password must be percent-encoded ('@' as %40, ':' as %3A, '/' as "
            f"%2F), got {mask_url(url)!r}"
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


def _schema_race(e: SQLAlchemyError) -> bool:
    """Whether `e` is another process creating the same new schema at the same moment: a table
    created in between ("table ... already exists") or the version rows Optuna and alembic
    stamp once (an IntegrityError: "UNIQUE constraint failed: alembic_version.version_num")."""
    return isinstance(e, IntegrityError) or "already exists" in str(e)


def _check_schema(storage: RDBStorage) -> None:
    """Optuna's schema check without its nested connections: it reads the version inside an
    open session, which through a pooler in transaction mode pins one server connection per
    starting worker while each waits for a second (a deadlock once workers outnumber them)."""
    manager = storage._version_manager
    if manager.get_current_version() != manager.get_head_version():
        manager.check_table_schema_compatibility()  # raises with Optuna's upgrade advice


def _rdb_storage(cfg: StorageConfig, url: str, engine_kwargs: dict[str, Any]) -> RDBStorage:
    """`RDBStorage`, tried again when another process created the same new schema at the same
    moment (two `hpo optimize` on a new SQLite file); the retry finds the schema complete."""
    for attempt in range(SCHEMA_RACE_ATTEMPTS):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                storage = RDBStorage(
                    url,
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=cfg.heartbeat_interval,
                    grace_period=cfg.grace_period,
                    heartbeat_stale_trial_callback=RetryStaleTrial(max_retry=cfg.max_retry),
                    skip_compatibility_check=cfg.pooler,
                )
                if cfg.pooler:
                    _check_schema(storage)
                return storage
        except SQLAlchemyError as e:
            if not _schema_race(e) or attempt == SCHEMA_RACE_ATTEMPTS - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def _open_connections(engine: sqlalchemy.Engine) -> None:
    """Open the pool's connections now, so a full server refuses this worker at start.

    Each is rolled back at once: the checkout's ping opened a transaction, and one held while
    the next connects would pin a pooler's server connection (PgBouncer in transaction mode
    then deadlocks when every worker does the same).
    """
    held = []
    for _ in range(CONNECTIONS_PER_WORKER):
        held.append(engine.raw_connection())
        held[-1].rollback()
    for conn in held:
        conn.close()


def create_storage(cfg: StorageConfig, url: str) -> RDBStorage:
    """Open (creating if needed) the study database at `url` as an Optuna `RDBStorage`.

    Raises:
        UserError: a bad URL, a missing driver, or a database that cannot be reached.
    """
    parsed = parse_url(url)
    backend = parsed.get_backend_name()
    engine_kwargs: dict[str, Any]
    if backend == "sqlite":
        db = sqlite_path(url)
        if db is not None:
            try:
                db.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                blocked = isinstance(e, FileExistsError | NotADirectoryError)
                why = "a file is in the way: not a directory" if blocked else e.strerror
                raise UserError(
                    f"cannot open storage {mask_url(url)!r}: its folder {str(db.parent)!r} "
                    f"cannot be created ({why})"
                ) from e
        engine_kwargs = {"connect_args": {"timeout": cfg.sqlite_timeout}}
    else:
        # The trial loop's connection and the heartbeat thread's, no more (storage/_ceiling.py).
        engine_kwargs = {
            "pool_size": CONNECTIONS_PER_WORKER,
            "max_overflow": 0,
            "pool_pre_ping": True,
        }
        if backend == "postgresql":
            engine_kwargs["connect_args"] = {"connect_timeout": 10}
            if cfg.pooler:  # PgBouncer in transaction mode: no server-side prepared statements
                engine_kwargs["connect_args"]["prepare_threshold"] = None
    try:
        storage = _rdb_storage(cfg, url, engine_kwargs)
        if backend != "sqlite":
            _open_connections(storage.engine)
    except (NoSuchModuleError, ImportError) as e:
        raise UserError(
            f"storage.url {mask_url(url)!r} needs a database driver that is not installed "
            f"(for PostgreSQL: pip install 'steering-hpo[postgres]'): {type(e).__name__}"
        ) from e
    except SQLAlchemyError as e:
        if refused(e):
            raise ceiling_error(mask_url(url)) from e
        reason = (str(getattr(e, "orig", e)).splitlines() or [type(e).__name__])[0]
        for secret in _secrets(url):
            reason = reason.replace(secret, "***")
        raise UserError(f"cannot open storage {mask_url(url)!r}: {reason}") from e
    if backend == "sqlite":
        _sqlite_pragmas(storage.engine)
        storage.engine.dispose()  # pooled connections from here on get the pragmas above
    return storage
