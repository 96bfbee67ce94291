"""The package layout's import rules, enforced: torch-free bases, one-way dependencies between the
roles, no circles (function-level imports included; `if TYPE_CHECKING:` blocks excluded)."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("hpo", "objectives", "search_spaces", "storage")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node except those under `if TYPE_CHECKING:` (annotations only, never run)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                stack.extend(child.orelse)
                continue
            stack.append(child)


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules `name` imports at run time (module level or inside functions)."""
    out: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def _role(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "hpo" and len(parts) > 1 else parts[0]


def test_the_import_graph_has_no_circle(graph: dict[str, set[str]]) -> None:
    state: dict[str, int] = {}
    circles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                circles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert circles == []


@pytest.mark.parametrize(
    ("who", "never"),
    [
        ("hpo.core", ("hpo.model", "hpo.steering", "hpo.run", "hpo.export", "hpo.monitor")),
        ("hpo.core", ("hpo.cli", "objectives")),
        ("storage", ("hpo.model", "hpo.steering", "hpo.run", "hpo.export", "hpo.monitor")),
        ("search_spaces", ("hpo.model", "hpo.steering", "hpo.run", "hpo.export", "hpo.monitor")),
        ("objectives", ("hpo.run", "hpo.export", "hpo.monitor", "hpo.cli")),
        ("hpo.model", ("hpo.steering", "hpo.run", "hpo.export", "hpo.monitor", "hpo.cli")),
        ("hpo.steering", ("hpo.run", "hpo.export", "hpo.monitor", "hpo.cli")),
        ("hpo.run", ("hpo.monitor", "hpo.export", "hpo.cli")),
        ("hpo.export", ("hpo.monitor", "hpo.cli")),
        # Monitoring reads studies through the record (hpo.core.record) only.
        ("hpo.monitor", ("hpo.run", "hpo.export", "hpo.cli", "hpo.steering")),
    ],
)
def test_roles_depend_one_way(
    graph: dict[str, set[str]], who: str, never: tuple[str, ...]
) -> None:
    bad = sorted(
        f"{a} -> {b}"
        for a, targets in graph.items()
        if a == who or a.startswith(who + ".")
        for b in targets
        if any(b == n or b.startswith(n + ".") for n in never)
    )
    assert bad == []


def test_no_two_modules_share_a_name() -> None:
    seen: dict[str, list[str]] = {}
    for name, path in project_modules().items():
        if path.name != "__init__.py":
            seen.setdefault(path.stem, []).append(name)
    assert {k: v for k, v in seen.items() if len(v) > 1} == {}


@pytest.mark.parametrize(
    "modules",
    [
        "hpo",
        "hpo.core.config, hpo.core.record, hpo.core.selection, hpo.core.objective_metrics",
        "hpo.core.stats, hpo.core.paths, hpo.core.progress",
        "storage",
        "search_spaces",
        "hpo.cli.command",
    ],
)
def test_torch_free_parts_leave_torch_unloaded(modules: str) -> None:
    code = (
        f"import sys, importlib\nfor m in '{modules}'.split(', '): importlib.import_module(m)\n"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]"
