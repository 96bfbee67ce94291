"""Named metrics of a trial: each needs a known or declared direction, once."""

from __future__ import annotations

import pytest

from hpo import ObjectiveConfig, UserError
from hpo.core.objective_metrics import study_metrics


def test_metric_names_need_a_known_or_declared_direction() -> None:
    objective = ObjectiveConfig(metrics=["accuracy", "tokens", "agreement:minimize"])
    assert [(m.name, m.direction) for m in study_metrics(objective)] == [
        ("accuracy", "maximize"),
        ("tokens", "minimize"),
        ("agreement", "minimize"),
    ]
    with pytest.raises(UserError, match="'agreement' has no known direction"):
        study_metrics(ObjectiveConfig(metrics=["score", "agreement"]))
    with pytest.raises(UserError, match="must not repeat a name, got 'kl' twice"):
        study_metrics(ObjectiveConfig(metrics=["kl", "kl"]))
    with pytest.raises(UserError, match="direction of 'kl' must be one of"):
        study_metrics(ObjectiveConfig(metrics=["kl:lower"]))
