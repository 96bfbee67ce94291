"""The server's connection ceiling on a real PostgreSQL: a full server stops a worker with one
line naming max_connections before it claims a trial, and workers through PgBouncer in
transaction mode share a study within a few server connections, a killed one losing only its
running trial."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import optuna
import psycopg
import pytest
from optuna.trial import TrialState
from sqlalchemy.engine import make_url

from hpo import StorageConfig
from storage import create_storage
from tests.conftest import REPO
from tests.pgbouncer import installed, pgbouncer
from tests.pgserver import bindir, postgres_server
from tests.storage_tests.test_workers import new_study, states

pytestmark = pytest.mark.slow


def libpq(url: str) -> str:
    """The psycopg conninfo of a SQLAlchemy URL."""
    u = make_url(url)
    return (
        f"host={u.host} port={u.port} dbname={u.database} user={u.username} password={u.password}"
    )


def server_connections(url: str) -> int:
    """Client backends on the server other than this query's own."""
    with psycopg.connect(libpq(url)) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
            "AND pid <> pg_backend_pid()"
        ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def small_server() -> Iterator[str]:
    found = bindir()
    if found is None:
        pytest.skip("PostgreSQL server binaries not installed (tests/system_deps.sh)")
    with postgres_server(found, max_connections=6) as url:
        yield url


def test_a_full_server_stops_the_worker_with_one_line_naming_max_connections(
    small_server: str, study_name: str
) -> None:
    storage = create_storage(StorageConfig(), small_server)
    study = optuna.create_study(study_name=study_name, storage=storage)
    for x in (0.1, 0.2, 0.3):
        study.add_trial(optuna.trial.create_trial(params={"x": x}, distributions={
            "x": optuna.distributions.FloatDistribution(0, 1)}, value=x))  # fmt: skip
    storage.engine.dispose()
    held = []
    try:
        while True:  # every slot taken, as by other workers
            held.append(psycopg.connect(libpq(small_server)))
    except psycopg.OperationalError as e:
        assert "too many clients" in str(e)
    env = {**os.environ, "HPO_STORAGE_URL": small_server}
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "hpo", "worker", "experiment=smoke", "storage=postgres",
             f"study.name={study_name}"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        for conn in held:
            conn.close()
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "max_connections" in lines[0] and "needs 2 connections" in lines[0]
    assert "pooler" in lines[0] and "s3cret" not in lines[0]
    again = optuna.load_study(study_name=study_name, storage=small_server)
    assert len(again.get_trials(states=(TrialState.COMPLETE,))) == 3


@pytest.mark.skipif(not installed(), reason="pgbouncer not installed (tests/system_deps.sh)")
def test_workers_through_pgbouncer_share_a_study_in_few_server_connections(
    postgres_url: str, study_name: str
) -> None:
    with pgbouncer(postgres_url, pool_size=3) as url:
        study = new_study(postgres_url, study_name)
        before = server_connections(postgres_url)  # this test's own and other tests'

        env = {**os.environ, "HPO_STORAGE_URL": url}
        procs = {}
        for _ in range(8):
            p = subprocess.Popen(
                [sys.executable, "-m", "tests.storage_tests.trivial_worker", study_name, "24",
                 "1.0", "pooler"],
                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            )  # fmt: skip
            procs[p.pid] = p
        deadline = time.monotonic() + 300  # eight imports at once on a loaded 2-core machine
        while True:
            running = study.get_trials(states=(TrialState.RUNNING,))
            pids = [t.user_attrs["pid"] for t in running if "pid" in t.user_attrs]
            if len(pids) >= 2:
                break
            assert time.monotonic() < deadline, "workers did not start"
            assert all(p.poll() is None for p in procs.values())
            time.sleep(0.1)
        os.kill(pids[0], signal.SIGKILL)
        procs.pop(pids[0]).wait()
        peak = 0
        for p in procs.values():
            while p.poll() is None:
                peak = max(peak, server_connections(postgres_url) - before)
                time.sleep(0.2)
            out = p.stdout.read() if p.stdout else ""
            assert p.returncode == 0, out
        assert peak <= 3
        c = states(study)
        assert c[TrialState.COMPLETE] == 24
        assert c[TrialState.RUNNING] == c[TrialState.WAITING] == 0
        failed = study.get_trials(states=(TrialState.FAIL,))
        lost = [t for t in failed if not t.user_attrs.get("fail_reason", "").startswith("over")]
        assert len(lost) == 1  # the killed worker's trial, retried with its params
        retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == lost[0].number]
        assert [t.params for t in retry] == [lost[0].params]
