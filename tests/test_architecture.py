"""The package's shape: no import cycles, no oversized modules, no private names across modules.

Static (``ast``), so it is fast and sees imports inside functions too: a local import that only
hides a cycle from the interpreter is still a cycle in the design.
"""

from __future__ import annotations

import ast
from pathlib import Path

import semicml

PACKAGE_DIR = Path(semicml.__file__).resolve().parent
MAX_LINES = 500
# The method registry imports every method module so that each registers itself (as USB does);
# the methods import the registry back. This is the one cycle by design.
ALLOWED_CYCLE_MODULES = {"semicml.methods.base", "semicml.methods._all"}


def _module_name(path: Path) -> str:
    parts = ["semicml", *path.relative_to(PACKAGE_DIR).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {_module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def _imports(name: str, path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for every import statement in the file."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    out: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.append((module, [alias.name for alias in node.names]))
    return out


def _graph() -> dict[str, set[str]]:
    """Edges between semicml modules; ``from pkg import sub`` counts as an edge to ``pkg.sub``."""
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        edges: set[str] = set()
        for module, names in _imports(name, path):
            if module not in MODULES:
                continue
            subs = [f"{module}.{n}" for n in names if f"{module}.{n}" in MODULES]
            edges.update(subs)
            if len(subs) < len(names) or not names:
                edges.add(module)
        edges.discard(name)
        graph[name] = edges
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_except_the_method_registry():
    graph = _graph()
    # Take the registry's import-all out; what remains must be acyclic.
    pruned = {v: (set() if v == "semicml.methods._all" else edges) for v, edges in graph.items()}
    assert _cycles(pruned) == []
    # And the registry cycle itself stays confined to the registry and the method modules.
    for component in _cycles(graph):
        assert ALLOWED_CYCLE_MODULES <= set(component)
        assert all(m.startswith("semicml.methods.") for m in component), component


def test_no_module_over_500_lines():
    sizes = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    assert {n: s for n, s in sizes.items() if s > MAX_LINES} == {}


def test_no_private_name_imported_across_modules():
    offenders = []
    for name, path in MODULES.items():
        for module, names in _imports(name, path):
            if not module.startswith("semicml"):
                continue
            # Dunders (``__version__``) are public; a private *module* (``methods._all``) may be imported.
            private = [n for n in names if n.startswith("_") and not n.endswith("__")
                       and f"{module}.{n}" not in MODULES]
            offenders += [f"{name}: from {module} import {n}" for n in private]
    assert offenders == []


def test_inference_needs_nothing_from_training():
    graph = _graph()
    seen: set[str] = set()
    todo = [m for m in MODULES if m.startswith("semicml.inference")]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += graph[m]
    assert sorted(m for m in seen if m.startswith(("semicml.engine", "semicml.methods", "semicml.losses"))) == []


def test_graph_sees_relative_and_local_imports():
    # Guard the checker itself: it must resolve ``from ..x import y`` and imports inside functions.
    graph = _graph()
    assert "semicml.config" in graph["semicml.methods.base"]
    assert "semicml.methods._all" in graph["semicml.methods.base"]  # imported inside get_method
