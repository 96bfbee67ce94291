"""`hpo generate`: bundles, their tensors and records, prompts and replay."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from hpo.export.verify import (
    RECORD_SHA256,
    STEERING_JSON,
    record_digest,
    sha256_file,
    vector_relpath,
)
from tests.bad_inputs_tests.conftest import (
    HIDDEN,
    Case,
    Env,
    _latin1_file,
    _nan_tensor,
    _sha_key,
    _strip,
    _uncovered,
    _write,
    auto_map_model,
    check_refused,
    drop_key,
    generate,
    make_bundle,
    set_key,
)

SAMPLE = {"prompt": "hi", "text": "hi", "unsteered_ids": [1, 2], "steered_ids": [3, 4]}


def replay(path: Path) -> list[str]:
    return ["generate", f"bundle={path}", "replay=true"]


def _samples(*samples: object) -> Callable[[dict], None]:
    def edit(meta: dict) -> None:
        meta["metrics"] = {"test": {"samples": list(samples)}}

    return edit


def _recorded(meta: dict) -> None:
    """Samples and their digest, as `hpo export` writes them."""
    _samples(dict(SAMPLE), dict(SAMPLE, prompt="ho", text="ho"))(meta)
    meta[RECORD_SHA256] = record_digest(meta)


def _edited_sample(meta: dict) -> None:
    _recorded(meta)
    meta["metrics"]["test"]["samples"][1]["steered_ids"] = [3, 5]


def _edited_vector(env: Env) -> Path:
    """A recorded bundle whose vector file was replaced, its sha256 map updated to match."""
    path = env.bundle(_recorded)
    rel = vector_relpath("sentiment")
    from safetensors.torch import save_file

    save_file({"layer.1": torch.full((HIDDEN,), 2.0)}, str(path / rel))
    meta = json.loads((path / STEERING_JSON).read_text())
    meta["sha256"][rel] = sha256_file(path / rel)
    (path / STEERING_JSON).write_text(json.dumps(meta))
    return path


def _many_heads(env: Env) -> Path:
    """Site heads listing 300 heads of layer 1, its vector file holding one: a long listing."""

    def edit(meta: dict) -> None:
        meta["application"].update(
            site="heads", head_point="pre_o_proj", n_heads=400, head_dim=2,
            heads={"1": list(range(300))},
        )  # fmt: skip

    return env.bundle(edit, tensors={"head.1.0": torch.ones(2)})


def _many_probes(env: Env) -> Path:
    """A probe gate over 300 steered layers with no probe: a long list of units."""
    layers = list(range(300))

    def edit(meta: dict) -> None:
        meta["layers"] = layers
        meta["model"]["hidden_size"] = 2
        meta["application"]["gate"] = {"trigger": "", "probe": "present", "threshold": 0.5}

    return env.bundle(edit, tensors={f"layer.{i}": torch.ones(2) for i in layers})


def _long_trigger(env: Env) -> Path:
    """A trigger gate of 1,500 characters and no trigger ids."""
    return env.bundle(
        set_key("application", "gate", value={"trigger": "y" * 1500, "probe": "off"})
    )


BUNDLES: list[Case] = [
    ("bundle-missing", lambda e: generate(e.root / "nope"), r"does not exist"),
    (
        "bundle-no-steering-json",
        lambda e: generate(_strip(e.bundle(), STEERING_JSON)),
        r"has no steering.json",
    ),
    (
        "bundle-json-malformed",
        lambda e: generate(_write(e.bundle(), STEERING_JSON, b"{oops")),
        r"is not valid JSON",
    ),
    (
        "bundle-json-not-utf8",
        lambda e: generate(_write(e.bundle(), STEERING_JSON, b'{"a": "\xff"}')),
        r"steering.json must be UTF-8",
    ),
    (
        "bundle-json-not-object",
        lambda e: generate(_write(e.bundle(), STEERING_JSON, b"[1, 2]")),
        r"must hold a JSON object",
    ),
    (
        "bundle-schema",
        lambda e: generate(e.bundle(set_key("schema_version", value=99))),
        r"schema_version must be 1, got 99",
    ),
    ("bundle-no-trait", lambda e: generate(e.bundle(drop_key("trait"))), r"trait must be a name"),
    (
        "bundle-trait-climbs",
        lambda e: generate(e.bundle(set_key("trait", value="../../x"))),
        r"trait must be a name",
    ),
    (
        "bundle-trait-absolute",
        lambda e: generate(e.bundle(set_key("trait", value="/etc"))),
        r"trait must be a name",
    ),
    (
        "bundle-no-sha256",
        lambda e: generate(e.bundle(drop_key("sha256"))),
        r"must hold a sha256 map",
    ),
    (
        "bundle-sha256-empty",
        lambda e: generate(e.bundle(set_key("sha256", value={}))),
        r"must hold a sha256 map",
    ),
    (
        "bundle-sha256-climbs",
        lambda e: _sha_key(e, "outside"),
        r"sha256 key must be a relative path inside",
    ),
    (
        "bundle-sha256-absolute",
        lambda e: _sha_key(e, "/etc/passwd"),
        r"sha256 key must be a relative path inside",
    ),
    (
        "bundle-sha256-mismatch",
        lambda e: generate(_write(e.bundle(), vector_relpath("sentiment"), b"x" * 20)),
        r"does not match its sha256",
    ),
    (
        "bundle-sha256-not-covering-vector",
        lambda e: generate(_uncovered(e)),
        r"the sha256 map must cover vectors/sentiment",
    ),
    (
        "bundle-tensor-misnamed",
        lambda e: generate(e.bundle(tensors={"vec.1": torch.ones(HIDDEN)})),
        r"tensors must be named layer.<number> \(or gate.\*, trigger.ids\), got 'vec.1'",
    ),
    (
        "bundle-tensor-shape",
        lambda e: generate(e.bundle(tensors={"layer.1": torch.ones(HIDDEN + 1)})),
        r"must be a float vector of the model's hidden size \(8,\)",
    ),
    (
        "bundle-tensor-matrix",
        lambda e: generate(e.bundle(tensors={"layer.1": torch.ones(2, HIDDEN)})),
        r"must be a float vector of the model's hidden size",
    ),
    (
        "bundle-tensor-nan",
        lambda e: generate(e.bundle(tensors=_nan_tensor())),
        r"holds NaN or infinite values",
    ),
    (
        "bundle-layers-mismatch",
        lambda e: generate(e.bundle(set_key("layers", value=[2]))),
        r"tensors for layers \[1\] but steering.json lists \[2\]",
    ),
    (
        "bundle-alpha-infinity-string",
        lambda e: generate(e.bundle(set_key("alpha", value="Infinity"))),
        r"alpha must be a finite number, got 'Infinity'",
    ),
    (
        "bundle-alpha-nan",
        lambda e: generate(e.bundle(set_key("alpha", value=float("nan")))),
        r"alpha must be a finite number, got nan",
    ),
    (
        "bundle-scale-inf",
        lambda e: generate(e.bundle(set_key("application", "scales", value={"1": float("inf")}))),
        r"application.scales.1 must be a finite number",
    ),
    (
        "bundle-positions",
        lambda e: generate(e.bundle(set_key("application", "positions", value="everywhere"))),
        r"application.positions must be one of",
    ),
    (
        "bundle-mode",
        lambda e: generate(e.bundle(set_key("application", "mode", value="multiply"))),
        r"application.mode must be one of",
    ),
    (
        "bundle-hidden-size",
        lambda e: generate(e.bundle(set_key("model", "hidden_size", value="big"))),
        r"model.hidden_size must be an integer >= 1",
    ),
    (
        "bundle-replay-budget",
        lambda e: [
            "generate",
            f"bundle={e.bundle(set_key('generation', 'max_new_tokens', value=10**9))}",
            "replay=true",
        ],
        r"generation.max_new_tokens must be <= ",
    ),
    ("generate-alpha-nan", lambda e: generate(e.bundle(), "alpha=nan"), r"alpha must be finite"),
    (
        "generate-no-prompt",
        lambda e: ["generate", f"bundle={e.bundle()}"],
        r"generate needs prompt=",
    ),
    (
        "generate-prompts-file-missing",
        lambda e: ["generate", f"bundle={e.bundle()}", f"prompts_file={e.root / 'nope.txt'}"],
        r"prompts_file must be an existing file",
    ),
    (
        "generate-prompts-file-not-utf8",
        lambda e: [
            "generate",
            f"bundle={e.bundle()}",
            f"prompts_file={_latin1_file(e)}",
        ],
        r"prompts_file .* must be UTF-8",
    ),
    (
        "generate-prompt-too-long",
        lambda e: [
            "generate",
            f"bundle={e.bundle()}",
            "max_prompt_tokens=2",
            "prompt=" + "a" * 99,
        ],
        r"a prompt \(99 characters\) cannot fit max_prompt_tokens=2 tokens",
    ),
    (
        "generate-replay-with-alpha",
        lambda e: ["generate", f"bundle={e.bundle()}", "replay=true", "alpha=2"],
        r"replay=true checks the recorded samples",
    ),
]


NEW: list[Case] = [
    (
        "generate-tokenizer-cannot-be-built",
        lambda e: generate(make_bundle(e.root / "b", str(auto_map_model()))),
        r"cannot build the tokenizer of model '.*auto-map-model.*': Couldn't instantiate",
    ),
    (
        "replay-metrics-not-a-record",
        lambda e: replay(e.bundle(set_key("metrics", value=[1, 2]))),
        r"metrics must be a record, got \[1, 2\]",
    ),
    (
        "replay-metrics-test-not-a-record",
        lambda e: replay(e.bundle(set_key("metrics", value={"test": "oops"}))),
        r"metrics.test must be a record, got 'oops'",
    ),
    (
        "replay-samples-not-a-list",
        lambda e: replay(e.bundle(set_key("metrics", value={"test": {"samples": {"a": 1}}}))),
        r"metrics.test.samples must be a list of records, got \{'a': 1\}",
    ),
    (
        "replay-sample-not-a-record",
        lambda e: replay(e.bundle(_samples(SAMPLE, "text"))),
        r"metrics.test.samples\[1\] must be a record with a prompt text, got 'text'",
    ),
    (
        "replay-sample-ids-not-ids",
        lambda e: replay(e.bundle(_samples(dict(SAMPLE, steered_ids="3 4")))),
        r"metrics.test.samples\[0\].steered_ids must be a list of token ids, got '3 4'",
    ),
    (
        "replay-sample-without-ids",
        lambda e: replay(e.bundle(_samples(SAMPLE, {"prompt": "ho", "steered": "x"}))),
        r"1 of 2 recorded samples \(#1\) lack text/unsteered_ids/steered_ids: not replayable",
    ),
    (
        "replay-edited-sample",
        lambda e: replay(e.bundle(_edited_sample)),
        r"was modified after export: its recorded samples, vectors or settings do not match",
    ),
    (
        "replay-edited-vector",
        lambda e: replay(_edited_vector(e)),
        r"was modified after export",
    ),
    (
        "bundle-head-listing-is-short",
        lambda e: generate(_many_heads(e)),
        r"head tensors for \{1: \[0\]\} but steering.json lists \{1: \[0, 1, 2, 3, \.\.\.\]\}",
    ),
    (
        "bundle-probe-units-are-short",
        lambda e: generate(_many_probes(e)),
        r"the probe gate needs a probe for every steered unit \[0, 1, 10, 100, \.\.\.\], got \[\]",
    ),
    (
        "bundle-long-trigger-is-short",
        lambda e: generate(_long_trigger(e)),
        r"trigger 'y+\.\.\.y+' matches no token",
    ),
]

CASES = BUNDLES + NEW


@pytest.mark.parametrize(("name", "build", "rule"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(
    name: str,
    build: Callable[[Env], list[str]],
    rule: str,
    env: Env,
    capsys: pytest.CaptureFixture,
) -> None:
    check_refused(name, build, rule, env, capsys)


def test_the_hand_made_bundle_of_the_table_is_valid(env: Env) -> None:
    from hpo import load_bundle

    bundle = load_bundle(env.bundle())
    assert sorted(bundle.vectors) == [1]
    assert bundle.alpha == 0.5


def test_a_recorded_bundle_as_exported_replays_its_samples(env: Env) -> None:
    """The digest the edited cases break holds for the bundle as written."""
    from hpo import load_bundle

    bundle = load_bundle(env.bundle(_recorded))
    assert [s["prompt"] for s in bundle.samples()] == ["hi", "ho"]
