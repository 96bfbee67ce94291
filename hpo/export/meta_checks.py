"""Check a bundle's `steering.json` and its file digests before anything in it is used.

Its `steering.json` must be UTF-8 JSON of the known schema; its `sha256` map must exist and
cover the vector file; every path it names must stay inside the bundle; every number (alpha,
per-layer scales, generation budget) and the head / gate records must be in range. Each failure
is a `BundleError`: one line naming the rule and the value.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from hpo.core.errors import UserError
from hpo.core.modes import MODES, head_modes
from hpo.core.names import brief, check_name, confined, finite
from hpo.core.positions import POSITIONS
from hpo.core.vocabulary import HEAD_POINTS, PROBE_GATES, SITES

SCHEMA_VERSION = 1
STEERING_JSON = "steering.json"
# The most new tokens a bundle's recorded generation may ask a replay for.
MAX_NEW_TOKENS = 4096
# steering.json's digest of its own recorded samples and what they were generated with.
RECORD_SHA256 = "record_sha256"
_DIGEST = re.compile(r"[0-9a-f]{64}")


class BundleError(UserError):
    """A bundle that cannot be loaded or does not fit the model."""


def vector_relpath(trait: str) -> str:
    """Where a trait's vectors live inside a bundle (as in wisent-ai's CAA bundles on the Hub).

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
        raise UserError(f"{key} must be an integer >= {low}, got {brief(value)}")
    if high is not None and value > high:
        raise UserError(f"{key} must be <= {high}, got {brief(value)}")
    return value


def _check_meta(meta: dict[str, Any]) -> None:
    check_name("trait", meta.get("trait"))
    model = meta.get("model")
    if not isinstance(model, dict) or not isinstance(model.get("name_or_path"), str):
        raise UserError(f"model must be a record with name_or_path, got {brief(model)}")
    _int("model.hidden_size", model.get("hidden_size"), 1)
    layers = meta.get("layers")
    if not isinstance(layers, list) or not layers:
        raise UserError(f"layers must be a non-empty list of layer numbers, got {brief(layers)}")
    for layer in layers:
        _int("layers[]", layer, 0, 100_000)
    finite("alpha", meta.get("alpha"))
    app = meta.get("application")
    if not isinstance(app, dict):
        raise UserError(f"application must be a record, got {brief(app)}")
    if app.get("positions") not in POSITIONS:
        raise UserError(
            f"application.positions must be one of {list(POSITIONS)}, "
            f"got {brief(app.get('positions'))}"
        )
    if app.get("mode", "add") not in MODES:
        raise UserError(
            f"application.mode must be one of {list(MODES)}, got {brief(app.get('mode'))}"
        )
    scales = app.get("scales", {})
    if not isinstance(scales, dict):
        raise UserError(f"application.scales must map layers to numbers, got {brief(scales)}")
    for key, value in scales.items():
        if not str(key).isdigit():
            raise UserError(f"application.scales keys must be layer numbers, got {brief(key)}")
        finite(f"application.scales.{key}", value)
    _check_heads_and_gate(app)
    _check_samples(meta)
    generation = meta.get("generation")
    if generation is not None:
        if not isinstance(generation, dict):
            raise UserError(f"generation must be a record, got {brief(generation)}")
        if "max_new_tokens" in generation:
            _int("generation.max_new_tokens", generation["max_new_tokens"], 1, MAX_NEW_TOKENS)
        stop = generation.get("stop") or []
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise UserError(
                f"generation.stop must be a list of non-empty strings, got {brief(stop)}"
            )


def _check_samples(meta: dict[str, Any]) -> None:
    """`metrics.test.samples`, what `hpo generate replay=true` reads: records of text and ids."""
    metrics = meta.get("metrics")
    if metrics is None:
        return
    if not isinstance(metrics, dict):
        raise UserError(f"metrics must be a record, got {brief(metrics)}")
    test = metrics.get("test")
    if test is None:
        return
    if not isinstance(test, dict):
        raise UserError(f"metrics.test must be a record, got {brief(test)}")
    samples = test.get("samples", [])
    if not isinstance(samples, list):
        raise UserError(f"metrics.test.samples must be a list of records, got {brief(samples)}")
    for i, sample in enumerate(samples):
        key = f"metrics.test.samples[{i}]"
        if not isinstance(sample, dict) or not isinstance(sample.get("prompt"), str):
            raise UserError(f"{key} must be a record with a prompt text, got {brief(sample)}")
        if not isinstance(sample.get("text", ""), str):
            raise UserError(f"{key}.text must be text, got {brief(sample['text'])}")
        for name in ("unsteered_ids", "steered_ids"):
            ids = sample.get(name, [])
            if not isinstance(ids, list) or not all(
                isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in ids
            ):
                raise UserError(f"{key}.{name} must be a list of token ids, got {brief(ids)}")


