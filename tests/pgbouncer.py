"""Start a throwaway PgBouncer in transaction mode on loopback in front of a PostgreSQL URL
(tests, bench/scale.py): many client connections, at most `pool_size` server connections."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.engine import make_url


def installed() -> bool:
    """Whether the `pgbouncer` program is installed."""
    return shutil.which("pgbouncer", path="/usr/sbin:/usr/bin") is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def pgbouncer(server_url: str, pool_size: int = 20, max_clients: int = 2000) -> Iterator[str]:
    """Yield the URL of a PgBouncer (same user, password and database) in front of
    `server_url`; stop it on exit."""
    url = make_url(server_url)
    root = Path(tempfile.mkdtemp(prefix="hpo-pgbouncer-", dir="/tmp"))
    port = _free_port()
    (root / "userlist.txt").write_text(f'"{url.username}" "{url.password}"\n')
    (root / "pgbouncer.ini").write_text(
        f"""[databases]
{url.database} = host={url.host} port={url.port} dbname={url.database}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {root / "userlist.txt"}
pool_mode = transaction
default_pool_size = {pool_size}
max_client_conn = {max_clients}
max_db_connections = {pool_size}
ignore_startup_parameters = extra_float_digits,options
logfile = {root / "pgbouncer.log"}
"""
    )
    as_root = os.geteuid() == 0
    if as_root:  # PgBouncer refuses to run as root
        for path in (root, root / "userlist.txt", root / "pgbouncer.ini"):
            shutil.chown(path, "postgres", "postgres")
    proc = subprocess.Popen(
        ["pgbouncer", str(root / "pgbouncer.ini")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        user="postgres" if as_root else None,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                log = root / "pgbouncer.log"
                raise RuntimeError(f"pgbouncer did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield url.set(port=port).render_as_string(hide_password=False)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(root, ignore_errors=True)
