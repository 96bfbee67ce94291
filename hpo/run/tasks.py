"""Load a task's rows through `datasets` and split them into seeded, disjoint train / validation /
test splits. The test split is only materialised on request, so a study can never read it."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import string
from dataclasses import dataclass, field
from typing import Any

from hpo.core.columns import data_columns
from hpo.core.config import KLConfig, TaskConfig
from hpo.core.errors import UserError
from hpo.core.paths import PKG_SCHEME, resolve_source
from objectives import prompt_fields

log = logging.getLogger(__name__)

FORMATS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
SPLITS = ("train", "validation", "test")

Row = dict[str, Any]


def _read_rows(source: str) -> list[Row]:
    import datasets

    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    datasets.disable_progress_bars()
    # A file it cannot parse is logged with a traceback before it raises: our one line says it.
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)
    local = source.startswith(PKG_SCHEME) or os.path.exists(os.path.expanduser(source))
    try:
        if local:
            path = resolve_source(source)
            if path.is_file() and path.stat().st_size == 0:
                return []
            builder = FORMATS.get(path.suffix.lower())
            if builder is None:
                raise UserError(
                    f"task.source must end in one of {sorted(FORMATS)}, got {path.name!r}"
                )
            ds = datasets.load_dataset(builder, data_files=str(path), split="train")
        else:
            ds = datasets.load_dataset(source, split="train")
    except UserError:
        raise
    except Exception as e:  # datasets raises many types; all mean "cannot read this source"
        raise UserError(f"cannot read task.source {source!r}: {type(e).__name__}: {e}") from e
    try:
        return [dict(row) for row in ds]
    except UnicodeDecodeError as e:  # arrow keeps invalid bytes until a value is read
        raise UserError(
            f"cannot read task.source {source!r}: it must be UTF-8, got {e.reason} at byte "
            f"{e.start} of a value"
        ) from e


@dataclass
class TaskSplits:
    """Disjoint splits of one task. `test()` is the only way to the held-out rows."""

    train: list[Row]
    validation: list[Row]
    _test: list[Row] = field(repr=False)
    data_hash: str = ""

    def test(self) -> list[Row]:
        """The held-out test split: read only when exporting a winner."""
        log.debug("reading the held-out test split (%d rows)", len(self._test))
        return self._test

    def test_prompts(self, column: str | None) -> list[Row]:
        """Only the test rows' prompt texts (`column`), for the length check before a study
        starts: no answer, label or score of the held-out split is read before export."""
        return [{column: row.get(column)} for row in self._test] if column else []


def _checked_rows(task: str, source: str, columns: dict[str, Any], key: str) -> list[Row]:
    rows = _read_rows(source)
    if not rows:
        raise UserError(f"task {task!r}: source {source!r} has no rows")
    _check_present(task, source, columns, key, rows[0])
    return rows


def _check_present(task: str, source: str, columns: dict[str, Any], key: str, row: Row) -> None:
    """Every data column the roles read is in `row` (lists flattened, constants left out)."""
    for role, column in data_columns(columns, row):
        if column not in row:
            raise UserError(
                f"task {task!r}: column {column!r} (task.{key}.{role}) is missing from "
                f"{source!r}; columns present: {sorted(row)}"
            )


def same_source(a: str, b: str) -> bool:
    """Whether two task sources name the same data (the same file, or the same Hub id)."""
    if a == b:
        return True
    try:
        return resolve_source(a).resolve() == resolve_source(b).resolve()
    except UserError:  # a Hub id, or a path that does not exist: only equal strings match
        return False


def _check_template(cfg: TaskConfig, row: Row, where: str = "") -> None:
    known = {"prompt", *row} | prompt_fields(cfg.objective.kind)
    if where:  # a separate train_source: its rows fill the train prompts' fields
        known = {"prompt", *row}
    templates = {"prompt_template": cfg.prompt_template}
    if isinstance(cfg.instruction, str):  # an instruction may name the row's fields too
        templates["instruction"] = cfg.instruction
    for key, template in templates.items():
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError as e:  # a lone brace
            raise UserError(
                f"task {cfg.name!r}: task.{key} is not a valid template ({e}); write {{{{ and "
                f"}}}} for literal braces, got {template!r}"
            ) from e
        for _, name, _, _ in parsed:
            if name == "" or (name is not None and name.isdigit()):
                raise UserError(
                    f"task {cfg.name!r}: task.{key} has an unnamed field {{{name}}}; "
                    "write {{ and }} for literal braces"
                )
            if name is not None and name not in known:
                raise UserError(
                    f"task {cfg.name!r}: task.{key} names an unknown field {{{name}}}"
                    f"{where}; fields: {sorted(known)}"
                )


def _check_disjoint(cfg: TaskConfig, named: dict[str, list[Row]]) -> None:
    """Refuse splits sharing a prompt (duplicated rows, or train pairs copied from the items)."""
    seen: dict[str, str] = {}
    for split, rows in named.items():
        column = cfg.columns["prompt"]
        if split == "train" and cfg.train_source is not None:
            column = cfg.train_columns.get("prompt", "prompt")
        for row in rows:
            text = str(row.get(column, "")).strip()
            if text in seen and seen[text] != split:
                raise UserError(
                    f"task {cfg.name!r}: splits must not overlap, but the {seen[text]} and "
                    f"{split} splits share the prompt {text[:80]!r}"
                )
            seen.setdefault(text, split)


def load_task(cfg: TaskConfig) -> TaskSplits:
    """Read, check and split a task's rows.

    Raises:
        UserError: empty source, a missing column, a template naming an unknown field, fewer
            rows than the splits ask for, or splits that share a prompt.
    """
    rows = _checked_rows(cfg.name, cfg.source, cfg.columns, "columns")
    _check_template(cfg, rows[0])
    if cfg.limit is not None:
        rows = rows[: cfg.limit]
    sizes = cfg.splits
    # train_source naming the source itself: train rows are a split of it, disjoint from the rest.
    shared = cfg.train_source is not None and same_source(cfg.train_source, cfg.source)
    if shared:
        _check_present(cfg.name, cfg.source, cfg.train_columns, "train_columns", rows[0])
    separate = cfg.train_source is not None and not shared
    need = sizes.validation + sizes.test + (0 if separate else sizes.train)
    parts = "validation+test" if separate else "train+validation+test"
    if len(rows) < need:
        raise UserError(
            f"task {cfg.name!r}: splits need {parts}={need} rows, "
            f"source has {len(rows)}{' after task.limit' if cfg.limit else ''}"
        )
    order = list(range(len(rows)))
    random.Random(sizes.seed).shuffle(order)
    if cfg.train_source is not None and separate:
        pairs = _checked_rows(cfg.name, cfg.train_source, cfg.train_columns, "train_columns")
        if cfg.train_template:
            where = " of the train_source rows (task.train_template=false: raw prompts)"
            _check_template(cfg, pairs[0], where)
        if len(pairs) < sizes.train:
            raise UserError(
                f"task {cfg.name!r}: splits.train={sizes.train} but train_source has "
                f"{len(pairs)} rows"
            )
        pair_order = list(range(len(pairs)))
        random.Random(sizes.seed).shuffle(pair_order)
        train = [pairs[i] for i in pair_order[: sizes.train]]
    else:
        train = [rows[i] for i in order[: sizes.train]]
        order = order[sizes.train :]
    validation = [rows[i] for i in order[: sizes.validation]]
    test = [rows[i] for i in order[sizes.validation : sizes.validation + sizes.test]]
    if "prompt" in cfg.columns:
        _check_disjoint(cfg, {"train": train, "validation": validation, "test": test})
    digest = hashlib.sha256(
        json.dumps([train, validation], sort_keys=True, default=str).encode()
    ).hexdigest()
    return TaskSplits(train, validation, test, digest)


def kl_prompts(cfg: KLConfig, split: str) -> list[str]:
    """The neutral prompts the KL side metric uses on a split (disjoint for validation / test).

    Raises:
        UserError: unknown split, a missing column, or fewer than 2 x `n_prompts` rows.
    """
    if split not in ("validation", "test"):
        raise UserError(f"KL prompts exist for validation and test, got split {split!r}")
    rows = _checked_rows("kl", cfg.source, {"prompt": cfg.column}, "objective.kl")
    need = 2 * cfg.n_prompts
    if len(rows) < need:
        raise UserError(
            f"task.objective.kl.source {cfg.source!r} has {len(rows)} rows, "
            f"kl.n_prompts={cfg.n_prompts} needs {need} (validation + test)"
        )
    start = 0 if split == "validation" else cfg.n_prompts
    return [str(r[cfg.column]) for r in rows[start : start + cfg.n_prompts]]
