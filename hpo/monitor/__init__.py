"""Watching a study: the report (plots), `hpo status`, optuna-dashboard, the study note, the
best trials' artifacts, and the publisher the CLI hands to the trial loop. Reads studies
through `hpo.core.record` only."""
