"""Every plain module imports, and the project's modules import each other in no circle.

Arrows point one way (DESIGN §3): models imports nothing from sweep, analysis or app; analysis
reads models only through the torch-free `models.stepfiles`. The module-level imports form no
circle, and neither do they with the imports inside functions added (those are kept for cheap,
torch-free entry points, never to hide a circle); `if TYPE_CHECKING:` blocks are left out.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("models", "sweep", "analysis", "app")
SCRIPTS = ("app/page_scripts",)  # Streamlit page scripts run st.* when imported: not plain modules


def _modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT)
            if any(str(rel).startswith(s) for s in SCRIPTS):
                continue
            parts = list(rel.with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _type_checking(node: ast.stmt) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _top_level_imports(tree: ast.Module) -> list[ast.stmt]:
    """Import statements that run when the module is imported (not in functions or classes)."""
    out, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        elif isinstance(node, (ast.If, ast.Try, ast.With)) and not _type_checking(node):
            todo += [n for field in ("body", "orelse", "finalbody", "handlers") for n in getattr(node, field, [])
                     if isinstance(n, ast.stmt)]
            todo += [s for h in getattr(node, "handlers", []) for s in h.body]
    return out


def _targets(node: ast.stmt, module: str) -> set[str]:
    names: set[str] = set()
    if isinstance(node, ast.Import):
        names = {a.name for a in node.names}
    else:
        base = node.module or ""
        if node.level:  # relative: from .x import y
            pkg = module.split(".")[: len(module.split(".")) - node.level + (module in _packages())]
            base = ".".join(pkg + ([base] if base else []))
        names = {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}
    return {n for n in names if n in MODULES}


def _packages() -> set[str]:
    return {m for m, p in MODULES.items() if p.name == "__init__.py"}


def _all_imports(tree: ast.Module) -> list[ast.stmt]:
    """Every import statement, those inside functions included, less `if TYPE_CHECKING:` ones."""
    hidden = {id(n) for block in ast.walk(tree) if isinstance(block, ast.stmt) and _type_checking(block)
              for n in ast.walk(block)}
    return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in hidden]


def import_graph(*, lazy: bool = False) -> dict[str, set[str]]:
    """module → the project modules it imports (at module level; with `lazy`, anywhere)."""
    graph = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text())
        edges: set[str] = set()
        for node in (_all_imports(tree) if lazy else _top_level_imports(tree)):
            edges |= _targets(node, module)
        graph[module] = edges - {module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = finished
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_plain_module_imports(module):
    importlib.import_module(module)


@pytest.mark.parametrize("lazy", [False, True], ids=["module-level", "with-function-level"])
def test_no_import_circle(lazy):
    graph = import_graph(lazy=lazy)
    assert sum(map(len, graph.values())) > 100  # the parser sees the project's imports
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " → ".join(cycle)


def test_the_graph_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_layers_point_one_way():
    graph = import_graph()
    for module, edges in graph.items():
        if module.startswith("models"):
            assert not {e for e in edges if e.split(".")[0] in ("sweep", "analysis", "app")}, module
        if module.startswith("analysis"):
            assert not {e for e in edges if e.startswith("models") and e != "models.stepfiles"
                        and e != "models"}, module
