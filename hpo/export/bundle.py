"""Load an exported bundle and apply it to a transformers model.

Only `json`, `safetensors` and `torch` are needed: no pickle, no remote code, none of the
training machinery. `load_bundle(path).apply(model)` is a context manager.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from hpo.core.errors import UserError
from hpo.core.names import brief
from hpo.core.prompting import INSTRUCTION, Instruction
from hpo.export.verify import (
    SCHEMA_VERSION,
    STEERING_JSON,
    BundleError,
    check_files,
    check_record,
    read_meta,
    read_tensors,
    sha256_file,
    vector_relpath,
)
from hpo.model.blocks import find_blocks, num_hidden_layers
from hpo.steering.application import Application
from hpo.steering.gates import Gate
from hpo.steering.heads import head_shape
from hpo.steering.hooks import SteeringHandle, steer

if TYPE_CHECKING:
    from hpo.core.config import ModelConfig

__all__ = [
    "SCHEMA_VERSION",
    "STEERING_JSON",
    "Bundle",
    "BundleError",
    "load_bundle",
    "sha256_file",
    "vector_relpath",
]

log = logging.getLogger(__name__)

# What a recorded sample needs to replay token for token.
REPLAY_KEYS = ("text", "unsteered_ids", "steered_ids")


@dataclass
class Bundle:
    """A loaded bundle: vectors by layer, how to apply them, and the live alpha.

    Layer `L` is steered along `vectors[L]` as `application` says (`alpha * scales[L]` in its
    mode at its positions; site heads, gate: see `hpo.steering.application.Application`).

    Attributes:
        application: the exported application (what steering.json records).
        alpha: multiplier used by `apply` (starts at `application.alpha`); change it, also while
            a context is open (for `ablate` it is the share of the component removed: 1 = all,
            0 = none).
        enabled: `False` makes an open `apply` context run the model unsteered.
    """

    path: Path
    meta: dict[str, Any]
    vectors: dict[int, torch.Tensor]
    application: Application
    alpha: float = field(init=False)
    _handles: list[SteeringHandle] = field(default_factory=list, repr=False)
    _enabled: bool = True

    def __post_init__(self) -> None:
        self.alpha = self.application.alpha

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        if name == "alpha":
            for handle in getattr(self, "_handles", []):
                handle.alpha = float(value)

    @property
    def enabled(self) -> bool:
        """Whether open `apply` contexts steer."""
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self._enabled = value
        for handle in self._handles:
            handle.enabled = value

    def check_model(self, model: Any) -> None:
        """Refuse a model with another hidden size or too few layers for this bundle."""
        want = self.meta["model"]
        text = model.config.get_text_config()
        hidden = getattr(text, "hidden_size", None) or getattr(text, "n_embd", None)
        if hidden != want["hidden_size"]:
            raise BundleError(
                f"bundle {self.path} was made for hidden size {want['hidden_size']}, "
                f"the model has {hidden}"
            )
        layers = num_hidden_layers(model)
        app = self.application
        if app.on_heads:
            shape = head_shape(model, find_blocks(model))
            want_heads = (app.n_heads, app.head_dim)
            if shape != want_heads:
                raise BundleError(
                    f"bundle {self.path} steers heads of {want_heads[0]} x {want_heads[1]}, "
                    f"the model's attention has {shape[0]} x {shape[1]}"
                )
        if max(self.vectors) >= layers:
            raise BundleError(
                f"bundle {self.path} steers layer {max(self.vectors)}, the model has only "
                f"{layers} layers"
            )

    @property
    def generation(self) -> dict[str, Any]:
        """How the task generated: `max_new_tokens`, `stop` strings, `chat_template` (empty for
        tasks that do not generate, and for bundles written before it was recorded)."""
        return dict(self.meta.get("generation") or {})

    def samples(self) -> list[dict[str, Any]]:
        """The recorded test samples that replay token for token: each with the exact prompt
        `text`, and `unsteered_ids` / `steered_ids` of both continuations.

        Raises:
            BundleError: the samples, vectors or settings were edited after export (see
                `hpo.export.verify.check_record`).
        """
        check_record(self.path, self.meta)
        return [s for s in self.recorded_samples() if all(k in s for k in REPLAY_KEYS)]

    def recorded_samples(self) -> list[dict[str, Any]]:
        """Every recorded test sample, also those without the text and ids a replay needs."""
        test = (self.meta.get("metrics") or {}).get("test") or {}
        return list(test.get("samples") or [])

    @property
    def instruction(self) -> Instruction | None:
        """The task's instruction when the bundle's numbers were measured with it
        (`search_space.prompting: instruction`), else None; `prompt` applies it."""
        record = self.meta.get("prompting") or {}
        if record.get("mode") != INSTRUCTION:
            return None
        return Instruction.from_record(record.get("instruction"))

    def prompt(self, tokenizer: Any, text: str, chat_template: bool | None = None) -> str:
        """A user's text as the model should see it: in the tokenizer's chat template when it
        has one and the bundle's task used it (`chat_template` overrides), else as it is (base
        models), with the instruction the bundle was measured with (`instruction`). Tokenize the
        result with `tokenizer(...)`, as the study did."""
        from hpo.model.decoding import chat_prompt

        use = (
            self.generation.get("chat_template", True) if chat_template is None else chat_template
        )
        return chat_prompt(tokenizer, text, bool(use), self.instruction)

    def load_model(self, device: str = "auto") -> tuple[Any, Any]:
        """The base model this bundle was made for and its tokenizer, as `(model, tokenizer)`.

        Uses the bundle's `model` record (a Hub id, a directory, or `pkg://` data; a GGUF file is
        converted once to a cached safetensors copy). Any transformers model with the same
        architecture and weights works as well.
        """
        from hpo.model.loading import load_model

        loaded = load_model(self.model_config(device))
        return loaded.model, loaded.tokenizer

    def model_config(self, device: str = "auto") -> ModelConfig:
        """The `ModelConfig` that loads the base model from the bundle's `model` record."""
        from hpo.core.config import ModelConfig

        m = self.meta["model"]
        if m.get("trust_remote_code"):
            # Code execution is the loading user's decision, never a bundle's.
            log.warning(
                "bundle %s asks for trust_remote_code=true; not honoured: the model loads "
                "without remote code (load it yourself with trust_remote_code=True if you "
                "trust it)",
                self.path,
            )
        return ModelConfig(
            name_or_path=m["name_or_path"],
            gguf_file=m.get("gguf_file"),
            revision=m.get("revision"),
            dtype=m.get("dtype", "float32"),
            device=device,
        )

    @contextmanager
    def apply(self, model: Any) -> Iterator[SteeringHandle]:
        """Steer `model` while the context is open; hooks are removed on exit."""
        self.check_model(model)
        with steer(model, find_blocks(model), self.vectors, self.application) as h:
            h.alpha = self.alpha
            h.enabled = self._enabled
            self._handles.append(h)
            try:
                yield h
            finally:
                self._handles.remove(h)


