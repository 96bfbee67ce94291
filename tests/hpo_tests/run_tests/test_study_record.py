"""A study recorded by an older version, before a config key existed, still admits workers."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpo.core.errors import UserError
from hpo.core.record import CONFIG_ATTR
from hpo.run.study import open_study
from tests.conftest import compose_run


@pytest.fixture(autouse=True)
def no_storage_url_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HPO_STORAGE_URL", raising=False)


def _older_study(out: Path) -> None:
    """A study whose stored record lacks the newest search-space keys."""
    study = open_study(compose_run("study.name=s", f"output_dir={out}"))
    record = study.user_attrs[CONFIG_ATTR]
    for key in ("layer_selection", "site", "head_ratio"):
        record["search_space"].pop(key, None)
    assert "layer_selection" not in record["search_space"]
    study.set_user_attr(CONFIG_ATTR, record)


def test_a_worker_with_the_new_keys_at_their_defaults_joins_an_older_study(
    tmp_path: Path,
) -> None:
    _older_study(tmp_path)
    study = open_study(compose_run("study.name=s", f"output_dir={tmp_path}"), create=False)
    assert study.study_name == "s"


def test_a_worker_that_changes_a_new_key_is_still_refused(tmp_path: Path) -> None:
    _older_study(tmp_path)
    cfg = compose_run(
        "study.name=s", f"output_dir={tmp_path}", "search_space.layer_selection.mode=enqueue"
    )
    with pytest.raises(UserError, match=r"search_space\.layer_selection\.mode: study has 'none'"):
        open_study(cfg, create=False)
