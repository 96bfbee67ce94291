"""What a study shows while it runs: the publisher the CLI hands to the trial loop.

After the baseline and after every trial that becomes the best so far it refreshes the study
note; a new best also uploads its artifacts (vector, per-item CSV, plot) for optuna-dashboard.
Failures are logged, never raised: publishing must not fail a trial.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import optuna

from hpo.core.config import RunConfig
from hpo.core.record import metric_label
from hpo.monitor.artifacts import artifact_store, is_best_so_far, upload_best
from hpo.monitor.note import refresh_note

if TYPE_CHECKING:
    from hpo.run.trial import TrialOutcome

log = logging.getLogger(__name__)


class Publisher:
    """Publishes trials of one study for optuna-dashboard (see the module docstring)."""

    def __init__(self, cfg: RunConfig) -> None:
        objective = cfg.task.objective
        self.label = metric_label(objective.kind, objective.scorer)
        self.artifacts_dir = cfg.artifacts_dir
        self._store: Any = None

    @property
    def store(self) -> Any:
        """The artifact store (None: no artifacts), created with its folder on first use, so a
        run refused before its first trial leaves no folder behind."""
        if self._store is None and self.artifacts_dir:
            self._store = artifact_store(self.artifacts_dir)
        return self._store

    def describe(self, study: optuna.Study) -> None:
        """Write a new study's note (model, task, space, how to export) for the dashboard."""
        refresh_note(study)

    def __call__(self, outcome: TrialOutcome) -> None:
        trial, result = outcome.trial, outcome.result
        study = trial.study
        if len(study.directions) != 1:
            return
        best = None
        if (
            not outcome.is_baseline
            and outcome.feasible
            and is_best_so_far(study, trial.number, result.value)
        ):
            best = {"number": trial.number, "value": result.value, "params": trial.params}
            if self.store is not None:
                try:
                    upload_best(
                        self.store,
                        trial,
                        outcome.vectors,
                        result,
                        outcome.prompts,
                        outcome.baseline_items,
                        self.label,
                    )
                except (OSError, ValueError, RuntimeError) as e:
                    log.warning("trial %d: artifacts not uploaded: %s", trial.number, e)
        if outcome.is_baseline or best is not None:
            refresh_note(study, best)
