"""Check a bundle before anything in it is used: every file, name and number it holds.

A bundle is data from elsewhere. Its `steering.json` must be UTF-8 JSON of the known schema; its
`sha256` map must exist and cover the vector file; every path it names must stay inside the
bundle; every tensor must be a finite vector of the model's hidden size, named `layer.<L>`; every
number (alpha, per-layer scales, generation budget) must be finite and in range. Each failure is
a `BundleError`: one line naming the rule and the value.

Head and gated steering (CREST-style) add tensors to the same file: `head.<L>.<H>` (head `H`'s
vector, `[head_dim]`, instead of `layer.<L>`), the probe gate's `gate.<unit>.weight` /
`gate.<unit>.bias` (unit `<L>` or `<L>.<H>`) and the trigger gate's token ids `trigger.ids`.

The metadata checks live in `meta_checks`, the tensor checks in `tensor_checks`; every name
stays importable from here.
"""

from __future__ import annotations

from hpo.export.meta_checks import (
    MAX_NEW_TOKENS,
    RECORD_SHA256,
    SCHEMA_VERSION,
    STEERING_JSON,
    BundleError,
    _check_heads_and_gate,
    _check_meta,
    _check_samples,
    _int,
    _wrap,
    check_files,
    check_record,
    read_meta,
    record_digest,
    sha256_file,
    vector_relpath,
)
from hpo.export.tensor_checks import (
    TRIGGER_IDS,
    _finite_vector,
    _load,
    bundle_tensors,
    read_tensors,
    read_vectors,
)

__all__ = [
    "MAX_NEW_TOKENS",
    "RECORD_SHA256",
    "SCHEMA_VERSION",
    "STEERING_JSON",
    "TRIGGER_IDS",
    "BundleError",
    "_check_heads_and_gate",
    "_check_meta",
    "_check_samples",
    "_finite_vector",
    "_int",
    "_load",
    "_wrap",
    "bundle_tensors",
    "check_files",
    "check_record",
    "read_meta",
    "read_tensors",
    "read_vectors",
    "record_digest",
    "sha256_file",
    "vector_relpath",
]
