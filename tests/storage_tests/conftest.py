"""A real PostgreSQL server for the storage tests: started as an unprivileged user on loopback,
on a temp data dir and a free port, stopped at the end of the session."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage import default_sqlite_url
from tests.pgserver import bindir, postgres_server


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """`postgresql+psycopg://hpo:<password>@127.0.0.1:<port>/postgres` of a fresh server."""
    found = bindir()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries are missing (.ci/run installs them)")
        pytest.skip("PostgreSQL server binaries not installed (apt-get install postgresql)")
    with postgres_server(found) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A storage URL on each real backend."""
    if request.param == "sqlite":
        return default_sqlite_url(tmp_path / "run")
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def study_name() -> str:
    """A study name no other test uses (the PostgreSQL server is shared by the session)."""
    return f"s-{uuid.uuid4().hex[:10]}"
