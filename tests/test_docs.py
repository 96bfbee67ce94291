"""Every code block the README and docs/*.md show stays runnable or composable, and every
relative link points at a file: `hpo <verb> ...` lines of bash blocks and of the verbs table
compose and validate through the real Hydra config in-process (no study runs), python blocks
compile, yaml and ini blocks parse. The blocks that are run for real live in their own tests
(the load_bundle example in tests/hpo_tests/export_tests/test_bundle.py and test_cli.py, the
how-to-extend block in tests/hpo_tests/core_tests/test_registries.py, the Kubernetes Job in
test_cluster.py and test_kubernetes_local.py)."""

from __future__ import annotations

import configparser
import re
import shlex
from pathlib import Path

import pytest
import yaml

from hpo.cli.command import _compose, _split_args, _verbs
from hpo.core.config import to_generate_config, to_run_config
from tests.conftest import REPO, doc_files

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")

TABLE_COMMAND = re.compile(r"^\| `(hpo [^`]*)` \|", re.M)

# `hpo ...` lines that need what a test machine does not have, skipped by their exact text:
SKIPPED = {
    # the verbs table's `--config-dir` row names the user's own folder, which no checkout has
    "hpo optimize --config-dir ~/my_conf task=mine",
    # the verbs table's worker row names no database (the cluster page's lines, which export
    # HPO_STORAGE_URL first, compose storage=postgres)
    "hpo worker study.name=... storage=postgres",
    # a Hydra launcher sweep on a SLURM cluster (submitit); composed for real in test_cluster.py
    "hpo worker -m hydra/launcher=slurm_gpu 'worker_rank=range(0,8)' storage=postgres "
    "study.n_trials=200",
}


def blocks(lang: str) -> list[tuple[str, str]]:
    """(file name, block text) of every fenced block of one language in README.md + docs/."""
    found = []
    for path in doc_files():
        for fence, body in FENCE.findall(path.read_text()):
            if fence == lang:
                found.append((path.relative_to(REPO).as_posix(), body))
    return found


def hpo_lines() -> list[tuple[str, dict[str, str]]]:
    """Every line of a bash block that runs `hpo <verb> ...` (comments stripped), with the
    variables its block's earlier `export NAME=value` lines set."""
    lines = []
    for _, body in blocks("bash"):
        env: dict[str, str] = {}
        for line in body.splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["export"]:
                for word in words[1:]:
                    name, _, value = word.partition("=")
                    env[name] = value
            elif words[:1] == ["hpo"]:
                lines.append((line.split("  #")[0].strip(), dict(env)))
    for path in doc_files():  # the verbs table's commands
        lines += [(line, {}) for line in TABLE_COMMAND.findall(path.read_text())]
    return lines


def test_the_docs_have_each_kind_of_block() -> None:
    assert len(hpo_lines()) >= 8
    assert blocks("python") and blocks("yaml") and blocks("ini")


@pytest.mark.parametrize(("line", "env"), hpo_lines(), ids=[line for line, _ in hpo_lines()])
def test_hpo_lines_compose_through_the_real_config(
    line: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if line in SKIPPED:
        pytest.skip("needs a cluster, a database or a user's folder (see SKIPPED)")
    _, verb, *rest = shlex.split(line, comments=True)
    config_name, _ = _verbs()[verb]
    overrides, config_dirs, _ = _split_args([a for a in rest if a not in ("-m", "--multirun")])
    assert not config_dirs, f"{line!r} needs a user's --config-dir: add it to SKIPPED"
    cfg = _compose(config_name, overrides, config_dirs)
    # the same validation the verb runs first
    if config_name == "hpo":
        to_run_config(cfg)
    else:
        to_generate_config(cfg)


@pytest.mark.parametrize(("name", "body"), blocks("python"))
def test_python_blocks_compile(name: str, body: str) -> None:
    compile(body, name, "exec")


@pytest.mark.parametrize(("name", "body"), blocks("yaml"))
def test_yaml_blocks_parse(name: str, body: str) -> None:
    assert isinstance(yaml.safe_load(body), dict), name


@pytest.mark.parametrize(("name", "body"), blocks("ini"))
def test_ini_blocks_parse(name: str, body: str) -> None:
    parser = configparser.ConfigParser(inline_comment_prefixes=(";",))
    parser.read_string(body, source=name)
    assert parser.sections(), name


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.name)
def test_relative_links_point_at_files(path: Path) -> None:
    for target in LINK.findall(path.read_text()):
        if re.match(r"[a-z]+://|#|mailto:", target):
            continue
        file = target.split("#")[0]
        assert (path.parent / file).exists(), f"{path.name} links to a missing {target!r}"


def test_the_readme_links_every_reference_page() -> None:
    readme = (REPO / "README.md").read_text()
    for page in sorted((REPO / "docs").glob("*.md")):
        assert f"](docs/{page.name})" in readme, f"README does not link docs/{page.name}"
