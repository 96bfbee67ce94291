"""How the `hpo` command logs: its log format and levels, and background threads' storage
errors as one line."""

from __future__ import annotations

import logging
import sys
import threading


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="[%(asctime)s %(levelname)s] %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    import optuna
    import transformers

    # Our own log lines say what happened to each trial (Optuna's repeat them with tracebacks).
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    transformers.logging.set_verbosity_error()
    if not sys.stderr.isatty():
        transformers.utils.logging.disable_progress_bar()


def _thread_error(args: threading.ExceptHookArgs) -> None:
    """A background thread's storage error (Optuna's heartbeat while the database is down):
    one log line instead of a traceback; the trial loop reports the lost storage itself."""
    from optuna.exceptions import StorageInternalError
    from sqlalchemy.exc import SQLAlchemyError

    if isinstance(args.exc_value, SQLAlchemyError | StorageInternalError):
        logging.getLogger("hpo").warning(
            "%s: the storage did not answer (%s); the trial goes on",
            args.thread.name if args.thread else "a thread",
            type(args.exc_value).__name__,
        )
        return
    threading.__excepthook__(args)
