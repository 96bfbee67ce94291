"""Every bad input is one line and exit code 2, and changes nothing on disk.

A table of cases across config values, task files and data, storage, bundles, export targets and
the command line. Each case builds its inputs in a fresh directory (also the working directory),
runs `hpo <verb>` in-process, and checks the exit code, that stderr is exactly one line naming
the rule, and that no file under that directory was created, changed or deleted. None of them
loads a model: every rule is checked before that (the model named is a config-only directory).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from hpo.cli.command import main
from hpo.export.target import MARKER, WRITTEN_BY
from hpo.export.verify import STEERING_JSON, sha256_file, vector_relpath
from tests.conftest import compose_run

HIDDEN = 8


@pytest.fixture(scope="module")
def config_only_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model directory with only `config.json` (4 layers): enough for every check, and any
    attempt to load its weights would fail loudly."""
    from transformers import LlamaConfig

    path = tmp_path_factory.mktemp("config-only-model")
    LlamaConfig(
        vocab_size=100,
        hidden_size=HIDDEN,
        intermediate_size=16,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=1,
    ).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def template_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An output dir holding a real SQLite study `s` (config recorded, baseline enqueued)."""
    from hpo.run.study import open_study

    out = tmp_path_factory.mktemp("template-run") / "run"
    saved = os.environ.pop("HPO_STORAGE_URL", None)
    try:
        open_study(compose_run("study.name=s", f"output_dir={out}"))
        # Fold SQLite's write-ahead log into study.db: each case copies one self-contained file.
        with sqlite3.connect(out / "study.db") as con:
            con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        if saved is not None:
            os.environ["HPO_STORAGE_URL"] = saved
    return out


@dataclass
class Env:
    """One case's directory and the valid inputs it may break."""

    root: Path
    model: Path
    template: Path

    @property
    def model_args(self) -> list[str]:
        """The config-only model, with a search space that fits its 4 layers."""
        return [
            f"model.name_or_path={self.model}",
            "model.gguf_file=null",
            "search_space.layers.low=0",
            "search_space.layers.high=3",
        ]

    def study(self) -> Path:
        """A copy of the template study's output dir under this case's root."""
        run = self.root / "run"
        shutil.copytree(self.template, run, ignore=shutil.ignore_patterns("*-wal", "*-shm"))
        return run

    def export_args(self, target: Path | str, *extra: str) -> list[str]:
        run = self.root / "run"
        if not run.exists():
            self.study()
        return ["export", f"output_dir={run}", "study.name=s", f"export.dir={target}", *extra]

    def bundle(
        self,
        edit: Callable[[dict], None] | None = None,
        tensors: dict[str, torch.Tensor] | None = None,
        name: str = "bundle",
    ) -> Path:
        """A hand-made valid bundle under this case's root, then `edit` applied."""
        return make_bundle(self.root / name, str(self.model), edit, tensors)

    def task_dir(self, yaml_text: str | bytes, data: str | bytes | None = None) -> Path:
        """A `--config-dir` with `task/bad.yaml`, and `data.jsonl` beside it when given."""
        conf = self.root / "conf"
        (conf / "task").mkdir(parents=True)
        if data is not None:
            target = self.root / "data.jsonl"
            target.write_bytes(data if isinstance(data, bytes) else data.encode())
        text = yaml_text if isinstance(yaml_text, bytes) else yaml_text.encode()
        (conf / "task" / "bad.yaml").write_bytes(
            text.replace(b"@DATA@", str(data_path(self)).encode())
        )
        return conf


