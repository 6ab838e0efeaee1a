"""The library's layering, checked from the code's own imports (docs/DESIGN.md "Layout").

Every ``import`` statement of ``elp/`` (module level and inside functions; docstring examples
are text, not imports) is an edge of the module graph. The graph must have no cycle, and a
module may import only its own layer and the layers below it.
"""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: the layers from the ground up; a module imports only its own layer and those below it
LAYERS = ["runtime", "core", "data", "eval", "tasks", "train", "serve", "bench", "commands", "cli"]
#: test fixtures: imported by tests and docstring examples only
FIXTURES = "testing"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def elp_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted((ROOT / "elp").rglob("*.py"))}


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The elp modules ``path`` imports (``from elp.x import y`` counts module ``elp.x.y`` when
    that is a module, else ``elp.x``)."""
    found = set()
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name.startswith("elp") and name != this:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = elp_modules()
    return {name: imported_modules(path, set(modules)) for name, path in modules.items()}


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "runtime"  # the package's own __init__ is the ground


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph.get(node, ()):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_graph_sees_real_imports():
    graph = import_graph()
    assert "elp.core.backbones" in graph["elp.core.model"]
    assert "elp.tasks.windows" in graph["elp.tasks.sv"] and "elp.tasks.sv" in graph["elp.train.brains.sv"]


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_cycle_detection_finds_a_planted_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_a_higher_layer():
    graph = import_graph()
    upward = []
    for module, deps in graph.items():
        layer = layer_of(module)
        if layer == FIXTURES:
            continue
        assert layer in LAYERS, f"{module}: layer {layer!r} is not one of {LAYERS}; add it to the list"
        for dep in deps:
            dep_layer = layer_of(dep)
            if dep_layer == FIXTURES:
                upward.append(f"{module} -> {dep} (test fixtures)")
            elif LAYERS.index(dep_layer) > LAYERS.index(layer):
                upward.append(f"{module} ({layer}) -> {dep} ({dep_layer})")
    assert upward == []


def test_root_holds_few_modules():
    root_modules = sorted(p.name for p in (ROOT / "elp").glob("*.py"))
    assert len(root_modules) <= 8, root_modules


@pytest.mark.parametrize("folder", ["recipes", "tools", "egs"])
def test_production_code_and_yaml_never_use_the_test_fixtures(folder):
    pattern = re.compile(r"\belp\.testing\b")
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / folder).rglob("*")
                 if p.suffix in (".py", ".yaml", ".sh") and pattern.search(p.read_text())]
    assert offenders == []
