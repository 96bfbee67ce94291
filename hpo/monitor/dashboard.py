"""`hpo dashboard`: optuna-dashboard on the study's storage, with the artifact store wired in.

optuna-dashboard has no authentication, so it listens on 127.0.0.1 unless `dashboard.host` says
otherwise, and then a warning says who can now read (and edit notes of) every study.

What the dashboard calls best is what `hpo export` ships. The trials' constraint lists (see
`hpo.core.record.record_constraints`) let the dashboard's own plots grey out infeasible trials
and keep them off the best-value line, but optuna-dashboard 0.21 picks its "best trial" card by
raw value (`storage.get_best_trial`) and its Pareto front without constraints. So the server
this module runs replaces the study page's best trials with `feasible_best_trials`: the trial
export picks (single objective), or Optuna's feasible Pareto front (multi-objective).
"""

from __future__ import annotations

import logging
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.core.errors import UserError
from hpo.core.record import is_feasible
from hpo.core.selection import Rule, pick_trial

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


def feasible_best_trials(study: optuna.Study, rule: Rule | None = None) -> list[FrozenTrial]:
    """The best trials as `hpo export` sees them: multi-objective, Optuna's Pareto front of the
    feasible trials (`study.best_trials`); single objective, the trial export would pick with
    `rule`, or while no steered trial qualifies, the best feasible one (the baseline), or none.
    """
    if len(study.directions) > 1:
        return list(study.best_trials)
    try:
        return [pick_trial(study, None, rule)]
    except UserError:
        pass
    feasible = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if is_feasible(t) and t.value is not None
    ]
    if not feasible:
        return []
    sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
    return [max(feasible, key=lambda t: (sign * float(t.value or 0.0), -t.number))]


def show_feasible_best(storage: Any, rule: Rule | None = None) -> bool:
    """Make this process's optuna-dashboard show `feasible_best_trials` as the study's best.

    optuna-dashboard builds the study page in `serialize_study_detail(study, best_trials, ...)`;
    the best trials it passes are replaced there. Returns False (and the caller warns) when the
    installed version has no such function, so its best trial may be an infeasible one.
    """
    from optuna_dashboard import _app

    original: Callable[..., Any] | None = getattr(_app, "serialize_study_detail", None)
    if original is None:
        return False
    if getattr(original, "_hpo_feasible", False):
        original = original.__wrapped__  # type: ignore[attr-defined]

    def serialize_study_detail(study: Any, best_trials: Any, *args: Any, **kwargs: Any) -> Any:
        loaded = optuna.load_study(study_name=study.study_name, storage=storage)
        return original(study, feasible_best_trials(loaded, rule), *args, **kwargs)

    serialize_study_detail._hpo_feasible = True  # type: ignore[attr-defined]
    serialize_study_detail.__wrapped__ = original  # type: ignore[attr-defined]
    _app.serialize_study_detail = serialize_study_detail
    return True


def check_listen(host: str, port: int) -> None:
    """Refuse a host that does not resolve or an address already taken, before anything is
    written or printed (the web server prints its "Listening on" banner before it binds).

    Raises:
        UserError: the host is not an address of this machine, or the port is taken.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[
            0
        ]
    except (socket.gaierror, UnicodeError) as e:
        why = getattr(e, "strerror", None) or str(e)
        raise UserError(f"dashboard.host {host!r} is not an address to listen on: {why}") from e
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does
        try:
            probe.bind(address)
        except OSError as e:
            raise UserError(f"dashboard cannot listen on {host}:{port}: {e.strerror or e}") from e


def serve(
    storage: Any,
    host: str,
    port: int,
    artifacts_dir: str | None,
    url_shown: str,
    rule: Rule | None = None,
) -> None:
    """Run optuna-dashboard until interrupted (blocks).

    Args:
        storage: the study's Optuna storage (SQLite or PostgreSQL `RDBStorage`).
        host: address to bind; only loopback is quiet.
        port: TCP port.
        artifacts_dir: the `FileSystemArtifactStore` root the workers upload to, or None.
        url_shown: the storage URL with its password masked, for the start line.
        rule: the export rule, so the best trial shown is the one `hpo export` would pick.

    Raises:
        UserError: the port is taken or the address cannot be bound.
    """
    from optuna_dashboard import run_server

    from hpo.monitor.artifacts import artifact_store

    warning = exposure_warning(host, port)
    if warning:
        print(warning, file=sys.stderr)
    store = artifact_store(artifacts_dir) if artifacts_dir else None
    if not show_feasible_best(storage, rule):
        print(
            "warning: this optuna-dashboard has no serialize_study_detail to hook, so its best "
            "trial ignores constraints; `hpo status` names the trial export picks",
            file=sys.stderr,
        )
    shown = f"[{host}]" if ":" in host else host
    print(
        f"dashboard   http://{shown}:{port}/dashboard/  (storage {url_shown}, artifacts "
        f"{artifacts_dir or 'none'}); Ctrl-C stops",
        flush=True,
    )
    # The server runs in a thread of its own: Ctrl-C and SIGTERM (a KeyboardInterrupt from the
    # CLI) land in this thread, never inside a request, where wsgiref would log and carry on.
    failed: list[OSError] = []

    def run() -> None:
        try:
            run_server(storage, host=host, port=port, artifact_store=store)
        except OSError as e:
            failed.append(e)

    server = threading.Thread(target=run, name="dashboard", daemon=True)
    server.start()
    while server.is_alive():
        server.join(0.5)
    if failed:
        e = failed[0]
        raise UserError(f"dashboard cannot listen on {host}:{port}: {e.strerror or e}") from e