def make_bundle(
    path: Path,
    model: str,
    edit: Callable[[dict], None] | None = None,
    tensors: dict[str, torch.Tensor] | None = None,
) -> Path:
    """A hand-made valid bundle (layer 1, hidden size 8, marker included), then `edit` applied
    to its steering.json (after the sha256 map of the vector file was computed)."""
    rel = vector_relpath("sentiment")
    (path / rel).parent.mkdir(parents=True)
    save_file(tensors or {"layer.1": torch.ones(HIDDEN)}, str(path / rel))
    meta: dict = {
        "schema_version": 1,
        "trait": "sentiment",
        "model": {"name_or_path": model, "hidden_size": HIDDEN, "dtype": "float32"},
        "layers": [1],
        "alpha": 0.5,
        "application": {"positions": "all", "mode": "add", "scales": {"1": 1.0}},
        "generation": {"max_new_tokens": 4, "stop": [], "chat_template": False},
        "sha256": {rel: sha256_file(path / rel)},
    }
    if edit is not None:
        edit(meta)
    (path / STEERING_JSON).write_text(json.dumps(meta))
    files = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())
    (path / MARKER).write_text(json.dumps({"written_by": WRITTEN_BY, "files": files}))
    return path


def data_path(env: Env) -> Path:
    return env.root / "data.jsonl"


ROWS = "".join(json.dumps({"q": f"question {i}", "a": "A", "b": "B"}) + "\n" for i in range(30))
LONG_ROWS = "".join(
    json.dumps({"q": f"question {i:02d} " + "x" * 56, "a": "A", "b": "B"}) + "\n"
    for i in range(30)
)
TASK = """\
name: bad
source: @DATA@
columns: {prompt: q, positive: a, negative: b}
prompt_template: "{prompt}"
splits: {train: 4, validation: 4, test: 4, seed: 0}
objective: {kind: choice_probability}
"""


def optimize(env: Env, *extra: str) -> list[str]:
    return ["optimize", *env.model_args, f"output_dir={env.root / 'out'}", *extra]


def task_case(env: Env, yaml_text: str | bytes, data: str | bytes | None = ROWS) -> list[str]:
    conf = env.task_dir(yaml_text, data)
    return optimize(env, "--config-dir", str(conf), "task=bad")


def generate(path: Path, *extra: str) -> list[str]:
    return ["generate", f"bundle={path}", "prompt=hi", *extra]


def set_key(*keys: str, value: object) -> Callable[[dict], None]:
    def edit(meta: dict) -> None:
        node = meta
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value

    return edit


def drop_key(key: str) -> Callable[[dict], None]:
    return lambda meta: meta.pop(key)


def _readonly_dir(env: Env) -> Path:
    path = env.root / "ro"
    path.mkdir()
    path.chmod(0o555)
    return path


def _marker_plus_foreign(env: Env) -> Path:
    path = env.bundle(name="old")
    (path / "notes.txt").write_text("mine")
    return path


def _user_folder(env: Env) -> Path:
    path = env.root / "mine"
    path.mkdir()
    (path / "thesis.tex").write_text("years of work")
    return path


def _regular_file(env: Env, name: str = "afile") -> Path:
    path = env.root / name
    path.write_text("keep me")
    return path


def _latin1_file(env: Env) -> Path:
    path = env.root / "prompts.txt"
    path.write_bytes("café".encode("latin-1"))
    return path


def _nan_tensor() -> dict[str, torch.Tensor]:
    t = torch.ones(HIDDEN)
    t[3] = float("nan")
    return {"layer.1": t}


def _outside_file(env: Env) -> str:
    secret = env.root / "secret.txt"
    secret.write_text("outside the bundle")
    return "../secret.txt"


def _sha_key(env: Env, key: str) -> list[str]:
    key = _outside_file(env) if key == "outside" else key
    return generate(env.bundle(lambda m: m["sha256"].update({key: "0" * 64})))


# (id, build the inputs and return argv, the rule the one line must state)
Case = tuple[str, Callable[[Env], list[str]], str]

