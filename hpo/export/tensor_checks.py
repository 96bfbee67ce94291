"""Check a bundle's tensors: every tensor a finite vector of the model's hidden size, named
`layer.<L>`, or for head and gated steering (CREST-style) `head.<L>.<H>` (`[head_dim]`), the probe
gate's `gate.<unit>.weight` / `gate.<unit>.bias` (unit `<L>` or `<L>.<H>`) and the trigger
gate's token ids `trigger.ids`. Each failure is a `BundleError`: one line naming the rule and
the value.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from hpo.core.errors import UserError
from hpo.core.names import brief, confined
from hpo.export.meta_checks import BundleError, _wrap, vector_relpath

_NUM = r"(0|[1-9][0-9]{0,5})"
_TENSOR_NAME = re.compile(rf"layer\.{_NUM}")
_HEAD_NAME = re.compile(rf"head\.{_NUM}\.{_NUM}")
_GATE_NAME = re.compile(rf"gate\.{_NUM}(?:\.{_NUM})?\.(weight|bias)")
TRIGGER_IDS = "trigger.ids"


def read_vectors(root: Path, meta: dict[str, Any]) -> dict[int, torch.Tensor]:
    """The steering vectors by layer (see `read_tensors`)."""
    return read_tensors(root, meta)[0]


def _load(root: Path, rel: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(confined(root, rel, "vector file")))
    except UserError as e:
        raise _wrap(root, e) from e
    except (SafetensorError, OSError, ValueError) as e:
        raise BundleError(f"bundle {root}: cannot read {Path(rel).name}: {e}") from e


def _finite_vector(root: Path, name: str, tensor: torch.Tensor, size: int, what: str) -> None:
    if not tensor.is_floating_point() or tuple(tensor.shape) != (size,):
        raise BundleError(
            f"bundle {root}: tensor {name} must be a float vector of {what} ({size},), "
            f"got {tensor.dtype} of shape {tuple(tensor.shape)}"
        )
    if not bool(torch.isfinite(tensor).all()):
        raise BundleError(f"bundle {root}: tensor {name} holds NaN or infinite values")


def read_tensors(
    root: Path, meta: dict[str, Any]
) -> tuple[dict[int, torch.Tensor], dict[Any, tuple[torch.Tensor, float]], torch.Tensor | None]:
    """The steering vectors by layer, the probe gate's `(weight, bias)` per unit and the trigger
    gate's token ids, each checked.

    Site residual: `layer.<L>`, each a finite vector of the model's hidden size. Site heads:
    `head.<L>.<H>` of `head_dim`, assembled per layer into a head-space vector (zero outside
    the steered heads).

    Raises:
        BundleError: unreadable file, a tensor of an unknown name, a wrong shape or dtype,
            a NaN or infinite entry, or layers / heads that differ from `steering.json`'s.
    """
    rel = vector_relpath(meta["trait"])
    tensors = _load(root, rel)
    app = meta["application"]
    heads_site = app.get("site", "residual") == "heads"
    hidden = meta["model"]["hidden_size"]
    vectors: dict[int, torch.Tensor] = {}
    found_heads: dict[int, list[int]] = {}
    weights: dict[Any, torch.Tensor] = {}
    biases: dict[Any, float] = {}
    trigger_ids = None
    for name, tensor in tensors.items():
        if (match := _TENSOR_NAME.fullmatch(name)) and not heads_site:
            _finite_vector(root, name, tensor, hidden, "the model's hidden size")
            vectors[int(match.group(1))] = tensor.float()
        elif (match := _HEAD_NAME.fullmatch(name)) and heads_site:
            layer, head = int(match.group(1)), int(match.group(2))
            dim, n_heads = app["head_dim"], app["n_heads"]
            _finite_vector(root, name, tensor, dim, "application.head_dim")
            if head >= n_heads:
                raise BundleError(f"bundle {root}: {name} names a head >= n_heads {n_heads}")
            vector = vectors.setdefault(layer, torch.zeros(n_heads * dim))
            vector[head * dim : (head + 1) * dim] = tensor.float()
            found_heads.setdefault(layer, []).append(head)
        elif match := _GATE_NAME.fullmatch(name):
            key: Any = int(match.group(1))
            if match.group(2) is not None:
                key = (key, int(match.group(2)))
            size = app.get("head_dim", 0) if heads_site else hidden
            if match.group(3) == "weight":
                _finite_vector(root, name, tensor, size, "the gated unit's width")
                weights[key] = tensor.float()
            else:
                _finite_vector(root, name, tensor, 1, "one bias")
                biases[key] = float(tensor[0])
        elif name == TRIGGER_IDS and tensor.dtype == torch.int64 and tensor.dim() == 1:
            trigger_ids = tensor
        else:
            expected = "head.<layer>.<head>" if heads_site else "layer.<number>"
            raise BundleError(
                f"bundle {root}: tensors must be named {expected} (or gate.*, {TRIGGER_IDS}), "
                f"got {brief(name)} in {rel}"
            )
    if sorted(vectors) != sorted(meta["layers"]):
        raise BundleError(
            f"bundle {root}: tensors for layers {brief(sorted(vectors))} but steering.json lists "
            f"{brief(meta['layers'])}"
        )
    if heads_site:
        listed = {int(k): sorted(v) for k, v in app["heads"].items()}
        if {k: sorted(v) for k, v in found_heads.items()} != listed:
            raise BundleError(
                f"bundle {root}: head tensors for {brief(found_heads)} but steering.json lists "
                f"{brief(listed)}"
            )
    if sorted(weights, key=str) != sorted(biases, key=str):
        raise BundleError(f"bundle {root}: every gate weight needs its bias and vice versa")
    probes = {k: (weights[k], biases[k]) for k in weights}
    return vectors, probes, trigger_ids


def bundle_tensors(
    vectors: dict[int, torch.Tensor],
    app: dict[str, Any],
    probes: dict[Any, tuple[torch.Tensor, float]] | None = None,
    trigger_ids: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """What the vector file holds for a plan (`app`: its `Application.record()`), named as
    `read_tensors` reads them back."""
    out: dict[str, torch.Tensor] = {}
    if app.get("site", "residual") == "heads":
        dim = app["head_dim"]
        for layer, chosen in app["heads"].items():
            vector = vectors[int(layer)].detach().float().cpu()
            for h in chosen:
                out[f"head.{layer}.{h}"] = vector[h * dim : (h + 1) * dim].contiguous()
    else:
        out.update(
            {
                f"layer.{layer}": v.detach().float().cpu().contiguous()
                for layer, v in vectors.items()
            }
        )
    for key, (weight, bias) in (probes or {}).items():
        unit = f"{key[0]}.{key[1]}" if isinstance(key, tuple) else str(key)
        out[f"gate.{unit}.weight"] = weight.detach().float().cpu().contiguous()
        out[f"gate.{unit}.bias"] = torch.tensor([float(bias)])
    if trigger_ids is not None:
        out[TRIGGER_IDS] = trigger_ids.detach().to(torch.int64).cpu().contiguous()
    return out
