"""The package's shape: the protocol core does no I/O, and no module imports itself in a
circle (read from the source with ``ast``, so a lazy import inside a function counts too)."""

from __future__ import annotations

import ast
from pathlib import Path

import trio_tunnel

PACKAGE = Path(trio_tunnel.__file__).parent
IO_MODULES = {"trio", "trio_websocket", "socket", "ssl", "asyncio", "selectors", "time"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module ``path`` imports, as absolute names."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):  # imports only for type checking never run: drop them
        if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING":
            node.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            # "from . import _ws" imports the module _ws
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: {m for m in _imports(path) if m in modules and m != name}
        for name, path in modules.items()
    }


def test_the_protocol_core_imports_no_io() -> None:
    core = [p for p in (PACKAGE / "_protocol").rglob("*.py")]
    assert core
    for path in core:
        roots = {m.split(".")[0] for m in _imports(path)}
        assert not roots & IO_MODULES, (path.name, roots & IO_MODULES)


def test_no_import_cycles() -> None:
    graph = _graph()
    # Importing a package runs its __init__: a cycle through a package's own facade is
    # not a cycle of modules, so ignore edges into trio_tunnel itself.
    graph = {name: deps - {"trio_tunnel"} for name, deps in graph.items()}
    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        assert name not in visiting, " -> ".join([*visiting[visiting.index(name) :], name])
        visiting.append(name)
        for dep in sorted(graph[name]):
            # trio_tunnel._protocol._x importing trio_tunnel._protocol is its package init.
            if not name.startswith(dep + "."):
                visit(dep)
        visiting.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)
