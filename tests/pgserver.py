"""Start a throwaway PostgreSQL server on loopback as an unprivileged user (tests, benchmarks)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PG_PASSWORD = "s3cret-pw"


def bindir() -> Path | None:
    """Directory of `initdb` / `pg_ctl`, or None when PostgreSQL is not installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def postgres_server(bin_dir: Path, max_connections: int = 100) -> Iterator[str]:
    """Yield `postgresql+psycopg://hpo:<password>@127.0.0.1:<port>/postgres`; stop on exit."""
    root = Path(tempfile.mkdtemp(prefix="hpo-pg-", dir="/tmp"))
    as_root = os.geteuid() == 0
    run_as = ["runuser", "-u", "postgres", "--"] if as_root else []
    (root / "pw").write_text(PG_PASSWORD + "\n")
    if as_root:  # the server refuses to run as root
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(root / "pw", "postgres", "postgres")
    data, port = root / "data", _free_port()
    subprocess.run(
        [*run_as, str(bin_dir / "initdb"), "-D", str(data), "-U", "hpo",
         f"--pwfile={root / 'pw'}", "-A", "scram-sha-256"],
        check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        [*run_as, str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w",
         "-o", f"-p {port} -h 127.0.0.1 -k {root} -c max_connections={max_connections}", "start"],
        check=True, capture_output=True,
    )  # fmt: skip
    try:
        yield f"postgresql+psycopg://hpo:{PG_PASSWORD}@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*run_as, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
        )
        shutil.rmtree(root, ignore_errors=True)
