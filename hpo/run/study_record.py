"""A study's config record: what is stored at creation, what must match for a worker to join,
and which stored settings are never honoured."""

from __future__ import annotations

import dataclasses
from typing import Any

import optuna

from hpo.core.config import RunConfig
from hpo.core.errors import UserError
from hpo.core.record import CONFIG_ATTR
from storage import default_sqlite_url, mask_url

# What must match for a worker to join a study: the same model, task and search space.
FINGERPRINT_KEYS = ("model", "model_diff", "task", "search_space")
# Settings that can run code on this machine. Never taken from the study database (anyone who
# can write a shared study could set them): each process uses its own config's value.
SECURITY_KEYS = ("model.trust_remote_code", "model_diff.trust_remote_code")
# How a worker runs, not what it computes: may differ between workers of one study.
PER_WORKER_KEYS = {
    "model.threads",
    "model.device",
    "task.objective.batch_size",
    "task.max_prompt_tokens",
    *SECURITY_KEYS,
}


def storage_url(cfg: RunConfig) -> str:
    """`storage.url`, or the embedded default SQLite file in `output_dir`."""
    return cfg.storage.url or default_sqlite_url(cfg.output_dir)


def config_record(cfg: RunConfig) -> dict[str, Any]:
    """The resolved config as plain data, with the storage URL's password masked."""
    record = dataclasses.asdict(cfg)
    record["storage"]["url"] = mask_url(storage_url(cfg))
    return record


# The config every key defaults to: a study recorded before a key existed ran with its default.
DEFAULTS: dict[str, Any] = dataclasses.asdict(RunConfig())


def _with_defaults(stored: dict[str, Any], defaults: Any) -> dict[str, Any]:
    """`stored` with every key it lacks taken from `defaults` (recursively), so a study made
    by an older version, before a search-space or task key existed, still admits workers that
    leave that key at its default."""
    if not isinstance(defaults, dict):
        return stored
    out = dict(stored)
    for key, value in defaults.items():
        if key not in out:
            out[key] = value
        elif isinstance(out[key], dict):
            out[key] = _with_defaults(out[key], value)
    return out


def _differences(stored: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(stored) | set(current)):
        a, b = stored.get(key), current.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b and f"{prefix}{key}" not in PER_WORKER_KEYS:
            out.append(f"{prefix}{key}: study has {a!r}, this run has {b!r}")
    return out


def security_notes(stored: dict[str, Any], cfg: RunConfig) -> list[str]:
    """One line per security setting the study's stored config asks for and this process's own
    config does not grant (it is not honoured)."""
    notes = []
    for key in SECURITY_KEYS:
        group, name = key.split(".")
        wanted = (stored.get(group) or {}).get(name)
        if wanted is True and not getattr(getattr(cfg, group), name):
            notes.append(
                f"the study's stored config sets {key}=true; not honoured: this process takes "
                f"{key} from its own config ({key}=false); set it there if you trust the model"
            )
    return notes


def stored_config(study: optuna.Study) -> dict[str, Any]:
    """The resolved config a study was created with."""
    record = study.user_attrs.get(CONFIG_ATTR)
    if not isinstance(record, dict):
        raise UserError(f"study {study.study_name!r} was not created by hpo (no {CONFIG_ATTR})")
    return record
