"""The import rules of DESIGN section 2, as code: three floors, parts apart, no cycles.

- the command line (`kubearc`) is imported by nothing outside itself;
- the parts (`hub`, `proxy`, `guard`, `agents`) import only the foundation and themselves;
- the foundation imports no part and not the command line;
- the tunnel's protocol core does no I/O (no asyncio, no sockets);
- no two modules import each other, directly or round a longer cycle;
- no route module of the hub imports another: they share lookups through the store layer.

Every import counts, including those under `if TYPE_CHECKING:` and inside functions:
a type-only arrow is still an arrow a reader has to follow.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CLI = "kubearc"
FOUNDATION = "foundation"
PARTS = ("hub", "proxy", "guard", "agents")
PACKAGES = (CLI, FOUNDATION, *PARTS)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "migrations" not in path.parts:
                found[_module_name(path)] = path
    return found


MODULES = _modules()


def _imports(name: str, path: Path) -> Iterator[tuple[int, str]]:
    """(line, imported module) for every import in the file, relative ones resolved."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            yield node.lineno, module
            for alias in node.names:  # `from hub import clusters` imports the module hub.clusters
                if f"{module}.{alias.name}" in MODULES:
                    yield node.lineno, f"{module}.{alias.name}"


def _top(module: str) -> str:
    return module.split(".", 1)[0]


GRAPH: dict[str, set[str]] = {
    name: {target for _, target in _imports(name, path) if target in MODULES and target != name}
    for name, path in MODULES.items()
}


def _violations(allowed: dict[str, set[str]]) -> list[str]:
    """Imports of our own packages that the floors forbid, as 'file:line imports X'."""
    found = []
    for name, path in MODULES.items():
        mine = _top(name)
        for line, target in _imports(name, path):
            top = _top(target)
            if top in PACKAGES and top != mine and top not in allowed[mine]:
                found.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    return found


def test_the_floors_hold_the_command_line_on_top_and_the_foundation_underneath() -> None:
    allowed = {CLI: {FOUNDATION, *PARTS}, FOUNDATION: set()} | {part: {FOUNDATION} for part in PARTS}
    assert _violations(allowed) == []


def test_the_rule_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The walker must catch the forms a refactor might leave behind (not only `import x`)."""
    source = "from kubearc import session\nfrom ..proxy import mux\nimport hub.app\n"
    path = tmp_path / "probe.py"  # read as if it were guard/probe.py
    path.write_text(source)
    found = {target for _, target in _imports("guard.probe", path)}
    assert {"kubearc", "proxy", "hub.app"} <= found


def test_the_tunnel_protocol_core_does_no_io() -> None:
    io = {"asyncio", "socket", "ssl", "selectors", "websockets", "uvloop"}
    found = [
        f"{path.relative_to(ROOT)}:{line} imports {target}"
        for name, path in MODULES.items()
        if name.startswith("proxy.protocol")
        for line, target in _imports(name, path)
        if _top(target) in io
    ]
    assert found == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_two_modules_import_each_other() -> None:
    # Package __init__ modules are left out: importing `hub.issuer.x` runs `hub/issuer/__init__`,
    # which is not an arrow anyone reads.
    graph = {
        name: {t for t in targets if Path(MODULES[t]).name != "__init__.py"}
        for name, targets in GRAPH.items()
    }
    assert _cycles(graph) == []


@pytest.mark.parametrize("package", ["hub", "proxy", "guard"])
def test_no_two_folders_of_a_part_import_each_other(package: str) -> None:
    """Between a part's subfolders too (hub/issuer and hub/rbac, say), arrows run one way."""

    def folder(module: str) -> str:
        return module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]

    graph: dict[str, set[str]] = {}
    for name, targets in GRAPH.items():
        if _top(name) != package:
            continue
        src = folder(name)
        for target in targets:
            if _top(target) == package and not (dst := folder(target)).startswith(src):
                graph.setdefault(src, set()).add(dst)
    assert _cycles(graph) == []


def _route_modules(package: str) -> set[str]:
    """The route modules of `package`: those that define a module-level `routes` list."""
    found = set()
    for name, path in MODULES.items():
        if _top(name) != package:
            continue
        for node in ast.parse(path.read_text(), str(path)).body:
            targets = node.targets if isinstance(node, ast.Assign) else []
            if isinstance(node, ast.AnnAssign):
                targets = [node.target]
            if any(isinstance(t, ast.Name) and t.id == "routes" for t in targets):
                found.add(name)
    return found


def test_no_route_module_of_the_hub_imports_another() -> None:
    """A route module is read and changed alone: what two of them need lives below both."""
    routes = _route_modules("hub")
    assert {"hub.clusters", "hub.configurations", "hub.agentapi", "hub.rbac.routes"} <= routes
    found = sorted(
        f"{MODULES[name].relative_to(ROOT)} imports {target}"
        for name in routes
        for target in GRAPH[name] & routes
    )
    assert found == []
