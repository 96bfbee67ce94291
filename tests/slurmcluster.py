"""Start a throwaway single-node SLURM cluster on loopback (tests): munge, MariaDB, slurmdbd,
slurmctld and slurmd, every file under one temp directory, every port free and on 127.0.0.1.

Accounting (slurmdbd on MariaDB) is not optional: without it `sacct` fails and submitit's
`job.result()` waits forever on a job that died before writing its result. Every daemon runs in
the foreground as a child of this process and carries a marker in its environment, so `leftovers`
finds anything of this cluster still alive (a job step, a daemon) after it stopped. No pid file is
written outside the temp directory: Debian's slurmctld scripts `scancel` when a stale
`/run/slurmctld.pid` exists.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

MARKER = "HPO_SLURM_CLUSTER"
DB_PASSWORD = "slurm-db-pw"
DAEMONS = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd")
NODE = "localhost"


def missing() -> list[str]:
    """The programs this cluster needs that are not installed (empty: it can start)."""
    tools = [*DAEMONS, "mungekey", "mariadb-install-db", "mariadb", "sbatch", "sacctmgr"]
    return [t for t in tools if shutil.which(t, path="/usr/sbin:/usr/bin:/sbin:/bin") is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class SlurmCluster:
    """A running cluster: `env` (SLURM_CONF and the marker) is what a client process needs."""

    root: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def run(self, *cmd: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """A SLURM client command (`squeue`, `scancel`, ...) against this cluster."""
        return subprocess.run(
            list(cmd), env=self.env, capture_output=True, text=True, timeout=timeout, check=True
        )

    def jobs(self) -> list[str]:
        """Ids of the jobs the controller still knows as pending or running."""
        out = self.run("squeue", "-h", "-o", "%i").stdout
        return [line.strip() for line in out.splitlines() if line.strip()]

    def log(self, name: str) -> str:
        """A daemon's log file (for assertion messages)."""
        path = self.root / "log" / f"{name}.log"
        if not path.exists():
            path = self.root / "log" / f"{name}.out"
        return path.read_text(errors="replace") if path.exists() else ""


def leftovers(root: Path) -> list[str]:
    """`pid cmdline` of every process whose environment carries this cluster's marker."""
    found = []
    needle = f"{MARKER}={root}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if needle not in (proc / "environ").read_bytes().split(b"\0"):
                continue
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue  # gone meanwhile, or not ours to read
        found.append(f"{proc.name} {cmd.strip()}")
    return found


def _wait_for(
    what: str, check: Callable[[], bool], cluster: SlurmCluster, timeout: float = 60
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (subprocess.SubprocessError, OSError):
            pass
        for name, proc in cluster.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}: {cluster.log(name)}")
        if time.monotonic() > deadline:
            logs = "\n".join(f"--- {n}\n{cluster.log(n)[-2000:]}" for n in cluster.procs)
            raise RuntimeError(f"SLURM test cluster: {what} not ready after {timeout}s\n{logs}")
        time.sleep(0.3)


def _write(path: Path, text: str, owner: str | None = None, mode: int = 0o644) -> None:
    path.write_text(text)
    path.chmod(mode)
    if owner:
        shutil.chown(path, owner, owner)


def _configs(root: Path, ports: dict[str, int]) -> None:
    munge = f"socket={root / 'munge' / 'munge.socket'}"
    _write(
        root / "etc" / "slurmdbd.conf",
        f"""AuthType=auth/munge
AuthInfo={munge}
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort={ports["dbd"]}
SlurmUser=slurm
PidFile={root / "run" / "slurmdbd.pid"}
LogFile={root / "log" / "slurmdbd.log"}
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort={ports["db"]}
StorageUser=slurm
StoragePass={DB_PASSWORD}
StorageLoc=slurm_acct_db
""",
        owner="slurm",
        mode=0o600,
    )
    _write(
        root / "etc" / "slurm.conf",
        f"""ClusterName=hpotest
SlurmctldHost={NODE}(127.0.0.1)
SlurmctldPort={ports["ctld"]}
SlurmdPort={ports["slurmd"]}
SlurmUser=slurm
AuthType=auth/munge
AuthInfo={munge}
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root / "spool" / "%n"}
SlurmctldPidFile={root / "run" / "slurmctld.pid"}
SlurmdPidFile={root / "run" / "slurmd.pid"}
SlurmctldLogFile={root / "log" / "slurmctld.log"}
SlurmdLogFile={root / "log" / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort={ports["dbd"]}
AccountingStoragePass={root / "munge" / "munge.socket"}
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
KillWait=5
MinJobAge=2
InactiveLimit=0
SchedulerParameters=defer_batch
NodeName={NODE} NodeAddr=127.0.0.1 CPUs=4 RealMemory=16000 State=UNKNOWN
PartitionName=debug Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
""",
    )


def _start(cluster: SlurmCluster, name: str, cmd: list[str], user: str | None = None) -> None:
    log = (cluster.root / "log" / f"{name}.out").open("wb")
    cluster.procs[name] = subprocess.Popen(
        cmd,
        env=cluster.env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        user=user,
        group=user,
    )
    log.close()


