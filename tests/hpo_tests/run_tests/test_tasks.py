"""Tasks are data: a user's own task (jsonl / csv / parquet) from their own config dir runs a
real study; bad data is refused with one line naming the rule and the value (exit 2); the seed
000 experiment (Qwen2.5-Math-7B, layers 18-27) composes and runs with the tiny model swapped in."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from optuna.trial import TrialState

from hpo.cli.command import main
from hpo.run.study import check_config, open_study, prepare_worker, run_trials
from hpo.run.tasks import load_task
from tests.conftest import compose_run, tiny_overrides

ROWS = [
    {"question": f"What is {a} plus {b}?", "answer": str(a + b)} for a in range(10) for b in (2, 3)
]

USER_TASK = """
name: mine
description: my own arithmetic questions, answered exactly
source: {source}
columns:
  prompt: question
  answer: answer
prompt_template: "Q: {{prompt}}\\nA:"
chat_template: false
answer_prefix: ""
splits: {{train: 4, validation: 3, test: 3, seed: 1}}
objective:
  kind: generation
  scorer: exact
  direction: maximize
  balance: none
  batch_size: 4
  max_new_tokens: 4
  stop: ["\\n"]
"""


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """`main` points the root logger at this test's captured stderr; undo that afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _write(rows: list[dict[str, str]], path: Path) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        import datasets

        ds = datasets.Dataset.from_list(rows)
        ds.to_csv(str(path)) if path.suffix == ".csv" else ds.to_parquet(str(path))
    return path


def _user_dir(tmp_path: Path, source: Path) -> Path:
    conf = tmp_path / "my_conf"
    (conf / "task").mkdir(parents=True)
    (conf / "task" / "mine.yaml").write_text(USER_TASK.format(source=source))
    return conf


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_a_users_task_reads_jsonl_csv_and_parquet(suffix: str, tmp_path: Path) -> None:
    conf = _user_dir(tmp_path, _write(ROWS, tmp_path / f"qa{suffix}"))
    cfg = compose_run(f"hydra.searchpath=[file://{conf}]", "task=mine")
    splits = load_task(cfg.task)
    assert (len(splits.train), len(splits.validation), len(splits.test())) == (4, 3, 3)
    answers = {r["question"]: r["answer"] for r in ROWS}
    for row in splits.validation + splits.test():
        assert str(row["answer"]) == answers[row["question"]]


def test_a_users_task_in_their_config_dir_runs_a_study(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture
) -> None:
    conf = _user_dir(tmp_path, _write(ROWS, tmp_path / "qa.jsonl"))
    args = ["optimize", "--config-dir", str(conf), "task=mine", "study.n_trials=2"]
    code = main([*args, *tiny_overrides(tiny_model_dir, tmp_path / "out")])
    out = capsys.readouterr()
    assert code == 0, out.err[-2000:]
    assert "test (n=4)" in out.out  # debug=default: 4 per split
    meta = json.loads((tmp_path / "out" / "bundle" / "steering.json").read_text())
    assert meta["trait"] == "mine"
    assert meta["metrics"]["test"]["n"] == 4
    assert "unparsed" in meta["metrics"]["test"]


def _fail(args: list[str], capsys: pytest.CaptureFixture) -> str:
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    return err


BAD_DATA = [
    (["task=gsm8k", "task.columns.answer=solution"], r"column 'solution' \(task.columns.answer\)"),
    (
        ["task=gsm8k", "task.prompt_template='{prompt} in {unit}'"],
        r"prompt_template names an unknown field \{unit\}; fields: \['answer', 'prompt'",
    ),
    (
        ["task=gsm8k", "task.objective.scorer=bleu"],
        r"scorer must be one of \['exact', 'math', 'regex', 'sentiment'\], got 'bleu'",
    ),
    (["task=gsm8k", "~task.columns.answer"], r"scorer math compares with a gold answer"),
    (["task=gsm8k", "task.objective.scorer=regex"], r"scorer regex needs task.objective.pattern"),
    (
        ["task=bbq", "~task.columns.choices"],
        r"objective multiple_choice needs task.columns.choices",
    ),
    (["task=bbq", "task.objective.loglik=max"], r"loglik must be one of \['sum', 'mean'\]"),
    (["task=gsm8k", "task.splits.validation=0"], r"task.splits.validation must be >= 1, got 0"),
]


@pytest.mark.parametrize(("args", "message"), BAD_DATA, ids=lambda a: str(a)[:50])
def test_bad_task_data_is_one_line_with_the_rule_and_the_value(
    args: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    import re

    err = _fail(["optimize", *args], capsys)
    assert re.search(message, err), err


def test_overlapping_splits_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    source = _write(ROWS[:4] * 3, tmp_path / "dup.jsonl")  # every question three times
    conf = _user_dir(tmp_path, source)
    err = _fail(["optimize", "--config-dir", str(conf), "task=mine"], capsys)
    assert "splits must not overlap" in err
    assert "share the prompt 'What is" in err


def test_seed_000_experiment_composes_and_runs_on_the_tiny_model(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    gpu = compose_run("experiment=math_qwen7b")
    assert gpu.model.name_or_path == "Qwen/Qwen2.5-Math-7B-Instruct"
    assert (gpu.search_space.layers.low, gpu.search_space.layers.high) == (18, 27)
    assert (gpu.search_space.alpha.low, gpu.search_space.alpha.high) == (0.05, 1.5)
    assert gpu.task.objective.scorer == "math"
    assert gpu.sampler["_target_"].endswith("TPESampler")
    cfg = compose_run(
        "experiment=math_qwen7b",
        *tiny_overrides(tiny_model_dir, tmp_path),
        "model.dtype=float32",
        "model.device=cpu",
        "task.objective.max_new_tokens=4",
        "task.objective.fluency.enabled=false",
        "study.n_trials=2",
    )
    task = check_config(cfg)
    study = open_study(cfg)
    run_trials(study, prepare_worker(cfg, task), cfg.study.n_trials)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 2
    for t in trials:
        assert t.value is not None and 0.0 <= t.value <= 1.0
        assert t.user_attrs["n_unparsed"] + t.user_attrs["n_timeout"] <= 4
