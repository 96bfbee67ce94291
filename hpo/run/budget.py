"""The exact trial budget shared by every worker of a study.

Finished (COMPLETE + PRUNED) trials count; failed ones do not, so a crashed worker's trial is
retried inside the budget. Workers stop asking for trials once finished + running trials cover
the budget, and a trial that still slips past in a race (two workers asking at the same instant)
sees that the trials numbered before it already claim the whole budget and fails itself as
"over budget" before doing any work.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable, Sequence

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.trial import TrialState

from hpo.core.errors import TrialFailure, UserError
from hpo.core.record import BASELINE_ATTR, FAIL_REASON_ATTR, PROMPTED_ATTR, record_failure
from storage import RetryStaleTrial, rdb_of, trials_without_heartbeat

log = logging.getLogger(__name__)

# What `study.optimize` calls per trial (`hpo.run.trial.TrialRunner`): one value, or one per
# objective of a multi-objective study.
TrialFunction = Callable[[optuna.Trial], float | Sequence[float]]

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
CLAIMING = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


class OverBudget(RuntimeError):
    """This trial was created after the budget was already claimed by earlier trials."""


def counts(study: optuna.Study) -> dict[TrialState, int]:
    """Number of trials in each state."""
    out = dict.fromkeys(TrialState, 0)
    for t in study.get_trials(deepcopy=False):
        out[t.state] += 1
    return out


def finished_trials(study: optuna.Study) -> int:
    """Trials that count against the budget (COMPLETE and PRUNED)."""
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def check_claim(study: optuna.Study, number: int, n_trials: int) -> None:
    """Raise `OverBudget` when the trials numbered before `number` already claim the budget.

    Trial numbers are assigned atomically by the storage, so this is a total order that every
    worker agrees on; a failed trial does not claim (its retry will).
    """
    ahead = sum(1 for t in study.get_trials(deepcopy=False, states=CLAIMING) if t.number < number)
    if ahead >= n_trials:
        raise OverBudget(f"over budget: {ahead} earlier trials already claim n_trials={n_trials}")


# When this process first saw each RUNNING trial without a heartbeat: (study, trial id) -> time.
_UNBORN: dict[tuple[str, int], float] = {}
UNBORN_REASON = "worker died before its first heartbeat"


def fail_stale_trials(study: optuna.Study, now: float | None = None) -> None:
    """Fail the RUNNING trials whose worker stopped sending heartbeats (they are then retried),
    and those that never sent one for a whole grace period (their worker died before its first
    beat, which Optuna's own check never catches)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    _fail_unborn(study, time.monotonic() if now is None else now)


def _fail_unborn(study: optuna.Study, now: float) -> None:
    rdb = rdb_of(study)
    if rdb is None or rdb.heartbeat_interval is None:
        return
    grace = rdb.grace_period or 2 * rdb.heartbeat_interval
    ids = set(trials_without_heartbeat(study))
    name = study.study_name
    for key in [k for k in _UNBORN if k[0] == name and k[1] not in ids]:
        del _UNBORN[key]  # it beat (or finished) since
    for trial_id in sorted(ids):
        first = _UNBORN.setdefault((name, trial_id), now)
        if now - first <= grace:
            continue
        del _UNBORN[(name, trial_id)]
        storage = study._storage  # through Optuna's cache, which holds the trial too
        try:
            storage.set_trial_user_attr(trial_id, FAIL_REASON_ATTR, UNBORN_REASON)
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # it finished, or another worker failed it first
        log.warning("trial id %d failed: %s (grace %ss)", trial_id, UNBORN_REASON, grace)
        retry = rdb.get_heartbeat_stale_trial_callback()
        if retry is not None:
            retry(study, storage.get_trial(trial_id))


def _finished_elsewhere(trial: optuna.Trial) -> bool:
    """Whether another worker already finished this trial (failed it as stale while this
    process was stopped past `storage.grace_period`)."""
    return trial.study._storage.get_trial(trial._trial_id).state.is_finished()


def retry_baseline(trial: optuna.Trial) -> None:
    """Enqueue the interrupted baseline again: without it no trial has a reference."""
    frozen = trial.study._storage.get_trial(trial._trial_id)
    RetryStaleTrial(max_retry=None)(trial.study, frozen)
    log.info("baseline trial %d interrupted: enqueued again", trial.number)


def budgeted(
    function: TrialFunction, n_trials: int, taken: list[int] | None = None
) -> TrialFunction:
    """Wrap a trial function so a trial created past the budget fails before doing any work.

    `taken` collects the numbers of trials another worker finished while this one ran them
    (`run_trials` then discards their result instead of crashing).
    """

    def run(trial: optuna.Trial) -> float | Sequence[float]:
        try:
            check_claim(trial.study, trial.number, n_trials)
            value = function(trial)
        except OverBudget as e:
            log.info("trial %d not run: %s (another worker won the race)", trial.number, e)
            record_failure(trial, str(e))
            raise TrialFailure(str(e)) from e
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM turned into one by the CLI
            reason = f"worker stopped ({str(e) or 'Ctrl-C'})"
            log.warning("trial %d failed: %s", trial.number, reason)
            record_failure(trial, reason)
            if trial.user_attrs.get(BASELINE_ATTR) or trial.user_attrs.get(PROMPTED_ATTR):
                retry_baseline(trial)
            raise
        except Exception:
            if taken is not None and _finished_elsewhere(trial):
                taken.append(trial.number)
            raise
        if taken is not None and _finished_elsewhere(trial):
            taken.append(trial.number)
        return value

    return run


def run_trials(
    study: optuna.Study,
    function: TrialFunction,
    n_trials: int,
    max_consecutive_failures: int = 10,
) -> None:
    """Run trials until `n_trials` have finished in the whole study, alongside other workers.

    Raises:
        UserError: `max_consecutive_failures` trials of this worker failed in a row.
    """
    failures = 0

    def stop_when_claimed(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        nonlocal failures
        failures = failures + 1 if trial.state == TrialState.FAIL else 0
        c = counts(study)
        claimed = c[TrialState.COMPLETE] + c[TrialState.PRUNED] + c[TrialState.RUNNING]
        if failures >= max_consecutive_failures or (
            claimed >= n_trials and not c[TrialState.WAITING]
        ):
            study.stop()

    taken: list[int] = []
    wrapped = budgeted(function, n_trials, taken)
    while wait_for_others(study, n_trials):
        if failures >= max_consecutive_failures:
            raise UserError(
                f"{failures} trials failed in a row; see `hpo status` for their reasons"
            )
        try:
            study.optimize(wrapped, catch=(TrialFailure,), callbacks=[stop_when_claimed])
        except (ValueError, AssertionError, RuntimeError):
            # Optuna cannot record a trial that another worker failed meanwhile (this process
            # was stopped past storage.grace_period and its trial retried elsewhere).
            if not taken:
                raise
            log.warning(
                "trial %d was failed by another worker while this one was stopped; its result "
                "is discarded (the retry counts instead)",
                taken.pop(),
            )
    log.info("study %r has its %d finished trials", study.study_name, n_trials)


def wait_for_others(study: optuna.Study, n_trials: int, poll_s: float = 2.0) -> bool:
    """Wait while other workers finish the budget; True when a retry needs a worker again.

    Stale trials of dead workers are failed here (and re-enqueued by the retry callback), so a
    worker that outlives a crashed one picks its trial up.
    """
    while True:
        fail_stale_trials(study)
        c = counts(study)
        finished = c[TrialState.COMPLETE] + c[TrialState.PRUNED]
        if finished >= n_trials:
            return False
        if c[TrialState.WAITING] or finished + c[TrialState.RUNNING] < n_trials:
            return True
        log.debug("budget claimed by %d running trials; waiting", c[TrialState.RUNNING])
        time.sleep(poll_s)


def outlast_failed_job(
    study: optuna.Study, n_trials: int, stall_s: float, poll_s: float = 2.0
) -> int:
    """After a launched job failed: wait while the other jobs finish the budget.

    Returns the finished trials once the budget is met, or once nothing has run for `stall_s`
    (no RUNNING trial, no new finished one): the caller then reports the shortfall.
    """
    last, quiet_since = -1, time.monotonic()
    while True:
        fail_stale_trials(study)
        c = counts(study)
        finished = c[TrialState.COMPLETE] + c[TrialState.PRUNED]
        if finished >= n_trials:
            return finished
        if finished != last or c[TrialState.RUNNING]:
            last, quiet_since = finished, time.monotonic()
        elif time.monotonic() - quiet_since > stall_s:
            return finished
        time.sleep(poll_s)
