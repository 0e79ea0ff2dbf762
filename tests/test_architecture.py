"""The import graph of gradcheckup/ and pytest_gradcheckup/ has no circle.

Every import counts, at module level and inside functions alike (a lazy import still
ties the two modules together), except imports under ``if TYPE_CHECKING:`` (never run)
and the one documented upward edge: ``Report.print`` renders itself by importing
``gradcheckup.rendering`` lazily.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gradcheckup", "pytest_gradcheckup")
# (importing module, enclosing function, imported module): deliberate lazy edges.
ALLOWED_LAZY = {("gradcheckup.report", "Report.print", "gradcheckup.rendering")}

Edge = tuple[str, str, str]  # (importer, enclosing function or "", imported)


def _module_names(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


class _Imports(ast.NodeVisitor):
    """Collects (enclosing function, imported name) for every import outside
    ``if TYPE_CHECKING:`` blocks."""

    def __init__(self, module: str, is_package: bool) -> None:
        self.package = module if is_package else module.rpartition(".")[0]
        self.scope: list[str] = []
        self.found: list[tuple[str, str]] = []

    def _scoped(self, node: ast.AST, name: str) -> None:
        self.scope.append(name)
        self.generic_visit(node)
        self.scope.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._scoped(node, node.name)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._scoped(node, node.name)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self._scoped(node, node.name)

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        ):
            for child in node.orelse:
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.found.append((".".join(self.scope), alias.name))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            anchor = self.package.split(".")
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        for alias in node.names:
            # `from pkg import sub` imports the submodule pkg.sub when there is one.
            self.found.append((".".join(self.scope), f"{base}.{alias.name}"))
            self.found.append((".".join(self.scope), base))


def import_edges(root: Path, packages: tuple[str, ...]) -> set[Edge]:
    """Every import between modules of ``packages`` under ``root``."""
    modules = _module_names(root, packages)
    edges = set()
    for name, path in modules.items():
        collector = _Imports(name, path.name == "__init__.py")
        collector.visit(ast.parse(path.read_text(encoding="utf-8")))
        for function, target in collector.found:
            # Resolve to the longest known module: gradcheckup.report.Report -> report.
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                edges.add((name, function, target))
    return edges


def find_cycle(edges: set[Edge]) -> list[str] | None:
    """One import circle as a path of modules (first == last), or None."""
    graph: dict[str, set[str]] = {}
    for importer, _, imported in edges:
        graph.setdefault(importer, set()).add(imported)
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        path.append(module)
        for imported in sorted(graph.get(module, ())):
            if state.get(imported) == "open":
                return [*path[path.index(imported) :], imported]
            if imported not in state and (cycle := visit(imported)):
                return cycle
        state[module] = "done"
        path.pop()
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_the_import_graph_has_no_cycle() -> None:
    edges = import_edges(ROOT, PACKAGES)
    counted = {edge for edge in edges if edge not in ALLOWED_LAZY}
    cycle = find_cycle(counted)
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_the_allowed_lazy_edge_is_the_only_way_report_reaches_rendering() -> None:
    edges = import_edges(ROOT, PACKAGES)
    assert edges >= ALLOWED_LAZY  # still there, so the exception is not stale
    from_report = {edge for edge in edges if edge[0] == "gradcheckup.report"}
    assert ("gradcheckup.report", "", "gradcheckup.rendering") not in from_report
    assert {imported for _, _, imported in from_report} == {
        "gradcheckup.config",
        "gradcheckup.rendering",
    }


OUTPUTS = {
    "gradcheckup.rendering",
    "gradcheckup.plotting",
    "gradcheckup.exports",
    "gradcheckup.figures",
    "gradcheckup.svg",
    "gradcheckup.html_report",
}


def test_the_rules_and_the_outputs_do_not_import_each_other() -> None:
    edges = import_edges(ROOT, PACKAGES)
    outputs = OUTPUTS
    assert not {
        (importer, imported)
        for importer, _, imported in edges
        if importer in outputs and imported.startswith("gradcheckup.rules")
    }
    assert not {
        (importer, imported)
        for importer, _, imported in edges
        if importer.startswith("gradcheckup.rules") and imported in outputs
    }


def test_a_function_level_import_closing_a_circle_is_found(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.b import helper\n")
    (package / "b.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from pkg import c\n"
        "def helper():\n    from . import a\n    return a\n"
    )
    (package / "c.py").write_text("import pkg.b\n")
    edges = import_edges(tmp_path, ("pkg",))
    assert ("pkg.b", "helper", "pkg.a") in edges and ("pkg.b", "", "pkg.c") not in edges
    assert find_cycle(edges) == ["pkg.a", "pkg.b", "pkg.a"]
    assert find_cycle({edge for edge in edges if edge[1] != "helper"}) is None


def _reachable(edges: set[Edge], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        module = todo.pop()
        for importer, _, imported in edges:
            if importer == module and imported not in seen:
                seen.add(imported)
                todo.append(imported)
    return seen


def test_the_outputs_depend_on_the_results_only() -> None:
    """What the renderer, the exports and the pictures reach is the results and their
    Config (and the charts selected from them), nothing that judges (as in torchinfo,
    whose formatting never imports the driver)."""
    edges = import_edges(ROOT, PACKAGES) - ALLOWED_LAZY
    results = {"gradcheckup.report", "gradcheckup.config"}
    for output in ("gradcheckup.rendering", "gradcheckup.exports", "gradcheckup.figures"):
        assert _reachable(edges, output) == results
    # The pictures draw the charts figures.py selects (the HTML page through svg.py).
    assert _reachable(edges, "gradcheckup.plotting") == {*results, "gradcheckup.figures"}
    assert _reachable(edges, "gradcheckup.svg") == {*results, "gradcheckup.figures"}
    assert _reachable(edges, "gradcheckup.html_report") == {
        *results,
        "gradcheckup.figures",
        "gradcheckup.svg",
    }