def load_bundle(path: str | Path) -> Bundle:
    """Load a bundle directory written by `hpo export`, checking everything it holds first.

    Every file of the sha256 map is verified (the map is required and covers the vectors, every
    path stays inside the bundle), and every tensor and number is checked (finite, the model's
    hidden size, known positions and mode); see `hpo.export.verify`.

    Raises:
        BundleError: a missing directory or file, bad JSON, a checksum mismatch, a path leaving
            the bundle, corrupt or non-finite tensors, or a value breaking its rule.
    """
    root = Path(path).expanduser()
    meta = read_meta(root)
    check_files(root, meta)
    vectors, probes, trigger_ids = read_tensors(root, meta)
    application = meta["application"]
    gate = None
    record = application.get("gate")
    if record is not None:
        try:
            gate = Gate(
                trigger=record.get("trigger", ""),
                trigger_ids=trigger_ids,
                probe=record.get("probe", "off"),
                threshold=float(record.get("threshold", 0.5)),
                probes=probes,
            )
        except UserError as e:
            raise BundleError(f"bundle {root}: {e}") from e
    heads = {int(k): tuple(v) for k, v in application.get("heads", {}).items()}
    if gate is not None and gate.probe != "off":
        units = set(heads_keys(heads)) if heads else set(vectors)
        if set(probes) != units:
            raise BundleError(
                f"bundle {root}: the probe gate needs a probe for every steered unit "
                f"{brief(sorted(units, key=str))}, got {brief(sorted(probes, key=str))}"
            )
    try:
        app = Application(
            alpha=float(meta["alpha"]),
            positions=application["positions"],
            # Bundles written before modes and windows: add, alpha on every layer.
            mode=application.get("mode", "add"),
            scales={int(k): float(v) for k, v in application.get("scales", {}).items()},
            site=application.get("site", "residual"),
            heads=heads,
            head_dim=int(application.get("head_dim", 0)),
            n_heads=int(application.get("n_heads", 0)),
            head_point=application.get("head_point", "pre_o_proj"),
            gate=gate,
        )
    except UserError as e:
        raise BundleError(f"bundle {root}: {e}") from e
    return Bundle(path=root, meta=meta, vectors=vectors, application=app)


def heads_keys(heads: dict[int, tuple[int, ...]]) -> list[tuple[int, int]]:
    """The `(layer, head)` units of a head selection."""
    return [(layer, h) for layer, chosen in heads.items() for h in chosen]