CONFIG: list[Case] = [
    (
        "alpha-low-nan",
        lambda e: optimize(e, "search_space.alpha.low=nan"),
        r"search_space.alpha.low must be a finite number, got nan",
    ),
    (
        "alpha-high-inf",
        lambda e: optimize(e, "search_space.alpha.high=inf"),
        r"search_space.alpha.high must be a finite number, got inf",
    ),
    (
        "alpha-low-minus-inf",
        lambda e: optimize(e, "search_space.alpha.low=-inf"),
        r"search_space.alpha.low must be a finite number",
    ),
    (
        "alpha-low-above-high",
        lambda e: optimize(e, "search_space.alpha.low=3", "search_space.alpha.high=1"),
        r"alpha.low <= high must hold",
    ),
    (
        "alpha-log-needs-positive",
        lambda e: optimize(e, "search_space.alpha.log=true", "search_space.alpha.low=0"),
        r"alpha.log needs alpha.low > 0",
    ),
    (
        "layers-beyond-model",
        lambda e: optimize(e, "search_space.layers.high=9"),
        r"layers must lie in \[0, 3\]",
    ),
    (
        "window-zero",
        lambda e: optimize(e, "search_space.window.low=0"),
        r"window must satisfy 1 <= low <= high",
    ),
    (
        "perplexity-ratio-nan",
        lambda e: optimize(e, "+task.objective.fluency.max_perplexity_ratio=nan"),
        r"max_perplexity_ratio must be a finite number > 1",
    ),
    (
        "distinct2-ratio-nan",
        lambda e: optimize(e, "+task.objective.fluency.min_distinct2_ratio=nan"),
        r"min_distinct2_ratio must lie in \(0, 1\]",
    ),
    (
        "kl-max-nan",
        lambda e: optimize(e, "task.objective.kl.max=nan"),
        r"kl.max must be a number > 0 or null",
    ),
    (
        "kl-prompts-zero",
        lambda e: optimize(e, "task.objective.kl.n_prompts=0"),
        r"kl.n_prompts must be >= 1, got 0",
    ),
    (
        "sqlite-timeout-nan",
        lambda e: optimize(e, "storage.sqlite_timeout=nan"),
        r"storage.sqlite_timeout must be a finite number > 0",
    ),
    (
        "sqlite-timeout-negative",
        lambda e: optimize(e, "storage.sqlite_timeout=-1"),
        r"storage.sqlite_timeout must be a finite number > 0",
    ),
    (
        "heartbeat-zero",
        lambda e: optimize(e, "storage.heartbeat_interval=0"),
        r"storage.heartbeat_interval must be >= 1",
    ),
    (
        "grace-below-heartbeat",
        lambda e: optimize(e, "storage.grace_period=10"),
        r"grace_period must exceed storage.heartbeat_interval",
    ),
    (
        "max-retry-negative",
        lambda e: optimize(e, "storage.max_retry=-1"),
        r"storage.max_retry must be >= 0, got -1",
    ),
    ("n-trials-zero", lambda e: optimize(e, "study.n_trials=0"), r"study.n_trials must be >= 1"),
    (
        "n-trials-huge",
        lambda e: optimize(e, "study.n_trials=1000000000"),
        r"study.n_trials must be <= ",
    ),
    (
        "batch-size-zero",
        lambda e: optimize(e, "task.objective.batch_size=0"),
        r"batch_size must be >= 1",
    ),
    (
        "max-new-tokens-huge",
        lambda e: optimize(e, "+task.objective.max_new_tokens=100000000"),
        r"max_new_tokens must be <= ",
    ),
    (
        "max-prompt-tokens-zero",
        lambda e: optimize(e, "+task.max_prompt_tokens=0"),
        r"task.max_prompt_tokens must be >= 1",
    ),
    (
        "split-zero",
        lambda e: optimize(e, "task.splits.validation=0"),
        r"task.splits.validation must be >= 1",
    ),
    ("limit-zero", lambda e: optimize(e, "task.limit=0"), r"task.limit must be >= 1"),
    (
        "task-name-climbs",
        lambda e: optimize(e, "task.name=../../../x"),
        r"task.name must be a name of letters, digits",
    ),
    ("task-name-slash", lambda e: optimize(e, "task.name=a/b"), r"task.name must be a name"),
    ("task-name-absolute", lambda e: optimize(e, "task.name=/etc"), r"task.name must be a name"),
    ("workers-zero", lambda e: optimize(e, "workers=0"), r"workers must be >= 1"),
    ("worker-rank-negative", lambda e: optimize(e, "worker_rank=-1"), r"worker_rank must be >= 0"),
    (
        "port-out-of-range",
        lambda e: optimize(e, "dashboard.port=70000"),
        r"dashboard.port must lie in \[0, 65535\]",
    ),
    (
        "export-trial-negative",
        lambda e: optimize(e, "export.trial=-1"),
        r"export.trial must be >= 0",
    ),
    (
        "derived-tower-of-powers",
        lambda e: optimize(e, "search_space.derived.layer_alpha='alpha*10**10**10**10'"),
        r"exponents must be numbers of magnitude <= ",
    ),
    (
        "derived-infinite-literal",
        lambda e: optimize(e, "+search_space.derived.boost='alpha*1e999'"),
        r"search_space.derived.boost may only use finite numbers, got '1e309'",
    ),
    (
        "derived-code",
        lambda e: optimize(e, "+search_space.derived.boost='__import__(\"os\")'"),
        r"search_space.derived.boost may use numbers",
    ),
    (
        "derived-too-long",
        lambda e: optimize(e, f"+search_space.derived.boost='alpha{'+1' * 400}'"),
        r"search_space.derived.boost must be at most",
    ),
    ("log-level", lambda e: optimize(e, "log_level=LOUD"), r"log_level must be one of"),
    ("dtype", lambda e: optimize(e, "model.dtype=float64"), r"model.dtype must be one of"),
    ("unknown-key", lambda e: optimize(e, "study.colour=red"), r"study.colour"),
]

