"""Tasks from a user's own file in YAML alone: `choices` as a list of columns, a constant
`answer`, `train_source` equal to `source` (disjoint rows taken automatically), train pairs
rendered like the validation prompts, and every bad task file refused in one line (exit 2)."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from hpo.cli.command import main
from hpo.model.loading import LoadedModel
from hpo.run.tasks import load_task
from objectives import PreparedPrompts, make_objective
from tests.conftest import compose_run
from tests.qa_task import ROWS, write_qa


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """`main` points the root logger at this test's captured stderr; undo that afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_a_yaml_only_multiple_choice_task_composes_and_scores_the_first_option_right(
    tmp_path: Path, tiny: LoadedModel
) -> None:
    cfg = compose_run(f"hydra.searchpath=[file://{write_qa(tmp_path)}]", "task=qa_mc")
    assert cfg.task.columns["choices"] == ["right_answer", "hallucinated_answer"]
    splits = load_task(cfg.task)
    objective = make_objective(cfg.task, tiny.tokenizer)
    variants = objective.variants(splits.validation)  # type: ignore[attr-defined]
    by_question = {r["question"]: r for r in ROWS}
    for v, row in zip(variants, splits.validation, strict=True):
        assert v.options[v.correct] == by_question[row["question"]]["right_answer"]
        assert v.prompt.startswith(row["knowledge"] + "\nQuestion: " + row["question"])
    pairs = objective.train_pairs(splits.train)
    assert [p.positive for p in pairs] == [" " + r["right_answer"] for r in splits.train]


def test_train_source_equal_to_source_takes_disjoint_rows_and_templated_prompts(
    tmp_path: Path, tiny: LoadedModel
) -> None:
    conf = write_qa(tmp_path)
    cfg = compose_run(f"hydra.searchpath=[file://{conf}]", "task=qa_gen")
    assert cfg.task.train_source == cfg.task.source
    splits = load_task(cfg.task)
    named = {"train": splits.train, "validation": splits.validation, "test": splits.test()}
    questions = {k: {r["question"] for r in rows} for k, rows in named.items()}
    assert [len(q) for q in questions.values()] == [4, 6, 4]
    assert not (questions["train"] & questions["validation"])
    assert not (questions["train"] & questions["test"])
    assert not (questions["validation"] & questions["test"])
    pairs = make_objective(cfg.task, tiny.tokenizer).train_pairs(splits.train)
    validation = make_objective(cfg.task, tiny.tokenizer).prepare(splits.validation)
    assert isinstance(validation, PreparedPrompts)
    for pair, row in zip(pairs, splits.train, strict=True):
        # the validation prompts' template ({knowledge} included) and chat template
        assert f"{row['knowledge']}\nQuestion: {row['question']}" in pair.prompt
        assert pair.prompt.startswith(validation.prompts[0][:20])  # same chat header
        assert "<|im_start|>assistant" in pair.prompt
        assert (pair.positive, pair.negative) == (row["right_answer"], row["hallucinated_answer"])
    raw = compose_run(
        f"hydra.searchpath=[file://{conf}]", "task=qa_gen", "+task.train_template=false"
    )
    raw_pairs = make_objective(raw.task, tiny.tokenizer).train_pairs(load_task(raw.task).train)
    assert [p.prompt for p in raw_pairs] == [r["question"] for r in splits.train]


def _fail(args: list[str], capsys: pytest.CaptureFixture) -> str:
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


BAD_FILES = [
    (
        "qa_mc",
        ["task.columns.choices=[right_answer,nope]"],
        r"column 'nope' \(task.columns.choices\)",
    ),
    ("qa_mc", ["task.columns.choices=[right_answer]"], r"choices must list >= 2 column names"),
    (
        "qa_mc",
        ["task.columns.answer=5"],
        r"task.columns.answer must hold an option index in \[0, 1\]",
    ),
    (
        "qa_mc",
        ["task.columns.prompt=[question,knowledge]"],
        r"task.columns.prompt must be a column",
    ),
    ("qa_mc", ["task.columns.answer=right_answer"], r"column 'right_answer' must hold an option"),
    (
        "qa_mc",
        ["task.splits.train=10"],
        r"splits need train\+validation\+test=22 rows, source has 16",
    ),
    (
        "qa_gen",
        ["task.splits.train=10"],
        r"splits need train\+validation\+test=20 rows, source has 16",
    ),
    (
        "qa_gen",
        ["task.train_columns.negative=nope"],
        r"column 'nope' \(task.train_columns.negative\)",
    ),
    ("qa_ab", ["task.prompt_template='{prompt} {nope}'"], r"unknown field \{nope\}"),
]


@pytest.mark.parametrize(("task", "args", "message"), BAD_FILES, ids=lambda a: str(a)[:40])
def test_every_bad_task_file_is_one_line_and_exit_2(
    task: str, args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    conf = write_qa(tmp_path)
    err = _fail(["optimize", "--config-dir", str(conf), f"task={task}", *args], capsys)
    assert re.search(message, err), err
