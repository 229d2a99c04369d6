"""The package's layers: every import (module-level or inside a function) runs downward or within
its own part, never in a circle, and nothing imports the command lines."""

import ast
from pathlib import Path

from tests.helpers import REPO

# each part of acestep_jax and its layer; a module imports only parts of lower layers (or its own)
LAYERS = {
    "errors": 0, "profiling": 0, "distributed": 0,
    "files": 1, "nn": 1, "sharding": 1,
    "codec": 2, "text": 2, "models": 2,
    "convert": 3, "sampling": 3, "outputs": 3,
    "lora": 4, "presets": 4,
    "pipeline": 5,
    "training": 6, "loading": 6, "serving": 6,
    "cli": 7,
}


def _modules() -> dict[str, Path]:
    mods = {}
    for f in (REPO / "acestep_jax").rglob("*.py"):
        name = ".".join(f.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        mods[name] = f
    return mods


def _graph() -> dict[str, set[str]]:
    mods = _modules()

    def resolve(name: str) -> str:
        while name not in mods:
            name = name.rpartition(".")[0]
        return name

    graph = {}
    for name, path in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("acestep_jax"):
                deps |= {resolve(f"{node.module}.{a.name}") for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {resolve(a.name) for a in node.names if a.name.startswith("acestep_jax")}
        graph[name] = deps - {name}
    return graph


def _part(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_every_part_has_a_layer():
    assert {_part(m) for m in _graph()} - {""} == set(LAYERS)


def test_imports_run_downward():
    upward = [(m, d) for m, deps in _graph().items() for d in deps
              if _part(m) and _part(d) and _part(m) != _part(d) and LAYERS[_part(d)] >= LAYERS[_part(m)]]
    assert not upward, upward


def test_no_import_cycles():
    graph, seen, cycles = _graph(), {}, []

    def visit(node, path):
        seen[node] = "open"
        for dep in graph[node]:
            if seen.get(dep) == "open":
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in seen:
                visit(dep, path + [dep])
        seen[node] = "done"

    for node in graph:
        if node not in seen:
            visit(node, [node])
    assert not cycles, cycles
