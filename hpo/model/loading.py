"""Load the model to steer: a local directory, a Hub id, or a GGUF file converted once.

A GGUF file is de-quantized by transformers on first use (tens of seconds), then saved as a
safetensors copy under the cache directory keyed by the file's content hash, so every later load
takes about a second. Nothing here downloads unless the user names a Hub id.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hpo.core.config import ModelConfig
from hpo.core.errors import UserError
from hpo.core.paths import PKG_SCHEME, cache_dir, resolve_source
from hpo.model.blocks import find_blocks, num_hidden_layers

log = logging.getLogger(__name__)

CONVERTED_FORMAT = 1


@dataclass(frozen=True)
class ModelShape:
    """What validation and bundles need to know about a model without loading its weights."""

    num_layers: int
    hidden_size: int
    architecture: str


@dataclass
class LoadedModel:
    """A model ready to steer: the module, its tokenizer, its blocks and a content fingerprint."""

    model: Any
    tokenizer: Any
    blocks: nn.ModuleList
    shape: ModelShape
    fingerprint: str
    device: torch.device


def resolve_device(device: str) -> torch.device:
    """`auto` -> the first CUDA device when there is one, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise UserError(f"model.device must be auto, cpu, cuda or cuda:N, got {device!r}") from e


def _gguf_path(cfg: ModelConfig) -> Path | None:
    if not cfg.gguf_file:
        return None
    base = resolve_source(cfg.name_or_path)
    path = base / cfg.gguf_file if base.is_dir() else base
    if not path.is_file():
        raise UserError(f"model.gguf_file {cfg.gguf_file!r} not found in {base}")
    return path


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _converted_dir(gguf: Path) -> Path:
    stat = gguf.stat()
    key = hashlib.sha256(
        f"{CONVERTED_FORMAT}|{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()
    ).hexdigest()[:20]
    return cache_dir() / "models" / f"{gguf.stem}-{key}"


def _convert_gguf(gguf: Path, target: Path) -> None:
    """De-quantize a GGUF file once and save it as a safetensors model directory (atomically).

    transformers' progress bars show only on a terminal: in a pipe or a log they are noise
    (and a check that fails right after the conversion must still say one line).
    """
    if sys.stderr.isatty():
        _convert_gguf_files(gguf, target)
        return
    bars = io.StringIO()
    try:
        with contextlib.redirect_stderr(bars):
            _convert_gguf_files(gguf, target)
    finally:
        log.debug("conversion output: %s", bars.getvalue()[-2000:])


def _convert_gguf_files(gguf: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a cached safetensors copy (once)", gguf.name)
    kwargs = {"gguf_file": gguf.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), **kwargs)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), dtype=torch.float32, **kwargs)
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain one from config + weights.
    plain = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        meta = {"gguf": gguf.name, "sha256": _file_sha256(gguf), "format": CONVERTED_FORMAT}
        (tmp / "hpo_source.json").write_text(json.dumps(meta))
        try:
            os.replace(tmp, target)
        except OSError:
            # Another worker converted the same file first; theirs is identical.
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def local_model_dir(cfg: ModelConfig) -> tuple[str, str]:
    """Where `from_pretrained` should look, and a fingerprint of the weights it will find.

    GGUF models are converted on first call; `pkg://` and local paths are resolved; anything
    else is taken as a Hub id (downloaded only if the user is online and allows it).
    """
    gguf = _gguf_path(cfg)
    if gguf is not None:
        target = _converted_dir(gguf)
        if not (target / "hpo_source.json").is_file():
            _convert_gguf(gguf, target)
        sha = json.loads((target / "hpo_source.json").read_text())["sha256"]
        return str(target), f"gguf:{sha}"
    if cfg.name_or_path.startswith(PKG_SCHEME) or Path(cfg.name_or_path).expanduser().exists():
        path = resolve_source(cfg.name_or_path)
        weights = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin"))
        stamp = "|".join(f"{w.name}:{w.stat().st_size}:{w.stat().st_mtime_ns}" for w in weights)
        return str(path), "dir:" + hashlib.sha256(stamp.encode()).hexdigest()[:20]
    return cfg.name_or_path, f"hub:{cfg.name_or_path}@{cfg.revision or 'main'}"


