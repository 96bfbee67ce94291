"""RUNNING trials that never recorded a heartbeat.

Optuna fails a RUNNING trial as stale only once its heartbeat is older than the grace period. A
worker killed between creating a trial and its heartbeat thread's first beat (a few
milliseconds, longer on a loaded machine) leaves a trial with no heartbeat at all, which Optuna
never fails: every other worker then waits for it forever. `trials_without_heartbeat` finds
them so the trial loop can fail and retry them too.
"""

from __future__ import annotations

import optuna
from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import TrialState
from sqlalchemy import orm


def rdb_of(study: optuna.Study) -> RDBStorage | None:
    """The study's `RDBStorage` (unwrapped from Optuna's cache), or None for other storages."""
    storage = study._storage
    storage = getattr(storage, "_backend", storage)
    return storage if isinstance(storage, RDBStorage) else None


def trials_without_heartbeat(study: optuna.Study) -> list[int]:
    """Trial ids of the study's RUNNING trials that have no heartbeat row (heartbeats enabled
    on an RDB storage; else none)."""
    rdb = rdb_of(study)
    if rdb is None or rdb.heartbeat_interval is None:
        return []
    with _create_scoped_session(rdb.scoped_session) as session:
        running = (
            session.query(models.TrialModel)
            .options(orm.selectinload(models.TrialModel.heartbeats))
            .filter(models.TrialModel.state == TrialState.RUNNING)
            .filter(models.TrialModel.study_id == study._study_id)
            .all()
        )
        return [int(t.trial_id) for t in running if not t.heartbeats]
