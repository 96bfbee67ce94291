"""Column roles of a task: which data column (or columns, or constant) plays which role.

`task.columns` maps a role to a column name. Two roles take more, so a user's own file needs no
reshaping:

- `choices` (multiple_choice) is one column holding a list of option texts, or a list of columns
  each holding one option (`choices: [right_answer, hallucinated_answer]`);
- `answer` / `negative` (multiple_choice) name a column holding an option index or letter, or are
  a constant: an integer (`answer: 0`, the first option is always right) or a single letter
  (`answer: A`) that is not a column of the data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from hpo.core.errors import UserError

# Roles whose value may be a constant option index or letter instead of a column.
CONSTANT_ROLES = ("answer", "negative")
# Roles whose value may be a list of columns.
LIST_ROLES = ("choices",)


def check_columns(task: str, key: str, columns: Mapping[str, Any], plain: bool = False) -> None:
    """The shape of every `task.<key>` entry: a column name, a list (choices) or a constant.

    `plain`: every entry must be a column name (`train_columns`).

    Raises:
        UserError: a value of the wrong type for its role, or a list of fewer than two columns.
    """
    for role, value in columns.items():
        where = f"task {task!r}: task.{key}.{role}"
        if plain:
            if not isinstance(value, str) or not value:
                raise UserError(f"{where} must be a column name, got {value!r}")
            continue
        if role in LIST_ROLES and isinstance(value, (list, tuple)):
            if len(value) < 2 or not all(isinstance(v, str) and v for v in value):
                raise UserError(f"{where} must list >= 2 column names, got {list(value)}")
            continue
        if role in CONSTANT_ROLES and isinstance(value, int) and not isinstance(value, bool):
            if value < 0:
                raise UserError(
                    f"{where} must be a column, an option index >= 0 or a letter, got {value}"
                )
            continue
        if not isinstance(value, str) or not value:
            allowed = "a column name"
            if role in LIST_ROLES:
                allowed += " or a list of column names"
            if role in CONSTANT_ROLES:
                allowed += ", an option index or a letter"
            raise UserError(f"{where} must be {allowed}, got {value!r}")


def is_constant(role: str, value: Any, present: Iterable[str]) -> bool:
    """Whether `value` of `role` is a constant option (an index, or a letter that is no column)."""
    if role not in CONSTANT_ROLES:
        return False
    if isinstance(value, int) and not isinstance(value, bool):
        return True
    return (
        isinstance(value, str)
        and len(value) == 1
        and value.isalpha()
        and value.isupper()
        and value not in set(present)
    )


def data_columns(columns: Mapping[str, Any], present: Iterable[str]) -> list[tuple[str, str]]:
    """(role, column) for every data column the roles read: lists flattened, constants left out."""
    names = list(present)
    out: list[tuple[str, str]] = []
    for role, value in columns.items():
        if isinstance(value, (list, tuple)):
            out += [(role, str(v)) for v in value]
        elif not is_constant(role, value, names):
            out.append((role, str(value)))
    return out


def option_texts(row: Mapping[str, Any], columns: Mapping[str, Any]) -> list[str]:
    """A row's option texts: from a list of columns, or one column holding a list (or JSON).

    Raises:
        UserError: fewer than two options, or a list column that holds no list.
    """
    spec = columns["choices"]
    if isinstance(spec, (list, tuple)):
        return [str(row[c]).strip() for c in spec]
    value = row[spec]
    if isinstance(value, str):
        import json

        try:
            value = json.loads(value)
        except ValueError:
            value = None
    if not isinstance(value, (list, tuple)) or len(value) < 2:
        raise UserError(f"column {spec!r} must hold a list of >= 2 option texts, got {value!r}")
    return [str(v).strip() for v in value]


def option_index(value: Any, n: int, what: str) -> int:
    """An option index from an index (`1`, `"1"`) or a letter (`"B"`, `"(B)"`).

    Raises:
        UserError: not an index or letter, or outside the `n` options.
    """
    text = str(value).strip().strip("()")
    if text.lstrip("-").isdigit():
        index = int(text)
    elif len(text) == 1 and text.isalpha():
        index = ord(text.upper()) - ord("A")
    else:
        index = -1
    if not 0 <= index < n:
        raise UserError(
            f"{what} must hold an option index in [0, {n - 1}] or a letter, got {value!r}"
        )
    return index


def row_option(row: Mapping[str, Any], columns: Mapping[str, Any], role: str, n: int) -> int:
    """The option index a row's `role` (`answer`, `negative`) names: a constant or a column.

    Raises:
        UserError: the value is not an index or letter of one of the `n` options.
    """
    spec = columns[role]
    if is_constant(role, spec, row):
        return option_index(spec, n, f"task.columns.{role}")
    return option_index(row[spec], n, f"column {spec!r}")