TASK_FILES: list[Case] = [
    (
        "yaml-malformed",
        lambda e: task_case(e, "name: bad\ncolumns: {prompt: q\n"),
        r"bad config: .*task/bad.yaml",
    ),
    ("yaml-not-utf8", lambda e: task_case(e, b"name: b\xffd\n"), r"bad config: .*not UTF-8"),
    ("yaml-unknown-key", lambda e: task_case(e, TASK + "colour: red\n"), r"colour"),
    (
        "yaml-name-climbs",
        lambda e: task_case(e, TASK.replace("name: bad", "name: ../evil")),
        r"task.name must be a name",
    ),
    (
        "data-not-utf8",
        lambda e: task_case(e, TASK, b'{"q": "caf\xe9"}\n' * 30),
        r"cannot read task.source",
    ),
    (
        "data-malformed-json",
        lambda e: task_case(e, TASK, '{"q": "x",\n' * 30),
        r"cannot read task.source",
    ),
    (
        "data-missing",
        lambda e: task_case(e, TASK, None),
        r"does not exist|cannot read task.source",
    ),
    ("data-empty", lambda e: task_case(e, TASK, ""), r"has no rows"),
    (
        "data-missing-column",
        lambda e: task_case(e, TASK.replace("prompt: q", "prompt: question")),
        r"column 'question' .* is missing",
    ),
    (
        "template-unknown-field",
        lambda e: task_case(e, TASK.replace('"{prompt}"', '"{prompt} {colour}"')),
        r"unknown field \{colour\}",
    ),
    (
        "template-without-prompt",
        lambda e: task_case(e, TASK.replace('"{prompt}"', '"hello"')),
        r"prompt_template must contain \{prompt\}",
    ),
    ("too-few-rows", lambda e: task_case(e, TASK, ROWS.split("\n", 25)[-1]), r"splits need"),
    (
        "overlapping-splits",
        lambda e: task_case(e, TASK, (json.dumps({"q": "same", "a": "A", "b": "B"}) + "\n") * 30),
        r"splits must not overlap",
    ),
    (
        "data-prompt-too-long",
        lambda e: task_case(e, TASK + "max_prompt_tokens: 2\n", LONG_ROWS),
        r"a prompt \(68 characters, row \d+\) cannot fit task.max_prompt_tokens=2 tokens",
    ),
    (
        "unknown-kind",
        lambda e: task_case(e, TASK.replace("kind: choice_probability", "kind: vibes")),
        r"vibes",
    ),
]