def _database(cluster: SlurmCluster, ports: dict[str, int]) -> None:
    root = cluster.root
    data, sock = root / "mysql", root / "mysqlrun" / "mysql.sock"
    subprocess.run(
        ["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=mysql",
         "--auth-root-authentication-method=normal", "--skip-test-db"],
        check=True, capture_output=True, env=cluster.env,
    )  # fmt: skip
    _start(
        cluster,
        "mariadbd",
        ["mariadbd", "--no-defaults", f"--datadir={data}", f"--socket={sock}",
         f"--port={ports['db']}", "--bind-address=127.0.0.1", "--user=mysql",
         f"--pid-file={root / 'mysqlrun' / 'mariadb.pid'}", "--skip-name-resolve",
         f"--log-error={root / 'log' / 'mariadbd.log'}", "--innodb-buffer-pool-size=32M"],
    )  # fmt: skip
    sql = (
        f"CREATE USER 'slurm'@'%' IDENTIFIED BY '{DB_PASSWORD}'; "
        "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'%';"
    )
    client = ["mariadb", "--no-defaults", f"--socket={sock}", "-u", "root"]

    def up() -> bool:
        return subprocess.run([*client, "-e", "SELECT 1"], capture_output=True).returncode == 0

    _wait_for("MariaDB", up, cluster)
    subprocess.run([*client, "-e", sql], check=True, capture_output=True)


@contextmanager
def slurm_cluster() -> Iterator[SlurmCluster]:
    """Yield a running cluster with one idle node (4 CPUs); stop and remove it all on exit."""
    root = Path(tempfile.mkdtemp(prefix="hpo-slurm-", dir="/tmp"))
    root.chmod(0o755)
    for sub in ("etc", "log", "run", "state", "spool", "munge", "mysqlrun", "jobs"):
        (root / sub).mkdir()
    shutil.chown(root / "mysqlrun", "mysql", "mysql")
    for sub in ("state", "spool", "log", "run"):
        shutil.chown(root / sub, "slurm", "slurm")
    (root / "log").chmod(0o777)
    shutil.chown(root / "munge", "munge", "munge")
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "SLURM_CONF": str(root / "etc" / "slurm.conf"),
        MARKER: str(root),
    }
    cluster = SlurmCluster(root, env)
    ports = {k: _free_port() for k in ("db", "dbd", "ctld", "slurmd")}
    _configs(root, ports)
    try:
        key = root / "munge" / "munge.key"
        subprocess.run(
            ["mungekey", "--create", f"--keyfile={key}"],
            check=True, capture_output=True, user="munge", group="munge",
        )  # fmt: skip
        _start(
            cluster,
            "munged",
            ["munged", "--foreground", "--force",
             f"--socket={root / 'munge' / 'munge.socket'}", f"--key-file={key}",
             f"--pid-file={root / 'munge' / 'munged.pid'}",
             f"--seed-file={root / 'munge' / 'munged.seed'}",
             f"--log-file={root / 'log' / 'munged.log'}"],
            user="munge",
        )  # fmt: skip
        _wait_for("munged", (root / "munge" / "munge.socket").exists, cluster)
        _database(cluster, ports)
        # slurmdbd reads slurmdbd.conf beside $SLURM_CONF
        _start(cluster, "slurmdbd", ["slurmdbd", "-D"])
        _wait_for(
            "slurmdbd",
            lambda: cluster.run("sacctmgr", "-i", "add", "cluster", "hpotest").returncode == 0,
            cluster,
        )
        _start(cluster, "slurmctld", ["slurmctld", "-D", "-i"])
        _start(cluster, "slurmd", ["slurmd", "-D", "-N", NODE])
        _wait_for(
            "an idle node",
            lambda: cluster.run("sinfo", "-h", "-o", "%t").stdout.strip() == "idle",
            cluster,
        )
        yield cluster
    finally:
        _stop(cluster)
        shutil.rmtree(root, ignore_errors=True)


def _stop(cluster: SlurmCluster) -> None:
    """Cancel every job, stop the daemons (last started first), kill anything left."""
    if "slurmctld" in cluster.procs and cluster.procs["slurmctld"].poll() is None:
        try:
            cluster.run("scancel", "--full", "--user=root", "--signal=KILL", timeout=20)
            deadline = time.monotonic() + 30
            while cluster.jobs() and time.monotonic() < deadline:
                time.sleep(0.5)
        except (subprocess.SubprocessError, OSError):
            pass
    names = list(reversed(cluster.procs))
    # slurmd and slurmctld first (they report to slurmdbd, which needs the database and munge)
    for group in (names[:2], names[2:]):
        for name in group:
            if cluster.procs[name].poll() is None:
                os.killpg(cluster.procs[name].pid, signal.SIGTERM)
        for name in group:
            _reap(cluster.procs[name])
    for line in leftovers(cluster.root):
        with suppress(ProcessLookupError):
            os.kill(int(line.split()[0]), signal.SIGKILL)


def _reap(proc: subprocess.Popen[bytes]) -> None:
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
