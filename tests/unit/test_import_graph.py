"""The package's import graph, read from the source (ast; nothing is imported): no cycles, and
no module outside ``builder/backends/`` imports a backend module other than ``base``.

An edge is any import of one of the package's modules: top-level, inside a function (a deferred
import is the usual way to hide a cycle, so it counts) and relative (``from . import x``,
``from .x import y``). Not edges: imports under ``if TYPE_CHECKING:`` (they never run), and an
import of one of the importing module's own parent packages (Python has initialised those
before the module runs, so such an edge cannot order anything).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

import aicoe_spawner

PACKAGE_ROOT = Path(aicoe_spawner.__file__).parent
BACKENDS = "aicoe_spawner.builder.backends"
# The backend registry (backends/__init__.py: BACKENDS, backend_type, choose_backend) and the
# interface (base) are the only ways into backends/ from outside; __main__.py chooses the
# backend through the registry, so no module needs an exception.
BACKENDS_OPEN = ("base",)


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} (line {self.line})"


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file under ``root`` (the package dir)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST):
    """Import statements of ``tree``, skipping the bodies of ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for other in node.orelse:
                yield from _imports(ast.Module(body=[other], type_ignores=[]))
        else:
            yield from _imports(node)


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """Dotted names an import statement may load (modules or attributes; filtered later)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if node.level:
        here = module.split(".") if is_package else module.split(".")[:-1]
        base = here[: len(here) - (node.level - 1)]
        origin = ".".join([*base, node.module] if node.module else base)
    else:
        origin = node.module or ""
    return [origin, *(f"{origin}.{alias.name}" for alias in node.names)]


def import_edges(root: Path, package: str) -> list[Edge]:
    """Every intra-package import edge of the package at ``root``."""
    modules = module_names(root, package)
    edges: dict[tuple[str, str, int], Edge] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        parents = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
        for node in _imports(ast.parse(path.read_text(), filename=str(path))):
            for target in _targets(node, name, is_package):
                # ``import a.b.c`` also loads a.b: its parents are edges too
                chain = target.split(".")
                for i in range(len(chain), 0, -1):
                    candidate = ".".join(chain[:i])
                    if candidate in modules and candidate != name and candidate not in parents:
                        edges.setdefault(
                            (name, candidate, node.lineno), Edge(name, candidate, node.lineno)
                        )
    return list(edges.values())


def cycles(edges: list[Edge]) -> list[list[Edge]]:
    """One cycle (as its edges) per strongly connected component with more than one module
    (breaking it may leave another cycle in the same component: the test then shows that)."""
    graph: dict[str, dict[str, Edge]] = {}
    for e in edges:
        graph.setdefault(e.source, {}).setdefault(e.target, e)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    found = []
    for component in components:
        start = min(component)
        # a shortest way back to start inside the component (breadth first)
        paths = {start: []}
        queue = [start]
        while queue:
            v = queue.pop(0)
            for w, e in sorted(graph.get(v, {}).items()):
                if w == start:
                    found.append([*paths[v], e])
                    queue = []
                    break
                if w in component and w not in paths:
                    paths[w] = [*paths[v], e]
                    queue.append(w)
    return found


def backend_leaks(edges: list[Edge], backends: str, open_: tuple[str, ...]) -> list[Edge]:
    """Imports of a module of ``backends`` (other than ``open_``) from outside ``backends``."""
    allowed = {backends, *(f"{backends}.{m}" for m in open_)}
    return [
        e
        for e in edges
        if e.target.startswith(backends + ".")
        and e.target not in allowed
        and not e.source.startswith(backends + ".")
        and e.source != backends
    ]


def _shown(found: list[list[Edge]]) -> str:
    return "\n".join("cycle:\n  " + "\n  ".join(map(str, c)) for c in found)


# -- the package -------------------------------------------------------------------------


def test_the_package_has_no_import_cycle():
    found = cycles(import_edges(PACKAGE_ROOT, "aicoe_spawner"))
    assert not found, "import cycles in aicoe_spawner:\n" + _shown(found)


def test_only_the_backend_registry_and_interface_are_imported_from_outside_backends():
    leaks = backend_leaks(import_edges(PACKAGE_ROOT, "aicoe_spawner"), BACKENDS, BACKENDS_OPEN)
    assert not leaks, "import a backend through aicoe_spawner.builder.backends:\n" + "\n".join(
        map(str, leaks)
    )


def test_the_graph_sees_the_package():
    """The checks above are about a real graph: the edges we know of are found."""
    edges = {(e.source, e.target) for e in import_edges(PACKAGE_ROOT, "aicoe_spawner")}
    assert ("aicoe_spawner.spawner", "aicoe_spawner.spawn_page") in edges
    assert ("aicoe_spawner.builder.__main__", BACKENDS) in edges
    assert (BACKENDS, f"{BACKENDS}.kubernetes") in edges
    assert ("aicoe_spawner.builder.service", f"{BACKENDS}.base") in edges


# -- the checks on a package made for them ------------------------------------------------


def _package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_a_cycle_through_a_deferred_relative_import_is_reported(tmp_path):
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from . import b\n",
            "b.py": "def f():\n    from .sub.c import g\n",
            "sub/__init__.py": "",
            "sub/c.py": "import pkg.a\n",
            "d.py": "from .a import x\n",  # into the cycle, not part of it
        },
    )
    found = cycles(import_edges(root, "pkg"))
    assert len(found) == 1
    assert [str(e) for e in found[0]] == [
        "pkg.a -> pkg.b (line 1)",
        "pkg.b -> pkg.sub.c (line 2)",
        "pkg.sub.c -> pkg.a (line 1)",
    ]
    assert "cycle:\n  pkg.a -> pkg.b (line 1)" in _shown(found)


def test_type_checking_imports_and_parent_packages_are_not_edges(tmp_path):
    root = _package(
        tmp_path,
        {
            "__init__.py": "from .a import A\n",
            "a.py": "from typing import TYPE_CHECKING\nfrom . import b\nA = 1\n",
            "b.py": "import typing\nif typing.TYPE_CHECKING:\n    from .a import A\nelse:\n"
            "    import os\n",
        },
    )
    edges = import_edges(root, "pkg")
    assert {(e.source, e.target) for e in edges} == {("pkg", "pkg.a"), ("pkg.a", "pkg.b")}
    assert cycles(edges) == []


def test_a_backend_module_imported_from_outside_is_reported(tmp_path):
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "service.py": "from .backends import registry\nfrom .backends.base import B\n",
            "app.py": "from .backends.kube import K\n",
            "main.py": "from .backends import kube\n",
            "backends/__init__.py": "from .kube import K\n",
            "backends/base.py": "",
            "backends/kube.py": "from .base import B\n",
        },
    )
    leaks = backend_leaks(import_edges(root, "pkg"), "pkg.backends", ("base",))
    assert sorted(map(str, leaks)) == [
        "pkg.app -> pkg.backends.kube (line 1)",
        "pkg.main -> pkg.backends.kube (line 1)",
    ]


@pytest.mark.parametrize("module", ["aicoe_spawner.spawner", "aicoe_spawner.builder.service"])
def test_module_names_cover_the_package(module):
    assert module in module_names(PACKAGE_ROOT, "aicoe_spawner")
