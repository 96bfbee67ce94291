"""Shared fixtures: one cache dir per session, the shipped SmolLM2 model, a tiny random Llama."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_module

from hpo import ModelConfig, RunConfig
from hpo.core.config import to_run_config
from hpo.model.loading import LoadedModel, load_model, local_model_dir

REPO = Path(__file__).resolve().parents[1]


def _loggers() -> list[logging.Logger]:
    named = logging.Logger.manager.loggerDict.values()
    return [logging.getLogger(), *(lg for lg in named if isinstance(lg, logging.Logger))]


def _drop_closed_handlers() -> None:
    """Remove every handler whose stream is closed (a finished test's captured stderr)."""
    for lg in _loggers():
        lg.handlers[:] = [
            h for h in lg.handlers if not getattr(getattr(h, "stream", None), "closed", False)
        ]


@pytest.fixture(autouse=True)
def isolated_logging() -> Iterator[None]:
    """Every logger as it was before the test, and none writing to a closed stream:
    `hpo.cli.command.main` and Hydra point loggers at the test's captured stderr, which is
    closed once the test (or a module fixture) ends, and a later log line would then fail on it
    ("I/O operation on closed file") and break a test that reads stderr."""
    _drop_closed_handlers()
    saved = [(lg, lg.level, lg.handlers[:], lg.propagate, lg.disabled) for lg in _loggers()]
    yield
    for lg, level, handlers, propagate, disabled in saved:
        lg.setLevel(level)
        lg.handlers[:] = handlers
        lg.propagate, lg.disabled = propagate, disabled
    _drop_closed_handlers()


@pytest.fixture(scope="session", autouse=True)
def hpo_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every cache (converted model, activations) in one directory for the whole session.

    `HPO_TEST_CACHE_DIR` lets CI keep the converted model between the suite's subprocesses.
    """
    path = Path(os.environ.get("HPO_TEST_CACHE_DIR") or tmp_path_factory.mktemp("hpo-cache"))
    old = os.environ.get("HPO_CACHE_DIR")
    os.environ["HPO_CACHE_DIR"] = str(path)
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    os.environ["HF_HUB_OFFLINE"] = "1"
    yield path
    if old is None:
        os.environ.pop("HPO_CACHE_DIR", None)
    else:
        os.environ["HPO_CACHE_DIR"] = old


def tiny_overrides(model_dir: Path, out: Path) -> list[str]:
    """Overrides for a fast real study: the tiny Llama on the sycophancy task, debug preset."""
    return [
        "debug=default",
        f"model.name_or_path={model_dir}",
        "model.gguf_file=null",
        "search_space.layers.low=0",
        "search_space.layers.high=3",
        "search_space.positions=[prompt_end_onward]",
        f"output_dir={out}",
        "task.instruction=null",  # no prompted baseline: tests that want one set an instruction
    ]


def compose_run(*overrides: str) -> RunConfig:
    """Compose the real `hpo` config with overrides and validate it."""
    with initialize_config_module(config_module="conf", version_base="1.3"):
        return to_run_config(compose(config_name="hpo", overrides=list(overrides)))


@pytest.fixture(scope="session")
def smollm2() -> LoadedModel:
    """The shipped SmolLM2-135M-Instruct, loaded once per session."""
    return load_model(ModelConfig(threads=None))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, smollm2: LoadedModel) -> Path:
    """A randomly initialised 4-layer Llama with SmolLM2's tokenizer, saved as a model dir."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(local_model_dir(ModelConfig())[0])
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_finetuned_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """The tiny Llama with every weight nudged: a stand-in "finetuned" model for model_diff."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tmp_path_factory.mktemp("tiny-llama-finetuned")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * param.std() * torch.randn(param.shape, generator=g))
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny(tiny_model_dir: Path) -> LoadedModel:
    """The tiny random Llama, loaded."""
    return load_model(ModelConfig(name_or_path=str(tiny_model_dir), gguf_file=None))


def tokens(loaded: LoadedModel, *texts: str) -> list[list[int]]:
    """Token ids of each text."""
    return [loaded.tokenizer.encode(t) for t in texts]


def unit(hidden: int, seed: int = 0) -> Any:
    """A random vector of a given size, reproducible."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(hidden, generator=g)


def doc_files() -> list[Path]:
    """The README and every reference page under docs/ (where the README's reference lives)."""
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def doc_text() -> str:
    """The README and docs/*.md as one text, for tests that run a block the docs show."""
    return "\n".join(path.read_text() for path in doc_files())


def run_readme_example(cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run the docs' `import hpo ...` Python example (docs/bundle.md) in `cwd` (which must hold
    the bundle it loads at `outputs/demo/bundle`) with this checkout on the path."""
    found = re.search(r"```python\n(import hpo\n.*?)```", doc_text(), re.S)
    assert found, "README/docs lost the hpo.load_bundle example"
    assert 'hpo.load_bundle("outputs/demo/bundle")' in found.group(1)
    return subprocess.run(
        [sys.executable, "-c", found.group(1)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
