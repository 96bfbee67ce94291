"""Running beyond one machine: the SLURM launcher config composes, `hpo worker -m` runs jobs
through a Hydra launcher, and the Kubernetes Job of docs/cluster.md runs `hpo worker` against
PostgreSQL."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest
import yaml
from hydra import compose, initialize_config_module
from optuna.trial import TrialState

from hpo.cli.command import main
from tests.conftest import doc_text, tiny_overrides


@pytest.mark.parametrize("launcher", ["submitit_slurm", "slurm_gpu", "slurm_cpu"])
def test_the_slurm_launcher_config_composes(launcher: str) -> None:
    with initialize_config_module(config_module="conf", version_base="1.3"):
        cfg = compose(
            config_name="hpo",
            overrides=[f"hydra/launcher={launcher}", "storage=postgres"],
            return_hydra_config=True,
        )
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    if launcher == "slurm_gpu":
        assert cfg.hydra.launcher.gpus_per_node == 1
    if launcher == "slurm_cpu":
        assert cfg.hydra.launcher.gpus_per_node is None and cfg.hydra.launcher.mem_gb == 4


def test_worker_multirun_runs_one_job_per_rank(tiny_model_dir: Path, tmp_path: Path) -> None:
    common = tiny_overrides(tiny_model_dir, tmp_path)
    assert main(["optimize", *common, "study.n_trials=2", "export.enabled=false"]) == 0
    sweep = [f"hydra.sweep.dir={tmp_path / 'multirun'}", "worker_rank=0,1", "study.n_trials=5"]
    assert main(["worker", "-m", *common, *sweep]) == 0
    study = optuna.load_study(study_name="sycophancy", storage=f"sqlite:///{tmp_path}/study.db")
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 5
    workers = {t.user_attrs["worker"] for t in study.trials}
    assert len(workers) == 1  # the basic launcher runs the jobs in this process, one after another


def test_readme_kubernetes_job_runs_hpo_worker_with_the_url_from_a_secret() -> None:
    block = re.search(r"```yaml\n(apiVersion: batch/v1.*?)```", doc_text(), re.S)
    assert block, "docs/cluster.md has a Kubernetes Job example"
    job = yaml.safe_load(block.group(1))
    assert job["kind"] == "Job"
    spec = job["spec"]
    assert spec["parallelism"] == spec["completions"]
    container = spec["template"]["spec"]["containers"][0]
    assert container["command"][:2] == ["hpo", "worker"]
    env = {e["name"]: e for e in container["env"]}
    assert "secretKeyRef" in env["HPO_STORAGE_URL"]["valueFrom"]