def record_digest(meta: dict[str, Any]) -> str:
    """sha256 of what a replay must reproduce: the recorded samples, the vector file's digest,
    alpha, application and generation (`steering.json` is not in its own sha256 map)."""
    test = (meta.get("metrics") or {}).get("test") or {}
    record = {
        "samples": test.get("samples", []),
        "vectors": (meta.get("sha256") or {}).get(vector_relpath(meta["trait"])),
        "alpha": meta.get("alpha"),
        "application": meta.get("application"),
        "generation": meta.get("generation"),
    }
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def check_record(root: Path, meta: dict[str, Any]) -> None:
    """Refuse to replay a bundle whose recorded samples, vectors or settings were edited after
    export (bundles from before `record_sha256` have nothing to check).

    Raises:
        BundleError: `record_sha256` does not match (or is not 64 hex digits).
    """
    want = meta.get(RECORD_SHA256)
    if want is None:
        return
    if not isinstance(want, str) or want != record_digest(meta):
        raise BundleError(
            f"bundle {root} was modified after export: its recorded samples, vectors or "
            f"settings do not match {RECORD_SHA256}"
        )


def _check_heads_and_gate(app: dict[str, Any]) -> None:
    site = app.get("site", "residual")
    if site not in SITES:
        raise UserError(f"application.site must be one of {list(SITES)}, got {brief(site)}")
    if site == "heads":
        if app.get("mode", "add") not in head_modes():
            raise UserError(
                f"site heads takes mode {list(head_modes())}, got {brief(app.get('mode'))}"
            )
        if app.get("head_point") not in HEAD_POINTS:
            raise UserError(
                f"application.head_point must be one of {list(HEAD_POINTS)}, "
                f"got {brief(app.get('head_point'))}"
            )
        n_heads = _int("application.n_heads", app.get("n_heads"), 1, 100_000)
        _int("application.head_dim", app.get("head_dim"), 1, 100_000)
        heads = app.get("heads")
        if not isinstance(heads, dict) or not heads:
            raise UserError(f"application.heads must map layers to head lists, got {brief(heads)}")
        for key, chosen in heads.items():
            if not str(key).isdigit() or not isinstance(chosen, list) or not chosen:
                raise UserError(
                    f"application.heads[{brief(key)}] must list heads, got {brief(chosen)}"
                )
            for h in chosen:
                _int(f"application.heads[{brief(key)}][]", h, 0, n_heads - 1)
    gate = app.get("gate")
    if gate is None:
        return
    if not isinstance(gate, dict):
        raise UserError(f"application.gate must be a record, got {brief(gate)}")
    if not isinstance(gate.get("trigger", ""), str):
        raise UserError(f"application.gate.trigger must be text, got {brief(gate.get('trigger'))}")
    if gate.get("probe", "off") not in PROBE_GATES:
        raise UserError(
            f"application.gate.probe must be one of {list(PROBE_GATES)}, "
            f"got {brief(gate.get('probe'))}"
        )
    threshold = finite("application.gate.threshold", gate.get("threshold", 0.5))
    if not 0.0 < threshold < 1.0:
        raise UserError(f"application.gate.threshold must lie in (0, 1), got {threshold}")


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
            f"got {brief(meta.get('schema_version'))}"
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
            f"bundle {root}: {STEERING_JSON} must hold a sha256 map of its files, "
            f"got {brief(digests)}"
        )
    for rel, digest in digests.items():
        try:
            file = confined(root, rel, "sha256 key")
        except UserError as e:
            raise _wrap(root, e) from e
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
            raise BundleError(f"bundle {root}: sha256 of {brief(rel)} must be 64 hex digits")
        if not file.is_file():
            raise BundleError(f"bundle {root} lacks {rel}")
        if sha256_file(file) != digest:
            raise BundleError(f"bundle {root}: {rel} does not match its sha256 (corrupted?)")
    vector = vector_relpath(meta["trait"])
    if vector not in digests:
        raise BundleError(f"bundle {root}: the sha256 map must cover {vector}, it does not")
