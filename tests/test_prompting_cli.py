"""A bad `task.instruction` (or prompting value) is one line naming the rule and the value, exit
2, before any model loads and before any study is created."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hpo.cli.command import main

BAD = [
    (["task.instruction=''"], r"task.instruction must be a non-empty string \(one sentence\) or "),
    (["task.instruction=5"], r"task.instruction must be a non-empty string .*got 5$"),
    (["task.instruction=[be,kind]"], r"task.instruction must be a non-empty string .*\['be', "),
    (
        ["task.instruction='Answer about {topic}.'"],
        r"task.instruction names an unknown field \{topic\}; fields: \[",
    ),
    (["task.instruction='Be {'"], r"task.instruction is not a valid template"),
    (["task.instruction_placement=middle"], r"task.instruction_placement must be one of"),
    (["+task.prompting=instruction"], r"task.prompting is set per trial from search_space"),
    (["search_space.prompting=[maybe]"], r"search_space.prompting must list some of \['none', "),
    (
        ["task.instruction=null", "search_space.prompting=[none,instruction]"],
        r"search_space.prompting lists instruction, but task 'sycophancy' has no ",
    ),
]


@pytest.mark.parametrize(("overrides", "message"), BAD)
def test_bad_instruction_values_are_one_line_and_exit_2(
    overrides: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["optimize", "task=sycophancy", f"output_dir={tmp_path}", *overrides])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert re.search(message, err), err
    assert not (tmp_path / "study.db").exists()  # nothing created
