"""Where a trial runs: host and pid, plus the scheduler's job id when a scheduler started it.

Recorded in the trial's user attributes (per attempt: a retry records its own), so `hpo status`
can say which SLURM job to `scancel` or read the log of.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

WORKER_ATTR = "worker"
# SLURM's own names, lower-cased: the job (array jobs: this element's own id) and array index.
SLURM_ATTRS = {
    "SLURM_JOB_ID": "slurm_job_id",
    "SLURM_ARRAY_JOB_ID": "slurm_array_job_id",
    "SLURM_ARRAY_TASK_ID": "slurm_array_task_id",
}
PLACEMENT_ATTRS = frozenset({WORKER_ATTR, *SLURM_ATTRS.values()})


def placement(host: str | None = None) -> dict[str, str]:
    """`{"worker": "host:pid", "slurm_job_id": ..., "slurm_array_task_id": ...}`; the SLURM
    keys only when this process runs inside a SLURM job."""
    out = {WORKER_ATTR: f"{host or socket.gethostname()}:{os.getpid()}"}
    for env, attr in SLURM_ATTRS.items():
        value = os.environ.get(env)
        if value:
            out[attr] = value
    return out


def describe(attrs: Mapping[str, object]) -> str:
    """`host:pid`, with `slurm job J` (array jobs: `slurm job J = A_T`, the id `scancel`
    takes either way) when recorded."""
    where = str(attrs.get(WORKER_ATTR, "?"))
    job = attrs.get("slurm_job_id")
    if job is None:
        return where
    array, task = attrs.get("slurm_array_job_id"), attrs.get("slurm_array_task_id")
    return f"{where} slurm job {job}" + ("" if task is None else f" = {array}_{task}")
