"""The package's import graph: no circle, and no layer imports one above it.

Every ``import xlt...`` counts, also those inside functions (a lazy import
hides a circle, it does not remove it)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Lowest first; a module may import its own layer and those below.
LAYERS = [
    {"xlt", "xlt.errors", "xlt.progress", "xlt.artifacts", "xlt.cores", "xlt.stopping", "xlt.rundir", "xlt.checkpoints",
     "xlt.revisions", "xlt.environment"},
    {"xlt.config"},
    {"xlt.data"},
    {"xlt.models"},
    {"xlt.evaluation"},
    {"xlt.tasks"},
    {"xlt.contract", "xlt.keys", "xlt.results", "xlt.tracking"},
    {"xlt.stages"},
    {"xlt.report", "xlt.analysis", "xlt.demo"},
    {"xlt.cli", "xlt.__main__"},
]
# The layers the issue names: none of them imports a layer above it.
CHECKED = ("xlt.stages", "xlt.tasks", "xlt.evaluation", "xlt.models", "xlt.data")


def module_name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    return name.removesuffix(".__init__")


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The xlt modules ``path`` imports (``from xlt.a import b`` is ``xlt.a.b``
    when that is a module, else ``xlt.a``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] == "xlt":
            for alias in node.names:
                found.add(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "xlt"}
    return found


def graph() -> dict[str, set[str]]:
    paths = sorted((ROOT / "xlt").rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, modules) - {module_name(p)} for p in paths}


def layer(module: str) -> int:
    package = ".".join(module.split(".")[:2])
    return next(i for i, names in enumerate(LAYERS) if package in names or module in names)


def test_no_import_circle():
    edges = graph()
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(edges.get(module, ())):
            if state.get(target) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(target):] + [target]))
            if target in edges and not state.get(target):
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(edges):
        if not state.get(module):
            visit(module, [module])


def test_no_layer_imports_one_above_it():
    edges = graph()
    every = {".".join(m.split(".")[:2]) for m in edges}
    assert every <= set().union(*LAYERS), f"modules without a layer: {every - set().union(*LAYERS)}"
    upward = [f"{a} imports {b}" for a, targets in edges.items() for b in targets if layer(b) > layer(a)]
    assert not upward, upward
    checked = [f"{a} imports {b}" for a, targets in edges.items() if a.startswith(CHECKED) for b in targets
               if layer(b) > layer(a)]
    assert not checked


def test_the_walk_sees_lazy_imports():
    """An import inside a function counts (the circle config -> data -> config was one)."""
    edges = graph()
    assert "xlt.data.parallel" in edges["xlt.keys"]  # keys.corpus_path imports it inside the function
