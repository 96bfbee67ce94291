"""Column roles of a task: `choices` as a list of columns, a constant `answer`, and the data
columns a row must have."""

from __future__ import annotations

from hpo.core.columns import data_columns, option_texts, row_option
from tests.qa_task import ROWS


def test_choices_may_be_a_list_of_columns_and_answer_a_constant() -> None:
    columns = {"prompt": "question", "choices": ["right_answer", "hallucinated_answer"]}
    row = ROWS[0]
    assert option_texts(row, columns) == [row["right_answer"], row["hallucinated_answer"]]
    assert row_option(row, {**columns, "answer": 0}, "answer", 2) == 0
    assert row_option(row, {**columns, "answer": "B"}, "answer", 2) == 1
    assert row_option({**row, "gold": "(B)"}, {**columns, "answer": "gold"}, "answer", 2) == 1
    assert data_columns({**columns, "answer": 0}, row) == [
        ("prompt", "question"),
        ("choices", "right_answer"),
        ("choices", "hallucinated_answer"),
    ]
