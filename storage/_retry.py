"""Retry a trial whose worker died (stale heartbeat), keeping its params and user attributes.

Like Optuna's `RetryHeartbeatStaleTrialCallback`, but the copy is enqueued through fixed params,
so a trial whose params lie outside the search space on purpose (the alpha = 0 baseline) is
retried too instead of failing the distribution check.
"""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo.core.placement import PLACEMENT_ATTRS
from hpo.core.record import DEVICE_ATTR, FAIL_REASON_ATTR

# Attributes that describe the dead attempt, not the trial to retry.
PER_ATTEMPT = {FAIL_REASON_ATTR, DEVICE_ATTR, *PLACEMENT_ATTRS}


class RetryStaleTrial:
    """Heartbeat-stale-trial callback: enqueue the same params at most `max_retry` times."""

    def __init__(self, max_retry: int | None = 2) -> None:
        self.max_retry = max_retry

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        history = list(trial.system_attrs.get("retry_history", []))
        if self.max_retry is not None and len(history) >= self.max_retry:
            return
        origin = trial.system_attrs.get("failed_trial", trial.number)
        study.add_trial(
            optuna.trial.create_trial(
                state=TrialState.WAITING,
                user_attrs={k: v for k, v in trial.user_attrs.items() if k not in PER_ATTEMPT},
                system_attrs={
                    # an enqueued trial may die before suggesting all its fixed params
                    "fixed_params": {**trial.system_attrs.get("fixed_params", {}), **trial.params},
                    "failed_trial": origin,
                    "retry_history": [*history, trial.number],
                },
            )
        )
