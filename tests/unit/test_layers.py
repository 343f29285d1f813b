"""The packages' layers (docs/architecture.md): imports run down, never up, and never in a circle.

Read from the source with ``ast`` (every import, also those inside functions), so nothing is imported.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("touchpoint", "streams", "projections", "connectors", "backbone", "bench")
GROUND = ("touchpoint.core", "touchpoint.contract")
"""The pure core and the event contract: plain functions over plain data."""
GROUND_MAY_USE = GROUND + ("touchpoint.errors", "touchpoint.jsontext")
ADAPTERS = ("streams", "projections", "connectors")
ENTRY_POINT = "touchpoint.__main__"
"""``python -m touchpoint``: it calls the composition root and nothing imports it."""


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports(path: Path) -> Iterator[str]:
    """The modules of ours ``path`` imports (absolute imports; ours are all absolute)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        else:
            continue
        yield from (name for name in names if name.split(".")[0] in PACKAGES)


def within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


EDGES = {module: set(imports(path)) for module, path in modules().items()}


def offending(rule: str, allowed: tuple[str, ...], of: tuple[str, ...], exempt: tuple[str, ...] = ()) -> list[str]:
    return [f"{module} imports {target} ({rule})" for module, targets in sorted(EDGES.items())
            if within(module, of) and not within(module, exempt) for target in sorted(targets)
            if not within(target, allowed)]


def test_the_core_and_the_contract_import_nothing_of_ours_above_them() -> None:
    assert offending("the ground imports only the ground", GROUND_MAY_USE, GROUND) == []


def test_the_glue_in_touchpoint_imports_no_adapter_nor_the_composition_root() -> None:
    assert offending("touchpoint is the ground the others stand on", ("touchpoint",), ("touchpoint",),
                     exempt=(ENTRY_POINT,)) == []


def test_adapters_import_neither_the_composition_root_nor_the_benchmarks() -> None:
    assert offending("adapters stand on the ground and each other", ("touchpoint", *ADAPTERS), ADAPTERS) == []


def test_the_stages_and_projections_do_not_stand_on_operations_tools_nor_the_front_line() -> None:
    users = sorted(f"{module} imports {target}" for module, targets in EDGES.items()
                   if within(module, ("streams", "projections")) for target in sorted(targets)
                   if within(target, ("connectors.operations", "connectors.frontline")))
    assert users == []


def test_nothing_but_the_entry_point_imports_the_composition_root() -> None:
    users = sorted(module for module, targets in EDGES.items()
                   if not within(module, ("backbone", ENTRY_POINT)) and any(within(t, ("backbone",)) for t in targets))
    assert users == []


def test_no_module_imports_itself_through_others() -> None:
    known = set(EDGES)
    graph = {module: {t for t in targets if t in known and t != module} for module, targets in EDGES.items()}
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(module: str) -> None:  # Tarjan's strongly connected components
        order[module] = low[module] = len(order)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(graph[module]):
            if target not in order:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], order[target])
        if low[module] == order[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for module in sorted(graph):
        if module not in order:
            visit(module)
    assert circles == []


def test_the_check_sees_the_imports_it_judges() -> None:
    """The rules above would pass on an empty graph: the graph holds what the code imports."""
    assert "touchpoint.core.fold" in EDGES["streams.identity"]
    assert "backbone.cli" in EDGES[ENTRY_POINT]
    assert any(within(t, ("connectors",)) for t in EDGES["backbone.cli"])
