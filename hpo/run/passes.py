"""Several trials per batched pass (`study.trials_per_pass: k`).

A worker asks up to `k` trials at once (TPE's constant liar keeps them apart: each one asked
sees the others running), builds their plans, and scores them in one batched pass in which
every validation row appears once per trial and each row group carries its own trial's
steering (`hpo.run.worker.Worker.score_groups`). Each trial is then told, pruned and recorded
on its own, exactly as `hpo.run.budget.run_trials` does for one trial at a time:

- the exact budget holds: a worker asks no more trials than the budget has room for, and every
  asked trial still checks its claim before any work (`hpo.run.budget.check_claim`);
- a trial that fails (its plan cannot be built, its score is non-finite, it is over budget)
  fails alone; when the shared pass itself raises a `TrialFailure`, its trials are scored
  again one at a time, so only the one at fault fails;
- a pruned trial's rows finish the pass (the others' rows need the batch), and it is told
  PRUNED at its last reported value;
- every asked trial beats its own heartbeat, so a worker that dies mid-pass has all of its
  trials failed and retried by the others;
- trials the residual cache serves (`Worker.shares_pass` false) and trials with different
  prompts are scored in passes of their own.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.storages._heartbeat import get_heartbeat_thread
from optuna.trial import TrialState

from hpo.core.errors import TrialFailure, UserError
from hpo.core.record import (
    BASELINE_ATTR,
    PROMPTED_ATTR,
    format_params,
    record_failure,
    record_pass,
)
from hpo.run.budget import CLAIMING, OverBudget, check_claim, retry_baseline, wait_for_others
from hpo.run.trial import Timings, TrialRunner, TrialStart
from objectives import ScoreResult

log = logging.getLogger(__name__)


@dataclass
class _Asked:
    """One trial of a pass: its start, and the pruning its reporter latched."""

    trial: optuna.Trial
    start: TrialStart
    pruned: optuna.TrialPruned | None = None
    told: bool = field(default=False)

    def reporter(self, runner: TrialRunner) -> Any:
        """The trial's per-batch reporter, latched: once it prunes, the trial's rows still run
        with the pass, and it reports nothing more."""
        report = runner.reporter(self.trial, self.start.is_baseline)

        def latched(step: int, value: float, items: Mapping[int, float] | None = None) -> None:
            if self.pruned is not None:
                return
            try:
                report(step, value, items)
            except optuna.TrialPruned as e:
                self.pruned = e

        return latched


def _room(study: optuna.Study, n_trials: int, per_pass: int) -> int:
    """How many trials to ask now: at most `per_pass`, and no more than the budget has room
    for (at least one while a retry waits: its claim is checked when it runs)."""
    claimed = len(study.get_trials(deepcopy=False, states=CLAIMING))
    return max(1, min(per_pass, n_trials - claimed))


def run_passes(
    study: optuna.Study,
    runner: TrialRunner,
    n_trials: int,
    per_pass: int,
    max_consecutive_failures: int = 10,
) -> None:
    """Run trials `per_pass` at a time until `n_trials` have finished in the whole study,
    alongside other workers (see the module docstring).

    Raises:
        UserError: `max_consecutive_failures` trials of this worker failed in a row.
    """
    failures = 0
    while wait_for_others(study, n_trials):
        if failures >= max_consecutive_failures:
            raise UserError(
                f"{failures} trials failed in a row; see `hpo status` for their reasons"
            )
        for state in run_pass(study, runner, n_trials, _room(study, n_trials, per_pass)):
            failures = failures + 1 if state == TrialState.FAIL else 0
    log.info("study %r has its %d finished trials", study.study_name, n_trials)


def run_pass(
    study: optuna.Study, runner: TrialRunner, n_trials: int, size: int
) -> list[TrialState]:
    """Ask `size` trials, score them together and tell each; returns their states."""
    with warnings.catch_warnings():
        # Optuna warns that heartbeats are meant for `Study.optimize`; each trial here beats
        # its own (`get_heartbeat_thread`, as `Study.optimize` runs it).
        warnings.filterwarnings("ignore", message="Heartbeat of storage", category=UserWarning)
        trials = [study.ask() for _ in range(size)]
    states: dict[int, TrialState] = {}
    asked: list[_Asked] = []
    with ExitStack() as beats:
        for trial in trials:
            beat: Any = get_heartbeat_thread(trial._trial_id, study._storage)
            beats.enter_context(beat)
        try:
            for trial in trials:
                begun = _begin(study, runner, trial, n_trials)
                if isinstance(begun, str):
                    states[trial.number] = _fail(study, trial, begun)
                else:
                    asked.append(_Asked(trial, begun))
            for group in _groups(runner, asked):
                _score_and_tell(study, runner, group, states)
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM turned into one by the CLI
            reason = f"worker stopped ({str(e) or 'Ctrl-C'})"
            for trial in trials:
                if trial.number not in states:
                    _stopped(study, trial, reason)
            raise
        except Exception as e:
            for trial in trials:
                if trial.number not in states:
                    _fail(study, trial, f"{type(e).__name__}: {e}")
            raise
    return [states[t.number] for t in trials]


def _begin(
    study: optuna.Study, runner: TrialRunner, trial: optuna.Trial, n_trials: int
) -> TrialStart | str:
    """The trial's start, or why it fails before any work."""
    try:
        check_claim(study, trial.number, n_trials)
    except OverBudget as e:
        log.info("trial %d not run: %s (another worker won the race)", trial.number, e)
        return str(e)
    try:
        return runner.begin(trial)
    except TrialFailure as e:
        return str(e)


