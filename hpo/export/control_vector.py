"""llama.cpp's control-vector GGUF: the bundle's steering, loadable by `llama-cli`/`llama-server`.

The format (llama.cpp `common_control_vector_load_one`, also written by repeng's `export_gguf`):
general.architecture `controlvector`, `controlvector.model_hint` (llama.cpp's architecture name,
e.g. `llama`), `controlvector.layer_count`, and one 1-D float32 tensor `direction.<N>` per layer.
llama.cpp adds `direction.N` to the output of decoder block N (0-based, the same numbering as
our layer `L`) at every position, so `direction.L` = alpha * our vector at layer `L`. It rejects
`direction.0` by name (block 0's output can never be steered), so a layer-0 vector cannot be
expressed in this format and is refused. It has no attention heads and no conditions either: a
bundle that steers heads (site heads) or only where a gate opens is refused with that reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpo.core.errors import UserError
from hpo.core.modes import MODES

ARCH = "controlvector"
FILENAME = "control_vector.gguf"
# transformers `model_type` -> llama.cpp architecture name, where they differ.
_LLAMA_CPP_ARCH = {"mistral": "llama", "gpt_neox": "gptneox", "phi": "phi2"}


class ControlVectorError(UserError):
    """The steering cannot be expressed as a llama.cpp control vector."""


def model_hint(model_type: str) -> str:
    """llama.cpp's architecture name for a transformers `model_type` (`qwen2` -> `qwen2`)."""
    return _LLAMA_CPP_ARCH.get(model_type, model_type)


def check_expressible(application: dict[str, Any]) -> None:
    """Refuse an application (steering.json's record) llama.cpp cannot carry: heads or gates.

    Raises:
        ControlVectorError: site heads, or a trigger / probe gate.
    """
    if application.get("site", "residual") == "heads":
        raise ControlVectorError(
            "llama.cpp control vectors add one vector to a block's output; they cannot steer "
            "single attention heads, got application.site='heads'"
        )
    gate = application.get("gate")
    if gate:
        raise ControlVectorError(
            "llama.cpp control vectors steer every position; they cannot carry a gate, got "
            f"trigger={gate.get('trigger', '')!r}, probe={gate.get('probe', 'off')!r}"
        )


def directions(
    vectors: dict[int, torch.Tensor], alpha: float, mode: str = "add"
) -> dict[int, np.ndarray]:
    """The float32 `direction.<L>` arrays llama.cpp adds: `alpha * vector` per layer.

    Raises:
        ControlVectorError: a layer-0 vector (llama.cpp cannot steer block 0), or a mode that
            is not a plain shift `h + alpha * v` (llama.cpp only adds).
    """
    rule = MODES.get(mode)
    if rule is None or not rule.shift:
        raise ControlVectorError(
            f"llama.cpp control vectors only add a direction, got application.mode={mode!r}"
        )
    if 0 in vectors:
        raise ControlVectorError(
            "llama.cpp control vectors cannot steer layer 0 (it rejects direction.0: block 0's "
            f"output is never steered), got layers {sorted(vectors)}"
        )
    return {
        layer: (float(alpha) * v.detach().float().cpu()).numpy().astype(np.float32)
        for layer, v in sorted(vectors.items())
    }


def write_control_vector(
    path: str | Path,
    vectors: dict[int, torch.Tensor],
    alpha: float,
    hint: str,
    mode: str = "add",
    application: dict[str, Any] | None = None,
) -> Path:
    """Write `vectors` scaled by `alpha` as a llama.cpp control-vector GGUF at `path`.

    `application`: steering.json's record, checked by `check_expressible`.

    Raises:
        ControlVectorError: see `directions` and `check_expressible`; nothing is written then.
    """
    import gguf

    check_expressible(application or {})
    arrays = directions(vectors, alpha, mode)
    target = Path(path)
    writer = gguf.GGUFWriter(str(target), arch=ARCH)
    try:
        writer.add_string(f"{ARCH}.model_hint", hint)
        writer.add_uint32(f"{ARCH}.layer_count", len(arrays))
        for layer, array in arrays.items():
            writer.add_tensor(f"direction.{layer}", array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return target


def read_control_vector(path: str | Path) -> tuple[dict[str, Any], dict[int, np.ndarray]]:
    """Read a control-vector GGUF back: (metadata, {layer: float32 direction})."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    meta: dict[str, Any] = {}
    for key in ("general.architecture", f"{ARCH}.model_hint", f"{ARCH}.layer_count"):
        field = reader.get_field(key)
        if field is not None:
            meta[key] = field.contents()
    tensors = {
        int(t.name.split(".", 1)[1]): np.array(t.data, dtype=np.float32)
        for t in reader.tensors
        if t.name.startswith("direction.")
    }
    return meta, tensors
