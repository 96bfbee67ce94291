"""llama.cpp control-vector GGUF: written with alpha applied, read back by the `gguf` package."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from hpo import load_bundle
from hpo.core.selection import pick_trial
from hpo.export.control_vector import (
    ControlVectorError,
    model_hint,
    read_control_vector,
    write_control_vector,
)
from hpo.export.writer import write_bundle
from tests.conftest import unit
from tests.hpo_tests.run_tests.test_study import run_study, tiny_run


def test_gguf_reads_back_to_the_same_tensors_and_metadata(tmp_path: Path) -> None:
    vectors = {3: unit(64, seed=1), 7: unit(64, seed=2)}
    path = write_control_vector(tmp_path / "cv.gguf", vectors, 0.75, "llama")
    reader = gguf.GGUFReader(str(path))

    def field(key: str) -> object:
        found = reader.get_field(key)
        assert found is not None, key
        return found.contents()

    assert field("general.architecture") == "controlvector"
    assert field("controlvector.model_hint") == "llama"
    assert field("controlvector.layer_count") == 2
    tensors = {t.name: t for t in reader.tensors}
    assert sorted(tensors) == ["direction.3", "direction.7"]
    for layer, v in vectors.items():
        t = tensors[f"direction.{layer}"]
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        assert list(t.shape) == [64]
        np.testing.assert_array_equal(np.asarray(t.data), (0.75 * v).numpy())
    meta, directions = read_control_vector(path)
    assert meta["controlvector.layer_count"] == 2
    assert sorted(directions) == [3, 7]


def test_layer_zero_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    with pytest.raises(ControlVectorError, match=r"cannot steer layer 0.*got layers \[0, 2\]"):
        write_control_vector(tmp_path / "cv.gguf", {0: unit(8), 2: unit(8)}, 1.0, "llama")
    assert not (tmp_path / "cv.gguf").exists()


def test_a_mode_llama_cpp_lacks_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ControlVectorError, match=r"only add a direction, got application\.mode"):
        write_control_vector(tmp_path / "cv.gguf", {2: unit(8)}, 1.0, "llama", mode="ablate")


def test_model_hint_uses_llama_cpp_architecture_names() -> None:
    assert model_hint("llama") == "llama"
    assert model_hint("qwen2") == "qwen2"
    assert model_hint("gpt_neox") == "gptneox"


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple:
    out = tmp_path_factory.mktemp("cv-run")
    return run_study(tiny_run(tiny_model_dir, out, "search_space.layers.low=1"))


def test_exported_bundle_carries_the_control_vector_with_alpha_applied(
    tiny_study: tuple, tmp_path: Path
) -> None:
    study, worker = tiny_study
    trial = pick_trial(study, None)
    path = write_bundle(worker, study, trial, tmp_path / "bundle")
    meta = json.loads((path / "steering.json").read_text())
    assert meta["control_vector"]["file"] == "control_vector.gguf"
    assert meta["control_vector"]["model_hint"] == "llama"
    assert "control_vector.gguf" in meta["sha256"]
    bundle = load_bundle(path)  # checksum of the GGUF verified too
    header, directions = read_control_vector(path / "control_vector.gguf")
    assert header["controlvector.model_hint"] == "llama"
    assert header["controlvector.layer_count"] == len(bundle.vectors)
    assert sorted(directions) == sorted(bundle.vectors)
    for layer, v in bundle.vectors.items():
        np.testing.assert_allclose(directions[layer], (bundle.alpha * v).numpy(), rtol=1e-6)
    card = (path / "README.md").read_text()
    assert "--control-vector control_vector.gguf " in card
    assert "--control-vector-scaled control_vector.gguf:0.5" in card  # FILE:SCALE


def test_layer_zero_winner_gets_a_bundle_without_the_gguf(
    tiny_study: tuple, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    study, worker = tiny_study
    trial = copy.deepcopy(pick_trial(study, None))
    trial.params = {**trial.params, "layer": 0}
    path = write_bundle(worker, study, trial, tmp_path / "bundle")
    meta = json.loads((path / "steering.json").read_text())
    assert meta["layers"] == [0]
    assert meta["control_vector"]["file"] is None
    assert "cannot steer layer 0" in meta["control_vector"]["skipped"]
    assert not (path / "control_vector.gguf").exists()
    assert "no control_vector.gguf in the bundle: llama.cpp" in caplog.text
    assert (
        "No `control_vector.gguf`: llama.cpp control vectors cannot steer layer 0"
        in (path / "README.md").read_text()
    )
    bundle = load_bundle(path)
    assert torch.equal(bundle.vectors[0], worker.vectors(trial.params)[0])
