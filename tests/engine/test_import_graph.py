"""The shape of core/ and app/, read from their source with `ast` (nothing is imported): no import cycles between
modules or between packages, no module over 600 lines, core/ never imports app/ or Qt, and app/ reaches the engine
only through the Host API (core.host, and core.connect to reach a host) and the VM definition (core.config), as
issue 11 asks.

Every import counts, at module level or inside a function (a deferred import that dodges a cycle is still the
cycle), except those under `if TYPE_CHECKING:`, which never run. `from a.b import c` depends on a.b, and on a.b.c
when that is a module. A package's __init__ is not an implicit dependency of its submodules (Python imports it
first, but only to find them).

The allow-lists name today's exceptions, which helpers are removing; an entry that no longer applies is reported
so the list shrinks with the code.
"""
from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

from tests.helpers.runner import REPO_ROOT

MAX_LINES = 600
ROOTS = ("core", "app")

# Modules over MAX_LINES today, being split (issue 11, "Shape the code for what comes next").
TOO_LONG_ALLOWED: set[str] = set()

# Modules that make a package-level cycle (packages are the first two name components, e.g. app.ui) because they
# sit in the wrong package, and the package each is being moved to; the package graph counts them there.
MISPLACED_ALLOWED: dict[str, str] = {}

# All app/ may import from core/: the Host API's one import, the clients that reach a host (core.connect: beside
# core.host, since they implement its API over core.agent, which serves core.host's LocalHost) and the VM
# definition. Not their submodules either (core.host.api, core.host.local): which module of the package defines a
# name is the package's business.
APP_MAY_IMPORT = ("core.host", "core.connect", "core.config")


@cache
def modules() -> dict[str, Path]:
    """Dotted name -> source file, for every module under ROOTS (a package is its __init__.py)."""
    found: dict[str, Path] = {}
    for root in ROOTS:
        for path in sorted((REPO_ROOT / root).rglob("*.py")):
            parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of every node under an `if TYPE_CHECKING:` (or `typing.TYPE_CHECKING`) block."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            if (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                    isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"):
                for stmt in node.body:
                    skipped.update(id(n) for n in ast.walk(stmt))
    return skipped


@cache
def imported_names(module: str) -> frozenset[str]:
    """Every dotted name `module` imports (resolved for relative imports; `from a import b` gives a.b and a)."""
    path = modules()[module]
    tree = ast.parse(path.read_text(), str(path))
    skipped = _type_checking_nodes(tree)
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            names.add(source)
            names.update(f"{source}.{alias.name}" for alias in node.names)
    return frozenset(names)


@cache
def dependencies(module: str) -> frozenset[str]:
    """The modules under ROOTS that `module` imports."""
    known = modules()
    return frozenset(name for name in imported_names(module) if name in known and name != module)


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the components of more than one node (the cycles), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = counter
                    counter += 1
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph.get(succ, ())))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        cycles.append(sorted(component))
    return cycles


def _describe(cycle: list[str], graph: dict[str, set[str]]) -> str:
    members = set(cycle)
    return "; ".join(f"{m} -> {', '.join(sorted(graph[m] & members))}" for m in cycle)


def module_graph() -> dict[str, set[str]]:
    return {m: set(dependencies(m)) for m in modules()}


def package_of(module: str, misplaced: dict[str, str] | None = None) -> str:
    """core.devices.vga -> core.devices; a top-level module (core.machine) is its own unit. A module listed in
    `misplaced` counts in the package it is being moved to."""
    if misplaced and module in misplaced:
        return misplaced[module]
    return ".".join(module.split(".")[:2])


def package_graph(misplaced: dict[str, str] | None = None) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, deps in module_graph().items():
        unit = package_of(module, misplaced)
        graph.setdefault(unit, set()).update(
            package_of(d, misplaced) for d in deps if package_of(d, misplaced) != unit)
    return graph


def test_the_graph_sees_the_imports() -> None:
    """The checks below rest on the graph: it resolves absolute, relative and deferred imports."""
    assert "core.storage.qcow2_header" in dependencies("core.storage.qcow2")
    assert "core.devices.vga" in dependencies("core.display.renderer")
    assert "core.machine" in dependencies("core.runner")
    assert any(d.startswith("core.storage") for d in dependencies("core.storage"))      # its __init__'s re-exports
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_between_modules() -> None:
    graph = module_graph()
    cycles = strongly_connected(graph)
    assert not cycles, "import cycles: " + " | ".join(_describe(c, graph) for c in cycles)


def test_no_import_cycle_between_packages() -> None:
    graph = package_graph(MISPLACED_ALLOWED)
    cycles = strongly_connected(graph)
    assert not cycles, "package cycles: " + " | ".join(_describe(c, graph) for c in cycles)


def test_no_module_over_600_lines() -> None:
    lengths = {m: len(p.read_text().splitlines()) for m, p in modules().items()}
    too_long = sorted(f"{m} ({n} lines)" for m, n in lengths.items() if n > MAX_LINES and m not in TOO_LONG_ALLOWED)
    assert not too_long, f"modules over {MAX_LINES} lines; split them by purpose: {', '.join(too_long)}"


@pytest.mark.parametrize("forbidden", ["app", "PyQt6"])
def test_core_imports_neither_app_nor_qt(forbidden: str) -> None:
    offenders = sorted(m for m in modules() if m.split(".")[0] == "core"
                       and any(n == forbidden or n.startswith(forbidden + ".") for n in imported_names(m)))
    assert not offenders, f"core/ modules importing {forbidden}: {', '.join(offenders)}"


def test_app_reaches_core_only_through_the_host_api() -> None:
    offenders = sorted((m, d) for m in modules() if m.split(".")[0] == "app" for d in dependencies(m)
                       if d.split(".")[0] == "core" and d not in APP_MAY_IMPORT)
    assert not offenders, ("app/ importing core/ beyond " + " and ".join(APP_MAY_IMPORT) + ": "
                           + ", ".join(f"{m} -> {d}" for m, d in offenders))


def test_allow_lists_name_only_current_exceptions() -> None:
    """A split module, a broken package cycle or a replaced import leaves its entry behind: take it out."""
    lengths = {m: len(p.read_text().splitlines()) for m, p in modules().items()}
    stale = [f"TOO_LONG_ALLOWED: {m}" for m in sorted(TOO_LONG_ALLOWED) if lengths.get(m, 0) <= MAX_LINES]
    in_cycles = {unit for c in strongly_connected(package_graph()) for unit in c}
    stale += [f"MISPLACED_ALLOWED: {m}" for m in sorted(MISPLACED_ALLOWED)
              if m not in modules() or package_of(m) not in in_cycles]
    assert not stale, "allow-list entries that no longer apply (remove them): " + "; ".join(stale)
