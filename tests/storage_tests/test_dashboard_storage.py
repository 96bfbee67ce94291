"""`hpo dashboard` serves a study and its artifacts from SQLite and from PostgreSQL."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
from optuna.artifacts import FileSystemArtifactStore, upload_artifact


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, deadline: float, proc: subprocess.Popen[str]) -> bytes:
    while True:
        try:
            return bytes(urllib.request.urlopen(url, timeout=5).read())
        except OSError:
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, f"no answer from {url}"
            time.sleep(0.5)


def serve_dashboard(
    url: str, name: str, output_dir: Path, *extra: str
) -> tuple[subprocess.Popen[str], str]:
    """`hpo dashboard` on study `name` at `url` (the password stays off argv), on a free port;
    returns the process and its base URL."""
    port = free_port()
    env = {**os.environ, "HPO_STORAGE_URL": url, "PYTHONUNBUFFERED": "1"}
    storage = "storage=postgres" if url.startswith("postgresql") else "storage=sqlite"
    args = [storage, f"study.name={name}", f"dashboard.port={port}", f"output_dir={output_dir}"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpo", "dashboard", *args, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    return proc, f"http://127.0.0.1:{port}"


def test_dashboard_serves_the_study_and_its_artifacts(
    any_url: str, study_name: str, tmp_path: Path
) -> None:
    (tmp_path / "run").mkdir(exist_ok=True)  # where the SQLite file of `any_url` goes
    study = optuna.create_study(study_name=study_name, storage=any_url, direction="maximize")
    trial = study.ask()
    trial.suggest_float("alpha", 0.0, 1.0)
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    csv = tmp_path / "scores.csv"
    csv.write_text("item,score\n0,0.5\n")
    artifact_id = upload_artifact(
        artifact_store=FileSystemArtifactStore(str(artifacts)),
        file_path=str(csv),
        study_or_trial=trial,
    )
    study.tell(trial, 0.5)
    proc, base = serve_dashboard(any_url, study_name, tmp_path, f"artifacts_dir={artifacts}")
    port = int(base.rsplit(":", 1)[1])
    try:
        deadline = time.monotonic() + 120
        summaries = json.loads(get(f"http://127.0.0.1:{port}/api/studies", deadline, proc))
        [summary] = [s for s in summaries["study_summaries"] if s["study_name"] == study_name]
        served = get(
            f"http://127.0.0.1:{port}/artifacts/{summary['study_id']}/{trial._trial_id}/"
            f"{artifact_id}",
            deadline,
            proc,
        )
        assert served == csv.read_bytes()
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    assert f"dashboard   http://127.0.0.1:{port}/dashboard/" in out
    assert "s3cret-pw" not in out  # the start line masks the password