def _groups(runner: TrialRunner, asked: list[_Asked]) -> list[list[_Asked]]:
    """The passes to run: trials sharing one prepared split together (the references first in
    each), each trial the residual cache serves alone."""
    worker = runner.worker
    together: dict[int, list[_Asked]] = {}
    alone: list[list[_Asked]] = []
    ordered = sorted(asked, key=lambda a: (not a.start.is_baseline, a.trial.number))
    for a in ordered:
        if worker.shares_pass(a.start.plan):
            together.setdefault(id(a.start.prepared), []).append(a)
        else:
            alone.append([a])
    # Passes of reference trials alone first: both baselines are recorded before any steered
    # trial of these passes is (its deltas to each).
    groups = [*together.values(), *alone]
    return sorted(groups, key=lambda g: any(not a.start.is_baseline for a in g))


def _score_and_tell(
    study: optuna.Study,
    runner: TrialRunner,
    group: list[_Asked],
    states: dict[int, TrialState],
) -> None:
    """Score one group in one pass (one at a time when the pass fails) and tell each trial."""
    worker = runner.worker
    started = time.perf_counter()
    plans = [a.start.plan for a in group]
    try:
        results: list[ScoreResult | str] = list(
            worker.score_groups(
                plans, group[0].start.prepared, [a.reporter(runner) for a in group]
            )
        )
        seconds = [(time.perf_counter() - started) / len(group)] * len(group)
    except TrialFailure as e:
        if len(group) == 1:
            results, seconds = [str(e)], [time.perf_counter() - started]
        else:
            log.warning(
                "a pass of %d trials failed (%s): scoring them one at a time", len(group), e
            )
            for a in group:
                a.pruned = None
            results, seconds = [], []
            for a in group:
                one = time.perf_counter()
                try:
                    results.append(
                        worker.score(a.start.plan, a.start.prepared, a.reporter(runner))
                    )
                except TrialFailure as failure:
                    results.append(str(failure))
                seconds.append(time.perf_counter() - one)
    for a, result, score_s in zip(group, results, seconds, strict=True):
        trial = a.trial
        if isinstance(result, str):
            states[trial.number] = _fail(study, trial, result)
            continue
        if a.pruned is not None:
            log.info("trial %d: %s -> %s", trial.number, format_params(a.start.params), a.pruned)
            states[trial.number] = _tell(study, trial, state=TrialState.PRUNED)
            continue
        record_pass(trial, len(group))
        timings = Timings(a.start.built - a.start.started, score_s)
        try:
            values = runner.finish(trial, a.start, result, timings)
        except TrialFailure as e:
            states[trial.number] = _fail(study, trial, str(e))
            continue
        states[trial.number] = _tell(study, trial, values)


def _tell(
    study: optuna.Study,
    trial: optuna.Trial,
    values: float | tuple[float, ...] | None = None,
    state: TrialState = TrialState.COMPLETE,
) -> TrialState:
    """Tell Optuna; a trial another worker finished meanwhile (it failed this one as stale while
    this process was stopped) keeps that outcome, and its result here is discarded."""
    try:
        frozen = study.tell(trial, values if state == TrialState.COMPLETE else None, state=state)
    except (ValueError, RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
        current = study._storage.get_trial(trial._trial_id).state
        if not current.is_finished():
            raise
        log.warning(
            "trial %d was finished by another worker while this one ran it; its result is "
            "discarded (the retry counts instead)",
            trial.number,
        )
        return current
    return frozen.state


def _fail(study: optuna.Study, trial: optuna.Trial, reason: str) -> TrialState:
    """Fail one trial for `reason` (recorded for `hpo status`)."""
    record_failure(trial, reason)
    log.warning("trial %d failed: %s", trial.number, reason)
    return _tell(study, trial, state=TrialState.FAIL)


def _stopped(study: optuna.Study, trial: optuna.Trial, reason: str) -> None:
    """A trial the worker was stopped in: failed, and a reference trial enqueued again."""
    _fail(study, trial, reason)
    if trial.user_attrs.get(BASELINE_ATTR) or trial.user_attrs.get(PROMPTED_ATTR):
        retry_baseline(trial)
