"""How many workers one study holds: 8, 32 and 128 light workers (bench/scale_worker.py: the
real storage factory and trial loop, a 1 s objective, no model) on a real PostgreSQL with its
default max_connections (100; 97 for the non-superuser the workers log in as), directly and
through PgBouncer in transaction mode. Per run: workers refused at the ceiling, trials/s,
ask+tell latency p50/p99, peak server connections (pg_stat_activity), exact budget and 0 RUNNING
after kill -9 of 10% of the workers mid-run, memory per worker; then the latency with 1,000 and
10,000 trials already stored.

    python -m bench.scale [--quick]      (make bench) -> prints the table, rewrites BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import optuna
import psycopg
from sqlalchemy.engine import make_url

from bench import scale_worker
from bench.report import write_section
from hpo import StorageConfig
from storage import create_storage
from tests.pgbouncer import pgbouncer
from tests.pgserver import bindir, postgres_server

REPO = Path(__file__).resolve().parents[1]
SLEEP_S = 1.0
POOL = 20  # PgBouncer's server connections
ROLE, ROLE_PW = "worker", "worker-pw"


def conninfo(url: str) -> str:
    u = make_url(url)
    return (
        f"host={u.host} port={u.port} dbname={u.database} user={u.username} password={u.password}"
    )


@dataclass
class Row:
    setup: str
    workers: int
    stored: int
    refused: int
    trials_s: float
    p50_ms: float
    p99_ms: float
    peak_conns: int
    exact: bool
    running: int
    killed: int
    pss_mb: float
    rss_mb: float


def _memory_mb(pid: int) -> tuple[float, float] | None:
    """(PSS, RSS) of a process in MB; None when it exited meanwhile."""
    fields = {}
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    for line in text.splitlines()[1:]:
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0])
    return fields["Pss"] / 1024, fields["Rss"] / 1024


def _prefill(admin: psycopg.Connection, study_id: int, n: int) -> None:
    """`n` COMPLETE trials in one statement each (Optuna's schema; `add_trials` takes minutes)."""
    dist = optuna.distributions.distribution_to_json(optuna.distributions.FloatDistribution(0, 1))
    admin.execute(
        "INSERT INTO trials (number, study_id, state, datetime_start, datetime_complete) "
        "SELECT g, %s, 'COMPLETE', now(), now() FROM generate_series(0, %s) g",
        (study_id, n - 1),
    )
    admin.execute(
        "INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json) "
        "SELECT trial_id, 'x', random(), %s FROM trials WHERE study_id = %s",
        (dist, study_id),
    )
    admin.execute(
        "INSERT INTO trial_values (trial_id, objective, value, value_type) "
        "SELECT trial_id, 0, random(), 'FINITE' FROM trials WHERE study_id = %s",
        (study_id,),
    )


def _states(admin: psycopg.Connection, study_id: int) -> dict[str, int]:
    rows = admin.execute(
        "SELECT state::text, count(*) FROM trials WHERE study_id = %s GROUP BY state", (study_id,)
    ).fetchall()
    return {str(s): int(c) for s, c in rows}


def _running_pids(admin: psycopg.Connection, study_id: int) -> list[int]:
    rows = admin.execute(
        "SELECT a.value_json FROM trial_user_attributes a JOIN trials t USING (trial_id) "
        "WHERE t.study_id = %s AND t.state = 'RUNNING' AND a.key = 'pid'",
        (study_id,),
    ).fetchall()
    return [int(json.loads(r[0])) for r in rows]


def _server_conns(admin: psycopg.Connection) -> int:
    row = admin.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
        "AND usename = %s",
        (ROLE,),
    ).fetchone()
    return int(row[0]) if row else 0


