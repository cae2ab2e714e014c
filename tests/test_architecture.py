"""The code's shape, kept by tests: the redesign's (#27) counts must stay at zero.

Each rule reads the source with `ast` (nothing is imported or run): no import cycles between the
project's modules (function-local imports included, since they hide cycles), no function over 80
lines in the four packages, no type switch on layer classes in the flow chain, no environment
read outside a settings module, no `sys.path` edits in the tests.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cpflow", "model_store", "training", "service")
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _imported_names(module: str, path: Path) -> Iterator[str]:
    """Every dotted name `module` imports, relative imports made absolute."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module if path.name == "__init__.py" else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            # `from pkg import name`: the module pkg.name if there is one, else pkg itself
            yield from (f"{base}.{alias.name}" for alias in node.names)


def _import_graph() -> dict[str, set[str]]:
    modules = _modules()

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for name in _imported_names(module, path):
            target = owner(name)
            if target and target != module:
                graph[module].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start, targets in graph.items():
        if start in index:
            continue
        work = [(start, iter(sorted(targets)))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    assert _cycles(_import_graph()) == []


def test_no_function_longer_than_the_limit() -> None:
    long = []
    for path in _modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines})")
    assert long == []


def test_flow_chain_has_no_layer_type_switch() -> None:
    tree = ast.parse((ROOT / "cpflow" / "flow.py").read_text())
    switches = [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Name)
        and node.func.id == "isinstance"
        and "Config" not in ast.unparse(node.args[1])
    ]
    assert switches == []


def _environment_reads(tree: ast.AST) -> Iterator[int]:
    """Lines that read a variable from the process environment.

    Writing one for a child process (`os.environ[k] = v`) or handing a child a copy of the
    whole environment (`{**os.environ, ...}`) reads no setting, so neither counts.
    """
    handled: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store):
            handled.add(id(node.value))
        if isinstance(node, ast.Dict):
            handled.update(id(v) for k, v in zip(node.keys, node.values, strict=True) if k is None)
    for node in ast.walk(tree):
        if id(node) in handled:
            continue
        if isinstance(node, ast.Attribute) and ast.unparse(node) in ("os.environ", "os.getenv"):
            yield node.lineno


def test_environment_read_only_by_settings_modules() -> None:
    readers = [
        f"{path.relative_to(ROOT)}:{line}"
        for path in _modules().values()
        if path.stem != "settings"
        for line in _environment_reads(ast.parse(path.read_text()))
    ]
    assert readers == []


def test_tests_do_not_edit_sys_path() -> None:
    edits = [
        str(path.relative_to(ROOT))
        for path in (ROOT / "tests").rglob("*.py")
        if "sys.path.insert" in path.read_text() and path != Path(__file__).resolve()
    ]
    assert edits == []