STORAGE: list[Case] = [
    (
        "url-not-a-url",
        lambda e: optimize(e, "storage.url=not-a-url"),
        r"storage.url must be a SQLAlchemy URL",
    ),
    (
        "url-backend",
        lambda e: optimize(e, "storage.url=redis://127.0.0.1/0"),
        r"backend must be one of",
    ),
    (
        "url-password-with-at",
        lambda e: optimize(e, "storage.url=mongodb://u:se@cret@host/db"),
        r"backend must be one of",
    ),
    (
        "sqlite-under-a-file",
        lambda e: optimize(e, f"storage.url=sqlite:///{_regular_file(e)}/study.db"),
        r"cannot open storage .*not a directory",
    ),
    (
        "status-mistyped-output-dir",
        lambda e: ["status", f"output_dir={e.root / 'typo'}"],
        r"no study database at .*typo",
    ),
    (
        "report-mistyped-output-dir",
        lambda e: ["report", f"output_dir={e.root / 'typo'}"],
        r"no study database at .*typo",
    ),
    (
        "status-unknown-study",
        lambda e: ["status", f"output_dir={e.study()}", "study.name=t"],
        r"no study named 't'",
    ),
    (
        "worker-read-only-db",
        lambda e: [
            "worker",
            *e.model_args,
            f"storage.url='sqlite:///file:{e.study()}/study.db?mode=ro&uri=true'",
            "study.name=s",
        ],
        r"cannot (open|use) storage .*readonly database",
    ),
    (
        "worker-without-study",
        lambda e: ["worker", *e.model_args, f"output_dir={e.root / 'typo'}"],
        r"no study database at .*typo",
    ),
]

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

EXPORT: list[Case] = [
    (
        "export-into-output-dir",
        lambda e: e.export_args(e.root / "run"),
        r"export.dir must not be or contain output_dir",
    ),
    (
        "export-into-parent-of-output-dir",
        lambda e: e.export_args(e.root),
        r"export.dir must not be or contain output_dir",
    ),
    (
        "export-onto-study-db",
        lambda e: e.export_args(e.root / "run" / "study.db"),
        r"must not be or contain the study database",
    ),
    (
        "export-into-artifacts",
        lambda e: e.export_args(e.root / "run" / "artifacts"),
        r"must not be or contain artifacts_dir",
    ),
    (
        "export-inside-artifacts",
        lambda e: e.export_args(e.root / "run" / "artifacts" / "b"),
        r"must not lie inside artifacts_dir",
    ),
    (
        "export-onto-a-file",
        lambda e: e.export_args(_regular_file(e)),
        r"export.dir must be a new or empty directory or an earlier bundle, got the file",
    ),
    (
        "export-into-user-folder",
        lambda e: e.export_args(_user_folder(e)),
        r"holding 'thesis.tex' \(no .hpo-bundle marker\); nothing was changed",
    ),
    (
        "export-onto-old-bundle-without-force",
        lambda e: e.export_args(e.bundle(name="old")),
        r"already holds a bundle; set export.force=true",
    ),
    (
        "export-force-keeps-foreign-files",
        lambda e: e.export_args(_marker_plus_foreign(e), "export.force=true"),
        r"holds a bundle plus files it did not write \('notes.txt'\)",
    ),
    (
        "export-under-a-file",
        lambda e: e.export_args(_regular_file(e) / "b"),
        r"lies under .*afile.*not a directory",
    ),
    ("export-unwritable", lambda e: e.export_args("/proc/self/bundle"), r"cannot be written"),
    (
        "export-unknown-trial",
        lambda e: e.export_args(e.root / "b", "export.trial=7"),
        r"export.trial must be a COMPLETE trial",
    ),
    (
        "export-nothing-complete",
        lambda e: e.export_args(e.root / "b"),
        r"has no completed, feasible steered trial",
    ),
    (
        "export-no-study",
        lambda e: ["export", f"output_dir={e.root / 'typo'}", f"export.dir={e.root / 'b'}"],
        r"no study database at .*typo",
    ),
]