def run(admin_url: str, url: str, setup: str, workers: int, new: int, stored: int = 0,
        kill: bool = True) -> Row:  # fmt: skip
    """One run: fork `workers` light workers on a fresh study, kill 10% halfway, collect."""
    name = f"scale-{uuid.uuid4().hex[:8]}"
    storage = create_storage(StorageConfig(), admin_url)
    study = optuna.create_study(study_name=name, storage=storage)
    study_id = study._study_id
    storage.engine.dispose()
    admin = psycopg.connect(conninfo(admin_url), autocommit=True)
    if stored:
        _prefill(admin, study_id, stored)
    out = Path(tempfile.mkdtemp(prefix="hpo-scale-"))
    budget = stored + new
    pids: list[int] = []
    started = time.perf_counter()
    for i in range(workers):
        pid = os.fork()
        if pid == 0:
            scale_worker.child(url, name, budget, SLEEP_S, setup == "pgbouncer", out / f"{i}")
        pids.append(pid)
    alive, killed, peak = set(pids), 0, 0
    memory: list[tuple[float, float]] = []
    deadline = started + 600
    while alive and time.perf_counter() < deadline:
        peak = max(peak, _server_conns(admin))
        states = _states(admin, study_id)
        done = states.get("COMPLETE", 0) - stored
        if not memory and done >= 1:
            sampled = (_memory_mb(p) for p in list(alive)[:16])
            memory = [m for m in sampled if m is not None]
        if kill and not killed and done >= new // 2:
            victims = [p for p in _running_pids(admin, study_id) if p in alive]
            for pid in victims[: math.ceil(workers / 10)]:
                os.kill(pid, signal.SIGKILL)
                killed += 1
        for pid in list(alive):
            if os.waitpid(pid, os.WNOHANG) != (0, 0):
                alive.discard(pid)
        time.sleep(0.25)
    for pid in alive:  # past the deadline: counted as not exact below
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    results = [json.loads(p.read_text()) for p in out.iterdir()]
    gaps = sorted(g * 1000 for r in results for g in r.get("gaps", []))
    errors = [r["error"] for r in results if "error" in r]
    if errors:
        print(f"  {len(errors)} workers failed, first: {errors[0]}")
    span = admin.execute(
        "SELECT extract(epoch FROM max(datetime_complete) - min(datetime_start)) FROM trials "
        "WHERE study_id = %s AND number >= %s AND state = 'COMPLETE'",
        (study_id, stored),
    ).fetchone()
    states = _states(admin, study_id)
    admin.close()
    pct = (lambda q: gaps[min(len(gaps) - 1, int(q * len(gaps)))]) if gaps else (lambda q: 0.0)
    return Row(
        setup=setup,
        workers=workers,
        stored=stored,
        refused=sum(1 for r in results if "refused" in r),
        trials_s=new / float(span[0]) if span and span[0] else 0.0,
        p50_ms=statistics.median(gaps) if gaps else 0.0,
        p99_ms=pct(0.99),
        peak_conns=peak,
        exact=states.get("COMPLETE", 0) == budget and not alive,
        running=states.get("RUNNING", 0),
        killed=killed,
        pss_mb=statistics.mean(m[0] for m in memory) if memory else 0.0,
        rss_mb=statistics.mean(m[1] for m in memory) if memory else 0.0,
    )


def _role(admin_url: str) -> str:
    """The URL of a non-superuser (97 of 100 slots, like a real deployment's workers)."""
    storage = create_storage(StorageConfig(), admin_url)  # creates Optuna's tables
    storage.engine.dispose()
    with psycopg.connect(conninfo(admin_url), autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{ROLE_PW}'")
        admin.execute(f"GRANT ALL ON SCHEMA public TO {ROLE}")
        admin.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {ROLE}")
        admin.execute(f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {ROLE}")
    u = make_url(admin_url)
    return u.set(username=ROLE, password=ROLE_PW).render_as_string(hide_password=False)


def table(rows: list[Row]) -> str:
    head = (
        "| setup | workers | trials stored | refused at start | trials/s | ask+tell p50 ms | "
        "p99 ms | peak server conns | budget exact | RUNNING after kill -9 of 10% | PSS MB |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [
        f"| {r.setup} | {r.workers} | {r.stored} | {r.refused} | {r.trials_s:.1f} | "
        f"{r.p50_ms:.0f} | {r.p99_ms:.0f} | {r.peak_conns} | {'yes' if r.exact else 'NO'} | "
        f"{r.running} ({r.killed} killed) | {r.pss_mb:.0f} |"
        for r in rows
    ]
    return "\n".join([head, *lines])


def main(quick: bool = False) -> None:
    """Run every size on both setups; print the table; rewrite BENCHMARKS.md (full run)."""
    found = bindir()
    if found is None:
        raise ModuleNotFoundError("PostgreSQL server binaries (tests/system_deps.sh)")
    sizes = (4, 8) if quick else (8, 32, 128)
    stored = (100, 1000) if quick else (1000, 10000)
    rows: list[Row] = []
    started = time.perf_counter()
    with postgres_server(found) as admin_url:
        direct = _role(admin_url)
        with pgbouncer(direct, pool_size=POOL) as pooled:
            for setup, url in (("direct", direct), ("pgbouncer", pooled)):
                for n in sizes:
                    rows.append(run(admin_url, url, setup, n, new=max(40, 3 * n)))
                    print(table(rows[-1:]).splitlines()[-1], flush=True)
                for s in stored:
                    rows.append(run(admin_url, url, setup, 8, new=40, stored=s, kill=False))
                    print(table(rows[-1:]).splitlines()[-1], flush=True)
    text = table(rows)
    rss = max(r.rss_mb for r in rows)
    pss = max(r.pss_mb for r in rows)
    body = (
        f"{text}\n\nLight workers (no model) forked after the imports: PSS at most {pss:.0f} MB "
        f"each, RSS {rss:.0f} MB (shared pages counted whole). PostgreSQL 15 at its default "
        f"max_connections=100, workers logged in as a non-superuser (97 slots); PgBouncer "
        f"{POOL} server connections, transaction mode, `storage.pooler=true`. Each worker: "
        "RandomSampler, a 1 s objective that reports once, heartbeat every 2 s (grace 6 s); "
        "ask+tell = objective end to the next objective start (tell, budget check, ask). "
        f"Whole run {time.perf_counter() - started:.0f} s on 2 shared cores. Light workers "
        "share those cores, so trials/s and latency there measure the CPU more than the "
        "database; refused, server connections, exact budget and RUNNING measure the setup."
    )
    print(body)
    if not quick:
        write_section(REPO / "BENCHMARKS.md", "scale", "Scale: workers per study", body)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="4 and 8 workers only")
    main(parser.parse_args().quick)
