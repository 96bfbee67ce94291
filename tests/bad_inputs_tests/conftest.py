"""Shared inputs of the bad-input tests: every bad input is one line and exit code 2, and
changes nothing on disk.

Each case builds its inputs in a fresh directory (also the working directory), runs
`hpo <verb>` in-process, and checks the exit code, that stderr is exactly one line (under 300
characters) naming the rule, and that no file under that directory was created, changed or
deleted. None of them loads a model's weights: every rule is checked before that (the model
named is a config-only directory). The cases live with their verb: `test_optimize.py`,
`test_export.py`, `test_generate.py`, ...
"""

from __future__ import annotations

import atexit
import functools
import hashlib
import json
import os
import re
import shutil
import sqlite3
import tempfile
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

MAX_LINE = 300

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


def check_refused(
    name: str,
    build: Callable[[Env], list[str]],
    rule: str,
    env: Env,
    capsys: pytest.CaptureFixture,
) -> str:
    """Run one case: exit 2, one line under `MAX_LINE` characters (with the case's folder
    shown as a short path) stating `rule`, no file under the case's directory changed. Returns
    the line."""
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
    # the message's own length: the case's temp folder stands as a short path a user might have
    shown = lines[0].replace(str(env.root), "/home/me/run")
    assert len(shown) < MAX_LINE, f"{len(shown)} characters: {shown}"
    assert snapshot(env.root) == before, "a refused input changed files"
    if name == "url-password-with-at":
        assert "cret" not in lines[0]
    return lines[0]


def _model_dir(prefix: str) -> Path:
    """A config-only 4-layer model directory of its own, removed when the session ends."""
    from transformers import LlamaConfig

    path = Path(tempfile.mkdtemp(prefix=f"hpo-{prefix}-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    LlamaConfig(
        vocab_size=100,
        hidden_size=HIDDEN,
        intermediate_size=16,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=1,
    ).save_pretrained(path)
    return path


@functools.cache
def tokenizer_model() -> Path:
    """A config-only model with SmolLM2's tokenizer: checks that need token ids (trigger
    patterns) can run, and loading the weights would still fail loudly."""
    from transformers import AutoTokenizer

    from hpo import ModelConfig
    from hpo.model.loading import local_model_dir

    path = _model_dir("tokenizer-model")
    AutoTokenizer.from_pretrained(local_model_dir(ModelConfig())[0]).save_pretrained(path)
    return path


@functools.cache
def auto_map_model() -> Path:
    """A model directory whose config names a remote-code tokenizer (`auto_map`) and holds no
    tokenizer files: no tokenizer can be built from it."""
    path = _model_dir("auto-map-model")
    config = json.loads((path / "config.json").read_text())
    config["auto_map"] = {"AutoTokenizer": ["tokenization_mine.MyTokenizer", None]}
    (path / "config.json").write_text(json.dumps(config))
    return path


def study_with_complete_trial(env: Env, *overrides: str) -> Path:
    """An output dir (`<root>/run`) holding study `s`, made with `overrides`, with one
    completed steered trial to export."""
    import optuna
    from optuna.distributions import FloatDistribution

    from hpo.run.study import open_study

    run = env.root / "run"
    study = open_study(compose_run("study.name=s", f"output_dir={run}", *overrides), join=False)
    study.add_trial(
        optuna.trial.create_trial(
            params={"alpha": 1.0}, distributions={"alpha": FloatDistribution(0.0, 2.0)}, value=0.5
        )
    )
    with sqlite3.connect(run / "study.db") as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return run


def symlink_to_empty_file(env: Env) -> Path:
    """`<root>/link.db` -> an existing empty file: what a reading verb must not write into."""
    empty = env.root / "empty.db"
    empty.touch()
    link = env.root / "link.db"
    link.symlink_to(empty)
    return link
