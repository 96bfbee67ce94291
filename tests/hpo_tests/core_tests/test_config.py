"""Real Hydra composition of every config group, and bad inputs: one clear line, exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpo.cli.command import main
from tests.conftest import REPO, compose_run


@pytest.fixture(autouse=True)
def no_storage_url_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """These tests decide the storage URL themselves."""
    monkeypatch.delenv("HPO_STORAGE_URL", raising=False)


GROUPS = ["model", "task", "search_space", "storage", "sampler", "pruner", "experiment", "debug"]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "override", [f"{g}={name}" for g in GROUPS for name in _options(g)], ids=str
)
def test_every_config_group_option_composes_and_validates(
    override: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HPO_STORAGE_URL", "postgresql+psycopg://hpo@127.0.0.1:5432/hpo")
    cfg = compose_run(override)
    assert cfg.study.n_trials >= 1
    assert cfg.task.splits.validation >= 1


def test_every_group_has_at_least_one_option() -> None:
    assert all(_options(g) for g in GROUPS)


def test_smoke_experiment_overrides_the_defaults() -> None:
    cfg = compose_run("experiment=smoke")
    assert cfg.study.name == "smoke"
    assert cfg.task.name == "sentiment"
    assert cfg.task.splits.train == 16
    assert cfg.task.objective.fluency.enabled
    assert cfg.output_dir == "outputs/smoke"


def test_a_users_config_dir_adds_a_task(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "task").mkdir()
    src = (REPO / "conf" / "task" / "sycophancy.yaml").read_text()
    (tmp_path / "task" / "mine.yaml").write_text(src.replace("name: sycophancy", "name: mine"))
    assert main(["optimize", "--config-dir", str(tmp_path), "task=mine", "--cfg"]) == 0
    assert "name: mine" in capsys.readouterr().out


def _fail(args: list[str], capsys: pytest.CaptureFixture) -> str:
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture
def empty_jsonl(tmp_path: Path) -> Path:
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    return path


BAD_INPUTS = [
    (
        ["optimize", "task=nope"],
        r"unknown task 'nope'; choices: bbq, gsm8k, sentiment, sycophancy",
    ),
    (
        ["optimize", "search_space.layers.high=31"],
        r"layers must lie in \[0, 29\] for this model, got high=31",
    ),
    (["optimize", "search_space.alpha.low=2.0"], r"alpha.low <= high must hold, got low=2.0"),
    (["optimize", "task.columns.prompt=question"], r"column 'question'.*is missing"),
    (["optimize", "study.colour=red"], r"bad config: .*study.colour"),
    (["optimize", "storage.url=redis://127.0.0.1/0"], r"backend must be one of"),
    (["optimize", "study.n_trials=0"], r"study.n_trials must be >= 1, got 0"),
    (["optimize", "study.n_trials=many"], r"invalid config \(at study.n_trials\)"),
    (["optimize", "model.dtype=float8"], r"model.dtype must be one of .*got 'float8'"),
    (["optimize", "task.splits.train=500"], r"splits need train\+validation\+test=580 rows"),
    (
        ["optimize", "pruner=wilcoxon", "+pruner.n_startup_trials=3"],
        r"pruner optuna.pruners.WilcoxonPruner cannot be built from .*n_startup_trials",
    ),
    (["explode"], r"unknown verb 'explode'; verbs: optimize"),
    (["status", "storage=postgres"], r"this storage needs a URL: set HPO_STORAGE_URL"),
    (["generate", "bundle=/nonexistent/bundle", "prompt=hi"], r"does not exist"),
    (["generate", "bundle=/tmp"], r"needs prompt=.*prompts_file=PATH or replay=true"),
    (["status", "output_dir=/tmp/hpo-no-such-run"], r"no study named 'sycophancy'"),
]


@pytest.mark.parametrize(("args", "message"), BAD_INPUTS, ids=lambda a: str(a)[:60])
def test_bad_input_gives_one_clear_line_and_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    import re

    err = _fail(args, capsys)
    assert re.search(message, err), err


def test_empty_dataset_is_refused(empty_jsonl: Path, capsys: pytest.CaptureFixture) -> None:
    err = _fail(["optimize", f"task.source={empty_jsonl}"], capsys)
    assert "has no rows" in err


def test_every_bad_input_has_its_own_message(capsys: pytest.CaptureFixture) -> None:
    messages = set()
    for args, _ in BAD_INPUTS:
        main(args)
        messages.add(capsys.readouterr().err.strip())
    assert len(messages) == len(BAD_INPUTS)


def test_sentiment_task_splits_prompts_and_takes_pairs_from_their_own_file() -> None:
    from hpo.run.tasks import load_task

    cfg = compose_run("task=sentiment")
    splits = load_task(cfg.task)
    assert len(splits.train) == 40
    assert set(splits.train[0]) == {"prompt", "positive", "negative"}
    validation = {r["prompt"] for r in splits.validation}
    test = {r["prompt"] for r in splits.test()}
    assert len(validation) == 20
    assert len(test) == 40
    assert not validation & test
