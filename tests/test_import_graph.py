"""No import cycles among the project's own modules.

A cycle works only as long as every module in it reaches the names it takes from the others after
they are defined, which is why cycles get hidden behind function-level imports; this test counts
those too (and ``TYPE_CHECKING`` imports), so the architecture reads as a hierarchy: each module
depends on the ones below it and on nothing above. An import of ``a.b.c`` counts as an edge to
``a.b.c`` only, not to the packages ``a`` and ``a.b`` that Python runs first (a package's
``__init__`` that gathers its submodules' names is not a cycle).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# (directory that holds the top-level package, the top-level package)
SOURCES = [
    (ROOT, ROOT / "tracelet"),
    (ROOT / "instrumentation" / "opentelemetry-instrumentation-tensorboard" / "src",) * 2,
    (ROOT / "exporters" / "opentelemetry-exporter-mlflow" / "src",) * 2,
]


def project_modules() -> dict[str, Path]:
    """Every module of the three packages, by dotted name (a package by its own name)."""
    modules: dict[str, Path] = {}
    for base, top in SOURCES:
        for path in sorted(top.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def add(target: str) -> None:
        while target and target not in modules:  # ``a.b.name``: the module ``a.b`` holds the name
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join([*parent, *([node.module] if node.module else [])])
            else:
                source = node.module or ""
            for alias in node.names:
                add(f"{source}.{alias.name}")  # a submodule (``from pkg import mod``) or a name in ``source``
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each group of two or more modules that import each other (directly or around), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups)


def cycle_through(group: list[str], graph: dict[str, set[str]]) -> list[str]:
    """The shortest import path from the group's first module back to itself, inside the group."""
    members, start = set(group), group[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node] & members):
                if target == start:
                    return [*paths[node], start]
                if target not in paths:
                    paths[target] = [*paths[node], target]
                    following.append(target)
        frontier = following
    raise AssertionError(f"{group} is not a cycle")


def test_the_project_has_no_import_cycle() -> None:
    modules = project_modules()
    expected = {"tracelet.api", "opentelemetry.instrumentation.tensorboard.capture", "opentelemetry.exporter.mlflow"}
    assert expected <= set(modules)
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(
        f"  {' -> '.join(cycle_through(group, graph))}   (all of: {', '.join(group)})" for group in found
    )


def test_the_graph_counts_function_level_and_relative_imports(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    texts = {
        "p": ("p/__init__.py", "from p.a import f\n"),
        "p.a": ("p/a.py", "def f():\n    from p.b import g\n"),
        "p.b": ("p/b.py", "from . import a\n\ng = 1\n"),
        "p.c": ("p/c.py", "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from p import a\n"),
    }
    modules = {name: tmp_path / file for name, (file, _text) in texts.items()}
    for name, (_file, text) in texts.items():
        modules[name].write_text(text)
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    assert graph == {"p": {"p.a"}, "p.a": {"p.b"}, "p.b": {"p.a"}, "p.c": {"p.a"}}
    assert cycles(graph) == [["p.a", "p.b"]]
    assert cycle_through(["p.a", "p.b"], graph) == ["p.a", "p.b", "p.a"]
