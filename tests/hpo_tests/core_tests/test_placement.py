"""Where a trial runs: host and pid, and SLURM's job ids when a SLURM job started the worker."""

from __future__ import annotations

import os
import socket

import pytest

from hpo.core.placement import describe, placement
from storage._retry import PER_ATTEMPT


def test_outside_slurm_only_host_and_pid_are_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(var, raising=False)
    attrs = placement()
    assert attrs == {"worker": f"{socket.gethostname()}:{os.getpid()}"}
    assert describe(attrs) == attrs["worker"]


def test_inside_a_slurm_array_job_the_ids_are_recorded_and_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "12")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "11")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    attrs = placement("node3")
    assert attrs["slurm_job_id"] == "12" and attrs["slurm_array_task_id"] == "1"
    assert describe(attrs) == f"node3:{os.getpid()} slurm job 12 = 11_1"
    assert set(attrs) <= PER_ATTEMPT  # a retry records its own placement, not the dead one's


def test_a_plain_slurm_job_shows_its_id_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "40")
    assert describe(placement("n")).endswith("slurm job 40")
