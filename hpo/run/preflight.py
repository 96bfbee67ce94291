"""Checks before the work: what can be refused before a study is created or a model loads.

Each runs where its input is first known and costs far less than what it guards: the study file
a reading verb opens (never created or upgraded), the trigger patterns (the tokenizer alone), and
how many model copies `workers=N` starts against this machine's cores, GPUs and memory.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
from contextlib import closing
from pathlib import Path

import torch

from hpo.core.config import ModelConfig, RunConfig
from hpo.core.errors import UserError
from hpo.core.paths import PKG_SCHEME, resolve_source
from hpo.model.loading import _gguf_path, load_tokenizer
from hpo.steering.gates import trigger_token_ids

# Tables every Optuna RDB schema has: a SQLite file without them is not a study database.
OPTUNA_TABLES = {"studies", "trials", "version_info"}


def check_study_file(db: Path) -> None:
    """A verb that reads or joins a study never creates or upgrades a database: the SQLite file
    (or what a symlink names) must already hold Optuna's tables. Read through a read-only
    connection, so an empty or foreign file stays byte for byte as it was.

    Raises:
        UserError: the file is not a SQLite database, or one without Optuna's tables.
    """
    try:
        uri = f"{db.resolve().as_uri()}?mode=ro"
        with closing(sqlite3.connect(uri, uri=True)) as con:
            tables = {
                row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
    except sqlite3.Error as e:
        raise UserError(
            f"storage {str(db)!r} cannot be read as an Optuna study database ({e}); nothing was "
            "changed"
        ) from e
    if not tables >= OPTUNA_TABLES:
        raise UserError(
            f"storage {str(db)!r} is not an Optuna study database (no Optuna tables); "
            "nothing was changed"
        )


def check_triggers(cfg: RunConfig) -> None:
    """Every trigger pattern of the search space must end some token's text: checked with the
    tokenizer alone, before a study is created or a model loads."""
    patterns = sorted({t for t in cfg.search_space.trigger if t})
    if not patterns:
        return
    tokenizer = load_tokenizer(cfg.model)
    for pattern in patterns:
        try:
            trigger_token_ids(tokenizer, pattern)
        except UserError as e:
            raise UserError(f"search_space.trigger: {e}") from e


# What a worker process holds besides the weights (torch, transformers, activations), measured
# as about 0.5 GiB for SmolLM2-135M on CPU.
RUNTIME_BYTES = 512 << 20
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
_STORED_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I8": 1, "U8": 1}


def _safetensors_params(path: Path) -> int:
    """Parameter count of a safetensors file, from its JSON header (no tensor is read)."""
    with path.open("rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
    return sum(math.prod(t.get("shape", [])) for k, t in header.items() if k != "__metadata__")


def model_copy_bytes(cfg: ModelConfig) -> int | None:
    """About how much memory one loaded copy of the model takes, from its files' metadata
    (weights at `model.dtype` plus the runtime); None when the weights are not local."""
    try:
        gguf = _gguf_path(cfg)
        if gguf is not None:
            return gguf.stat().st_size * _DTYPE_BYTES[cfg.dtype] + RUNTIME_BYTES
        if not (cfg.name_or_path.startswith(PKG_SCHEME) or Path(cfg.name_or_path).exists()):
            return None
        files = sorted(resolve_source(cfg.name_or_path).glob("*.safetensors"))
        params = sum(_safetensors_params(f) for f in files)
    except (OSError, ValueError, UserError):
        return None
    return params * _DTYPE_BYTES[cfg.dtype] + RUNTIME_BYTES if params else None


def available_memory() -> int | None:
    """Memory the kernel can give new processes (`MemAvailable`), or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _gib(n: int | None) -> str:
    return "unknown" if n is None else f"{n / (1 << 30):.1f} GiB"


def check_workers(cfg: RunConfig) -> None:
    """`workers=N` starts N model copies: refuse more than the GPUs (or, without GPUs, the CPU
    cores) or than free memory holds, before any starts; `workers_check=false` overrides."""
    if cfg.workers <= 1 or not cfg.workers_check:
        return
    gpus = torch.cuda.device_count()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    per_copy, free = model_copy_bytes(cfg.model), available_memory()
    too_many = cfg.workers > (gpus or cores)
    # Without GPUs every copy lives in this machine's memory.
    too_big = not gpus and per_copy is not None and free is not None
    too_big = too_big and cfg.workers * (per_copy or 0) > (free or 0)
    if too_many or too_big:
        where = f"{gpus} GPUs and {cores} CPU cores" if gpus else f"{cores} CPU cores, no GPU"
        total = None if per_copy is None else cfg.workers * per_copy
        raise UserError(
            f"workers={cfg.workers} starts {cfg.workers} model copies, but this machine has "
            f"{where}; memory per model copy {_gib(per_copy)} (all: {_gib(total)}), memory "
            f"free {_gib(free)}; lower workers or set workers_check=false to start them anyway"
        )
