"""Passwords are masked however the URL is written: parsed, never matched by a pattern."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpo import UserError
from hpo.core.config import StorageConfig
from storage import create_storage, mask_url, parse_url, sqlite_path


@pytest.mark.parametrize(
    ("url", "masked", "secret"),
    [
        (
            "postgresql+psycopg://bob:hunter2@db:5432/hpo",
            "postgresql+psycopg://bob:***@db:5432/hpo",
            "hunter2",
        ),
        ("postgresql://bob:se@cret@db/hpo", "postgresql://bob:***@db/hpo", "cret"),
        ("postgresql://bob:a:b:c@db/hpo", "postgresql://bob:***@db/hpo", "b:c"),
        ("postgresql://bob:pa/ss@db/hpo", "postgresql://bob:***@db/hpo", "ss"),
        ("postgresql://bob:p%40ss@db/hpo", "postgresql://bob:***@db/hpo", "p%40ss"),
        (
            "postgresql://db/hpo?user=bob&password=hunter2",
            "postgresql://db/hpo?user=bob&password=***",
            "hunter2",
        ),
        ("postgresql://bob@db/hpo", "postgresql://bob@db/hpo", None),
        ("sqlite:////tmp/a@b/study.db", "sqlite:////tmp/a@b/study.db", None),
    ],
)
def test_the_password_never_survives_masking(url: str, masked: str, secret: str | None) -> None:
    assert mask_url(url) == masked
    if secret is not None:
        assert secret not in mask_url(url)


def test_an_unencoded_at_in_the_password_is_refused_before_connecting() -> None:
    with pytest.raises(UserError, match="password must be percent-encoded") as info:
        parse_url("postgresql+psycopg://bob:se@cret@127.0.0.1:1/hpo")
    assert "cret" not in str(info.value)


def test_a_sqlite_folder_blocked_by_a_file_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UserError, match="a file is in the way: not a directory"):
        create_storage(StorageConfig(), f"sqlite:///{tmp_path / 'afile' / 'study.db'}")
    assert (tmp_path / "afile").read_text() == "x"


def test_sqlite_path_reads_plain_and_uri_urls(tmp_path: Path) -> None:
    db = tmp_path / "study.db"
    assert sqlite_path(f"sqlite:///{db}") == db
    assert sqlite_path(f"sqlite:///file:{db}?mode=ro&uri=true") == db
    assert sqlite_path("sqlite:///:memory:") is None
    assert sqlite_path("postgresql://bob@db/hpo") is None
