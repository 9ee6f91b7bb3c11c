"""The project's modules import each other without cycles.

A cycle works until someone moves an import out of a function or reorders two lines, and it hides
which module a helper belongs to. The walker reads every .py file under the project packages with
`ast` (nothing is imported), resolves absolute and relative imports to project modules, counts the
imports inside functions too (they run, only later), skips `if TYPE_CHECKING:` blocks (they never
run), and reports each cycle by its modules.
"""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGES = ("assistant", "eval", "training")


def project_modules(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under the packages (a package's __init__ is the package)."""
    modules: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Every Import / ImportFrom node that can run, at any depth."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _package_of(module: str, path: Path) -> list[str]:
    parts = module.split(".")
    return parts if path.name == "__init__.py" else parts[:-1]


def _nearest_module(dotted: str, modules: dict[str, Path]) -> str | None:
    """`dotted` itself or the closest enclosing project module (import a.b.c runs a.b.c's file)."""
    parts = dotted.split(".")
    while parts:
        name = ".".join(parts)
        if name in modules:
            return name
        parts.pop()
    return None


def imported_modules(module: str, modules: dict[str, Path]) -> set[str]:
    """The project modules `module` imports, anywhere in its file."""
    path = modules[module]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in _import_nodes(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                package = _package_of(module, path)
                base = package[:len(package) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # `from pkg import name` runs pkg.name when that is a module, else only pkg.
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source
                       for alias in node.names]
        for target in targets:
            resolved = _nearest_module(target, modules)
            if resolved is not None and resolved != module:
                found.add(resolved)
    return found


def import_graph(root: Path, packages=PACKAGES) -> dict[str, set[str]]:
    modules = project_modules(root, packages)
    return {name: imported_modules(name, modules) for name in modules}


def cycle_groups(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected groups of more than one module (Tarjan): each holds at least one cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups, key=min)


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a -> b -> ... -> a) per group of modules that import each other in a circle."""
    return [_cycle_in(group, graph) for group in cycle_groups(graph)]


def _cycle_in(group: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through the group's first module, staying inside the group (breadth first)."""
    start = min(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & group):
                if target == start:
                    return paths[node] + [start]
                if target not in paths:
                    paths[target] = paths[node] + [target]
                    following.append(target)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {sorted(group)}")  # a strongly connected group has one


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


# ------------------------------------------------------------------------------------------- tests

def test_project_has_no_import_cycle():
    graph = import_graph(REPO)
    assert "assistant.cli" in graph and "eval.evaluate" in graph and "training.train" in graph
    problems = [f"{' -> '.join(_cycle_in(group, graph))} (modules in this circle: {', '.join(sorted(group))})"
                for group in cycle_groups(graph)]
    assert not problems, "import cycles: " + "; ".join(problems)


def test_walker_sees_relative_imports_inside_functions(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/ui.py": "from .helpers import shared\n",
        "pkg/helpers.py": "def shared():\n    from . import cli\n",
        "pkg/cli.py": "def run():\n    from .ui import serve\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/leaf.py": "from ..helpers import shared\nimport os\n",
    })
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.sub.leaf"] == {"pkg.helpers"}  # the standard library is not a project module
    assert import_cycles(graph) == [["pkg.cli", "pkg.ui", "pkg.helpers", "pkg.cli"]]


def test_walker_resolves_absolute_imports_and_skips_type_checking(tmp_path):
    _write(tmp_path, {
        "a/__init__.py": "from a import b\n",  # `from package import submodule` runs the submodule
        "a/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import a.c\nelse:\n    import os\n",
        "a/c.py": "import a.b.missing\n",  # resolves to the nearest existing module, a.b
    })
    graph = import_graph(tmp_path, ("a",))
    assert graph == {"a": {"a.b"}, "a.b": set(), "a.c": {"a.b"}}
    assert import_cycles(graph) == []
    _write(tmp_path, {"a/b.py": "import a.c\n"})
    assert import_cycles(import_graph(tmp_path, ("a",))) == [["a.b", "a.c", "a.b"]]