CLI: list[Case] = [
    ("cli-unknown-verb", lambda e: ["explode"], r"unknown verb 'explode'"),
    ("cli-unknown-option", lambda e: ["status", "--colour"], r"unknown option '--colour'"),
    (
        "cli-config-dir-missing",
        lambda e: ["status", "--config-dir", str(e.root / "nope")],
        r"--config-dir must be an existing directory",
    ),
    (
        "cli-config-dir-no-value",
        lambda e: ["status", "--config-dir"],
        r"--config-dir needs a directory",
    ),
    ("cli-multirun-not-worker", lambda e: ["status", "-m"], r"-m .* is for `hpo worker`"),
    (
        "cli-unknown-group-option",
        lambda e: ["optimize", "task=nope"],
        r"unknown task 'nope'; choices",
    ),
]

CASES = CONFIG + TASK_FILES + STORAGE + BUNDLES + EXPORT + CLI


def _strip(path: Path, name: str) -> Path:
    (path / name).unlink()
    return path


def _write(path: Path, name: str, data: bytes) -> Path:
    (path / name).write_bytes(data)
    return path


def _uncovered(env: Env) -> Path:
    path = env.bundle()
    meta = json.loads((path / STEERING_JSON).read_text())
    (path / "README.md").write_text("card")
    meta["sha256"] = {"README.md": sha256_file(path / "README.md")}
    (path / STEERING_JSON).write_text(json.dumps(meta))
    return path


def snapshot(root: Path) -> dict[str, tuple[int, str, int]]:
    """Every path under `root` with its size, content hash and mode: what a case may not change."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.name.endswith(("-wal", "-shm")):  # SQLite's own sidecars of an open database
            continue
        st = path.lstat()
        if path.is_dir():  # a folder's mtime moves with SQLite's sidecars: its entries count
            out[str(path.relative_to(root))] = (0, "", st.st_mode)
        else:  # content, not mtime: reading a SQLite study may rewrite it unchanged
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            out[str(path.relative_to(root))] = (st.st_size, digest, st.st_mode)
    return out


@pytest.fixture
def env(
    tmp_path: Path,
    config_only_model: Path,
    template_study: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Env:
    monkeypatch.delenv("HPO_STORAGE_URL", raising=False)
    root = tmp_path / "case"
    root.mkdir()
    monkeypatch.chdir(root)
    return Env(root, config_only_model, template_study)


def test_the_table_has_at_least_sixty_distinct_cases() -> None:
    ids = [c[0] for c in CASES]
    assert len(ids) >= 60
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize(("name", "build", "rule"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_changes_nothing(
    name: str,
    build: Callable[[Env], list[str]],
    rule: str,
    env: Env,
    capsys: pytest.CaptureFixture,
) -> None:
    args = build(env)
    before = snapshot(env.root)
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    verb = args[0]
    assert re.match(rf"hpo {verb}: error: ", lines[0]), lines[0]
    assert re.search(rule, lines[0]), lines[0]
    assert snapshot(env.root) == before, "a refused input changed files"
    if name == "url-password-with-at":
        assert "cret" not in lines[0]


def test_the_hand_made_bundle_of_the_table_is_valid(env: Env) -> None:
    from hpo import load_bundle

    bundle = load_bundle(env.bundle())
    assert sorted(bundle.vectors) == [1]
    assert bundle.alpha == 0.5


def test_status_into_a_closed_pipe_exits_quietly(template_study: Path, tmp_path: Path) -> None:
    """`hpo status | head -0`: no traceback, no "Exception ignored", exit 0."""
    run = tmp_path / "run"
    shutil.copytree(template_study, run)
    env = {k: v for k, v in os.environ.items() if k != "HPO_STORAGE_URL"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hpo", "status", f"output_dir={run}", "study.name=s"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first line is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err
