"""Check a bundle before anything in it is used: every file, name and number it holds.

A bundle is data from elsewhere. Its `steering.json` must be UTF-8 JSON of the known schema; its
`sha256` map must exist and cover the vector file; every path it names must stay inside the
bundle; every tensor must be a finite vector of the model's hidden size, named `layer.<L>`; every
number (alpha, per-layer scales, generation budget) must be finite and in range. Each failure is
a `BundleError`: one line naming the rule and the value.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from hpo.core.errors import UserError
from hpo.core.names import check_name, confined, finite
from hpo.core.vocabulary import MODES, POSITIONS

SCHEMA_VERSION = 1
STEERING_JSON = "steering.json"
# The most new tokens a bundle's recorded generation may ask a replay for.
MAX_NEW_TOKENS = 4096
_TENSOR_NAME = re.compile(r"layer\.(0|[1-9][0-9]{0,5})")
_DIGEST = re.compile(r"[0-9a-f]{64}")


class BundleError(UserError):
    """A bundle that cannot be loaded or does not fit the model."""


def vector_relpath(trait: str) -> str:
    """Where a trait's vectors live inside a bundle (seed 000's layout).

    Raises:
        BundleError: `trait` is not a plain name (it would place the file outside the bundle).
    """
    try:
        check_name("the bundle's trait (task.name)", trait)
    except UserError as e:
        raise BundleError(str(e)) from e
    return f"vectors/{trait}/steering_vector.safetensors"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _wrap(root: Path, e: UserError) -> BundleError:
    return BundleError(f"bundle {root}: {e}")


def _int(key: str, value: Any, low: int = 0, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise UserError(f"{key} must be an integer >= {low}, got {value!r}")
    if high is not None and value > high:
        raise UserError(f"{key} must be <= {high}, got {value!r}")
    return value


def _check_meta(meta: dict[str, Any]) -> None:
    check_name("trait", meta.get("trait"))
    model = meta.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("name_or_path"), str):
        raise UserError(f"model must be a record with name_or_path, got {model!r}")
    _int("model.hidden_size", model.get("hidden_size"), 1)
    layers = meta.get("layers")
    if not isinstance(layers, list) or not layers:
        raise UserError(f"layers must be a non-empty list of layer numbers, got {layers!r}")
    for layer in layers:
        _int("layers[]", layer, 0, 100_000)
    finite("alpha", meta.get("alpha"))
    app = meta.get("application")
    if not isinstance(app, dict):
        raise UserError(f"application must be a record, got {app!r}")
    if app.get("positions") not in POSITIONS:
        raise UserError(
            f"application.positions must be one of {list(POSITIONS)}, got {app.get('positions')!r}"
        )
    if app.get("mode", "add") not in MODES:
        raise UserError(f"application.mode must be one of {list(MODES)}, got {app.get('mode')!r}")
    scales = app.get("scales", {})
    if not isinstance(scales, dict):
        raise UserError(f"application.scales must map layers to numbers, got {scales!r}")
    for key, value in scales.items():
        if not str(key).isdigit():
            raise UserError(f"application.scales keys must be layer numbers, got {key!r}")
        finite(f"application.scales.{key}", value)
    generation = meta.get("generation")
    if generation is not None:
        if not isinstance(generation, dict):
            raise UserError(f"generation must be a record, got {generation!r}")
        if "max_new_tokens" in generation:
            _int("generation.max_new_tokens", generation["max_new_tokens"], 1, MAX_NEW_TOKENS)
        stop = generation.get("stop") or []
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise UserError(f"generation.stop must be a list of non-empty strings, got {stop!r}")


def read_meta(root: Path) -> dict[str, Any]:
    """`steering.json`, decoded and checked (schema, names, numbers, layers).

    Raises:
        BundleError: missing folder or file, not UTF-8, not JSON, or a value breaking its rule.
    """
    if not root.is_dir():
        raise BundleError(f"bundle directory {str(root)!r} does not exist")
    try:
        meta = json.loads((root / STEERING_JSON).read_bytes().decode("utf-8"))
    except FileNotFoundError as e:
        raise BundleError(f"bundle {root} has no {STEERING_JSON}") from e
    except OSError as e:
        raise BundleError(f"bundle {root}: cannot read {STEERING_JSON}: {e.strerror}") from e
    except UnicodeDecodeError as e:
        raise BundleError(
            f"bundle {root}: {STEERING_JSON} must be UTF-8, got byte {e.object[e.start]:#x} at "
            f"offset {e.start}"
        ) from e
    except (json.JSONDecodeError, RecursionError) as e:
        raise BundleError(f"bundle {root}: {STEERING_JSON} is not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise BundleError(f"bundle {root}: {STEERING_JSON} must hold a JSON object")
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise BundleError(
            f"bundle {root}: schema_version must be {SCHEMA_VERSION}, "
            f"got {meta.get('schema_version')!r}"
        )
    try:
        _check_meta(meta)
    except UserError as e:
        raise _wrap(root, e) from e
    return meta


def check_files(root: Path, meta: dict[str, Any]) -> None:
    """Every file of the `sha256` map: inside the bundle, present, and matching its digest.

    Raises:
        BundleError: no map, a path leaving the bundle, a missing file, a digest mismatch, or a
            map that does not cover the vector file.
    """
    digests = meta.get("sha256")
    if not isinstance(digests, dict) or not digests:
        raise BundleError(
            f"bundle {root}: {STEERING_JSON} must hold a sha256 map of its files, got {digests!r}"
        )
    for rel, digest in digests.items():
        try:
            file = confined(root, rel, "sha256 key")
        except UserError as e:
            raise _wrap(root, e) from e
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
            raise BundleError(f"bundle {root}: sha256 of {rel} must be 64 hex digits")
        if not file.is_file():
            raise BundleError(f"bundle {root} lacks {rel}")
        if sha256_file(file) != digest:
            raise BundleError(f"bundle {root}: {rel} does not match its sha256 (corrupted?)")
    vector = vector_relpath(meta["trait"])
    if vector not in digests:
        raise BundleError(f"bundle {root}: the sha256 map must cover {vector}, it does not")


def read_vectors(root: Path, meta: dict[str, Any]) -> dict[int, torch.Tensor]:
    """The steering vectors by layer, each a finite 1-D tensor of the model's hidden size.

    Raises:
        BundleError: unreadable file, a tensor not named `layer.<L>`, a wrong shape or dtype,
            a NaN or infinite entry, or layers that differ from `steering.json`'s.
    """
    rel = vector_relpath(meta["trait"])
    try:
        tensors = load_file(str(confined(root, rel, "vector file")))
    except UserError as e:
        raise _wrap(root, e) from e
    except (SafetensorError, OSError, ValueError) as e:
        raise BundleError(f"bundle {root}: cannot read {Path(rel).name}: {e}") from e
    hidden = meta["model"]["hidden_size"]
    vectors: dict[int, torch.Tensor] = {}
    for name, tensor in tensors.items():
        match = _TENSOR_NAME.fullmatch(name)
        if match is None:
            raise BundleError(
                f"bundle {root}: tensors must be named layer.<number>, got {name!r} in {rel}"
            )
        if not tensor.is_floating_point() or tuple(tensor.shape) != (hidden,):
            raise BundleError(
                f"bundle {root}: tensor {name} must be a float vector of the model's hidden size "
                f"({hidden},), got {tensor.dtype} of shape {tuple(tensor.shape)}"
            )
        if not bool(torch.isfinite(tensor).all()):
            raise BundleError(f"bundle {root}: tensor {name} holds NaN or infinite values")
        vectors[int(match.group(1))] = tensor.float()
    if sorted(vectors) != sorted(meta["layers"]):
        raise BundleError(
            f"bundle {root}: tensors for layers {sorted(vectors)} but steering.json lists "
            f"{meta['layers']}"
        )
    return vectors
