"""The import graph of a package, read with ``ast`` (nothing is imported): which of its modules each module
imports, and whether at module level or inside a function. The architecture test judges it."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Edge:
    """``source`` imports ``target`` (both dotted module names of the package) at ``line``."""

    source: str
    target: str
    line: int
    in_function: bool
    comment: str  # the text after ``#`` on the import's line or the line above it


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_modules(root: Path) -> dict[str, Path]:
    """Every module of the package at ``root`` (a folder with ``__init__.py``), by dotted name."""
    return {module_name(root, p): p for p in sorted(root.rglob("*.py"))}


def _resolve(node: ast.ImportFrom, current: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = current.split(".") if is_package else current.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def _targets(node: ast.Import | ast.ImportFrom, current: str, is_package: bool, modules: set[str]) -> list[str]:
    """The package's modules an import statement loads explicitly: ``from a import b`` names ``a.b`` when that
    is a module, else ``a``. A parent package that Python loads on the way is not counted: a submodule that
    imports a sibling does not thereby import its own ``__init__``."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = _resolve(node, current, is_package)
        names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
    return [n for n in dict.fromkeys(names) if n in modules]


class _Visitor(ast.NodeVisitor):
    def __init__(self, current: str, is_package: bool, modules: set[str], lines: list[str]):
        self.current, self.is_package, self.modules, self.lines = current, is_package, modules, lines
        self.depth = 0
        self.edges: list[Edge] = []

    def _function(self, node: ast.AST) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_FunctionDef = visit_AsyncFunctionDef = visit_Lambda = _function

    def _comment(self, line: int) -> str:
        here = self.lines[line - 1].partition("#")[2].strip()
        above = self.lines[line - 2].strip() if line >= 2 else ""
        return here or (above[1:].strip() if above.startswith("#") else "")

    def _import(self, node: ast.Import | ast.ImportFrom) -> None:
        for target in _targets(node, self.current, self.is_package, self.modules):
            if target != self.current:
                self.edges.append(Edge(self.current, target, node.lineno, self.depth > 0, self._comment(node.lineno)))

    visit_Import = visit_ImportFrom = _import


def import_edges(root: Path) -> list[Edge]:
    """All imports between the modules of the package at ``root``, function-level ones included."""
    modules = package_modules(root)
    edges: list[Edge] = []
    for name, path in modules.items():
        text = path.read_text()
        visitor = _Visitor(name, path.name == "__init__.py", set(modules), text.splitlines())
        visitor.visit(ast.parse(text, filename=str(path)))
        edges += visitor.edges
    return edges


def cycles(edges: list[Edge]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted: every import cycle."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


# The library: what an experiment is made of. It never imports the layers that run experiments.
LIBRARY = ("data", "attacks", "augment", "models", "interop", "objectives", "defenses", "evaluation", "detect")
RUNNERS = ("train", "sweep", "study", "report", "cli")
# What each layer may not import, by the first part of the module's name under the package.
FORBIDDEN = {
    **{part: RUNNERS for part in LIBRARY},
    "train": ("sweep", "study", "report", "cli"),
    "sweep": ("study", "report", "cli"),
    "report": ("study", "cli"),
    "study": ("cli",),
    # the schemas know no component: names are resolved above the registries (resolve.py)
    "config": (*LIBRARY, *RUNNERS, "resolve", "hooks", "cleaning", "registry"),
}


def _part(module: str) -> str:
    """``clipbackdoor.data.csv_source`` -> ``data``; ``clipbackdoor.models`` -> ``models``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def violations(root: Path, allowed_function_level: dict[tuple[str, str], str], exempt: tuple[str, ...]) -> list[str]:
    """Every breach of the architecture in the package at ``root``: an import cycle, an import that points up a
    layer (``FORBIDDEN``), and a function-level import of the package's own modules that is neither in a module
    of ``exempt`` nor on ``allowed_function_level`` ((source, target) -> why)."""
    edges = import_edges(root)
    found = [f"import cycle: {' <-> '.join(c)}" for c in cycles(edges)]
    for e in edges:
        if _part(e.target) in FORBIDDEN.get(_part(e.source), ()):
            found.append(f"{e.source}:{e.line} imports {e.target}: {_part(e.source)} may not import {_part(e.target)}")
        if e.in_function and e.source not in exempt and (e.source, e.target) not in allowed_function_level:
            found.append(f"{e.source}:{e.line} imports {e.target} inside a function (not on the allowlist)")
    return found