def read_shape(cfg: ModelConfig) -> ModelShape:
    """Layer count, hidden size and architecture, read from metadata only (no weights)."""
    from transformers import AutoConfig

    gguf = _gguf_path(cfg)
    if gguf is not None:
        converted = _converted_dir(gguf)
        if not (converted / "config.json").is_file():
            return _gguf_shape(gguf)
        path = str(converted)
    elif cfg.name_or_path.startswith(PKG_SCHEME):
        path = str(resolve_source(cfg.name_or_path))
    else:
        path = cfg.name_or_path
    try:
        config = AutoConfig.from_pretrained(
            path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code
        )
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read the config of model {cfg.name_or_path!r}: {e}") from e
    text = config.get_text_config()
    layers = getattr(text, "num_hidden_layers", None) or getattr(text, "n_layer", None)
    hidden = getattr(text, "hidden_size", None) or getattr(text, "n_embd", None)
    arch = (config.architectures or [type(config).__name__])[0]
    if not isinstance(layers, int) or not isinstance(hidden, int):
        raise UserError(f"model {cfg.name_or_path!r} has no layer count / hidden size in config")
    return ModelShape(layers, hidden, arch)


def _gguf_shape(gguf: Path) -> ModelShape:
    from gguf import GGUFReader

    reader = GGUFReader(str(gguf))

    def field_value(name: str) -> Any:
        f = reader.fields.get(name)
        if f is None:
            raise UserError(f"GGUF file {gguf.name} lacks metadata field {name}")
        return f.contents()

    arch = str(field_value("general.architecture"))
    return ModelShape(
        num_layers=int(field_value(f"{arch}.block_count")),
        hidden_size=int(field_value(f"{arch}.embedding_length")),
        architecture=arch,
    )


def _first_line(e: BaseException) -> str:
    """A third-party message on one line, at most 120 characters (the rest is advice)."""
    text = " ".join(ln.strip() for ln in str(e).splitlines() if ln.strip()) or type(e).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def _tokenizer(path: str, cfg: ModelConfig, kwargs: dict[str, Any]) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, **kwargs)
    except (OSError, ValueError, KeyError) as e:  # no tokenizer files, an `auto_map` without code
        raise UserError(
            f"cannot build the tokenizer of model {cfg.name_or_path!r}: {_first_line(e)}"
        ) from e


def load_tokenizer(cfg: ModelConfig) -> Any:
    """The model's tokenizer alone (no weights): for checks that need token ids before a
    study is created, such as trigger patterns.

    Raises:
        UserError: the tokenizer cannot be built from what the model directory holds.
    """
    path, _ = local_model_dir(cfg)
    kwargs = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
    return _tokenizer(path, cfg, kwargs)


def load_model(cfg: ModelConfig) -> LoadedModel:
    """Load the model and tokenizer once per worker, in eval mode, with a pad token set."""
    from transformers import AutoModelForCausalLM

    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    path, fingerprint = local_model_dir(cfg)
    device = resolve_device(cfg.device)
    kwargs: dict[str, Any] = {
        "revision": cfg.revision,
        "trust_remote_code": cfg.trust_remote_code,
    }
    tokenizer = _tokenizer(path, cfg, kwargs)
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(
            path, dtype=getattr(torch, cfg.dtype), **kwargs
        )
    except (OSError, ValueError) as e:  # missing weights, an unknown architecture
        raise UserError(f"cannot load model {cfg.name_or_path!r}: {_first_line(e)}") from e
    model = model.to(device).eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    text = model.config.get_text_config()
    shape = ModelShape(
        num_layers=num_hidden_layers(model),
        hidden_size=int(getattr(text, "hidden_size", 0) or getattr(text, "n_embd", 0)),
        architecture=(model.config.architectures or [type(model).__name__])[0],
    )
    fingerprint = f"{fingerprint}|{cfg.dtype}"
    return LoadedModel(model, tokenizer, find_blocks(model), shape, fingerprint, device)
