"""The package layering (README "Extending"): no import cycle between ``dhen_cvr``
packages, and each layer imports only the layers below it."""

from __future__ import annotations

import ast
from pathlib import Path

import dhen_cvr

ROOT = Path(dhen_cvr.__file__).parent

# Lower layers first; a package may import only packages of a strictly lower layer.
LAYERS = [
    {"errors", "registry"},
    {"data"},
    {"days"},
    {"model"},
    {"config"},
    {"runtime"},
    {"train", "eval"},
    {"pipeline", "baseline"},  # train-then-evaluate (the GBDT fits and reports too)
    {"study", "search", "serve"},
    {"cli"},
]


def _package(module: str) -> str:
    return module.split(".")[1]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """``package -> packages it imports`` (any import, lazy ones inside functions too)."""
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        module = _module_name(path)
        if module == "dhen_cvr":
            continue
        is_package = path.name == "__init__.py"
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = module.split(".")
                    base = base[: len(base) - node.level + (1 if is_package else 0)]
                    targets.add(".".join([*base, *([node.module] if node.module else [])]))
                elif node.module:
                    targets.add(node.module)
        source = _package(module)
        deps = graph.setdefault(source, set())
        deps |= {_package(t) for t in targets if t.startswith("dhen_cvr.")} - {source}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node], _ = 1, stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node], _ = 2, stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_cycle_detection_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_between_packages() -> None:
    cycle = _cycle(import_graph())
    assert cycle is None, f"import cycle between packages: {' -> '.join(cycle or [])}"


def test_each_package_imports_only_lower_layers() -> None:
    layer = {name: i for i, names in enumerate(LAYERS) for name in names}
    graph = import_graph()
    assert set(graph) <= set(layer), f"packages missing from LAYERS: {set(graph) - set(layer)}"
    upward = sorted(
        f"{src} -> {dst}" for src, deps in graph.items() for dst in deps if layer[dst] >= layer[src]
    )
    assert not upward, f"imports that are not from a lower layer: {upward}"
