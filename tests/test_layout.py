"""The house: dependencies point one way (commands -> pipeline -> stages -> components ->
registry), no import cycles, click only in the commands package."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _modules() -> dict[str, Path]:
    out = {}
    for package in ("ipd_plugins", "registry"):
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def _imports(path: Path) -> set[str]:
    """Every module named by an import that runs (``if TYPE_CHECKING:`` blocks left out)."""
    tree = ast.parse(path.read_text())
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for n in ast.walk(node)}
    names = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
    return names


def _graph() -> dict[str, set[str]]:
    modules = _modules()

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        deps = {owner(i) for i in _imports(path)} - {None, name}
        # a package's __init__ re-exporting its own modules is not a dependency edge
        graph[name] = {
            d for d in deps if not (d.startswith(name + ".") and path.stem == "__init__")
        }
    return graph


def test_registry_depends_on_nothing_of_ipd_plugins():
    graph = _graph()
    bad = {(m, d) for m, deps in graph.items() if m.startswith("registry") for d in deps}
    assert not {(m, d) for m, d in bad if d.startswith("ipd_plugins")}, bad


def test_only_the_commands_package_uses_click_or_commands():
    for name, path in _modules().items():
        if name.startswith("ipd_plugins.commands"):
            continue
        imports = _imports(path)
        assert "click" not in imports, name
        assert not any(i.startswith("ipd_plugins.commands") for i in imports), name


def test_no_import_cycles():
    graph = _graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
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
                cycles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert cycles == []
