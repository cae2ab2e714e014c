"""cpflow's modules import each other without cycles, counting every import statement (at
module level and inside functions, where a cycle hides), and the library imports nothing of
the packages built on it."""

from __future__ import annotations

import ast
from pathlib import Path

import cpflow

PACKAGE = Path(cpflow.__file__).parent


def _module_name(path: Path) -> str:
    parts = ["cpflow", *path.relative_to(PACKAGE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str) -> set[str]:
    """Every module named by an import statement anywhere in the file (relative ones
    resolved; ``from m import x`` names m and m.x, whichever is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the cpflow modules it imports."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for target in _imports(path, name):
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add(target)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_sees_function_local_imports_and_cycles(tmp_path: Path) -> None:
    module = tmp_path / "coupling.py"
    module.write_text("import torch\n\ndef f():\n    from .flow import CPFlow\n")
    assert _imports(module, "cpflow.coupling") == {"torch", "cpflow.flow", "cpflow.flow.CPFlow"}
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_cpflow_has_no_import_cycles() -> None:
    graph = import_graph()
    assert "cpflow.layers" in graph["cpflow.flow"]  # the graph sees the package at all
    assert cycles(graph) == []


def test_cpflow_imports_none_of_the_packages_built_on_it() -> None:
    for path in PACKAGE.rglob("*.py"):
        for target in _imports(path, _module_name(path)):
            top = target.partition(".")[0]
            assert top not in {"model_store", "training", "service", "bench"}, (path, target)
