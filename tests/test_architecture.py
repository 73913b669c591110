"""The layering of docs/architecture.md, read from the source with ``ast`` (nothing is imported).

Every ``import`` and ``from ... import`` counts, function-local ones included: a cycle hidden
inside a function is still a cycle. Run ``python tests/test_architecture.py`` for the import
graph's summary (modules, lines, cycles, violations).
"""
from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Where each installed package lives in the repository (pyproject's package-dir mapping).
PACKAGE_DIRS = {"headwater.kernels": ROOT / "kernels", "headwater.engine": ROOT / "engine", "headwater": ROOT / "headwater"}

LAYERS_ABOVE_METHODS = ("headwater.workflows", "headwater.organism", "headwater.cli")
# Rooms of the user-facing package, lowest first; a room imports only rooms at or below it
# (the organism fixture sits above methods and training, workflows above it, the CLI on top).
ROOM_ORDER = {
    "headwater.kernels": 0,
    "headwater.engine": 1,
    "headwater.data": 2,
    "headwater.methods": 3,
    "headwater.training": 3,
    "headwater.baselines": 4,
    "headwater.audit": 4,
    "headwater.organism": 5,
    "headwater.workflows": 6,
    "headwater.cli": 7,
}


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    lines: int
    imports: list[tuple[str, int]] = field(default_factory=list)  # (imported module, line)
    private: list[tuple[str, int]] = field(default_factory=list)  # (module.name, line)


def discover_modules() -> dict[str, Module]:
    modules: dict[str, Module] = {}
    for package, directory in PACKAGE_DIRS.items():
        for path in sorted(directory.rglob("*.py")):
            rel = path.relative_to(directory).with_suffix("")
            parts = list(rel.parts)
            if package == "headwater" and parts[0] in ("kernels", "engine"):
                continue
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            name = ".".join([package, *parts])
            modules[name] = Module(name, path, is_package, len(path.read_text().splitlines()))
    return modules


def _resolve_relative(module: Module, level: int, target: str | None) -> str:
    base = module.name.split(".")
    if not module.is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([target] if target else []))


def read_imports(modules: dict[str, Module]) -> None:
    """Fill ``imports`` (internal targets, resolved to the most specific module) and ``private``."""
    for module in modules.values():
        tree = ast.parse(module.path.read_text(), filename=str(module.path))
        aliases: dict[str, str] = {}  # local name -> internal module it names
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("headwater"):
                        target = _most_specific(alias.name, modules)
                        module.imports.append((target, node.lineno))
                        aliases[alias.asname or alias.name.split(".")[0]] = (
                            target if alias.asname else alias.name.split(".")[0]
                        )
            elif isinstance(node, ast.ImportFrom):
                base = _resolve_relative(module, node.level, node.module) if node.level else (node.module or "")
                if not base.startswith("headwater"):
                    continue
                for alias in node.names:
                    candidate = f"{base}.{alias.name}"
                    if candidate in modules:  # `from package import submodule`
                        module.imports.append((candidate, node.lineno))
                        aliases[alias.asname or alias.name] = candidate
                        if _is_private(alias.name) and not _same_package(module.name, candidate):
                            module.private.append((candidate, node.lineno))
                    else:
                        target = _most_specific(base, modules)
                        module.imports.append((target, node.lineno))
                        if _is_private(alias.name):
                            module.private.append((f"{target}.{alias.name}", node.lineno))
        for node in ast.walk(tree):  # `module._name` through an imported module
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and _is_private(node.attr):
                target = aliases.get(node.value.id)
                if target is not None and target in modules and target != module.name:
                    module.private.append((f"{target}.{node.attr}", node.lineno))


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _same_package(a: str, b: str) -> bool:
    return a.rsplit(".", 1)[0] == b.rsplit(".", 1)[0]


def _most_specific(name: str, modules: dict[str, Module]) -> str:
    parts = name.split(".")
    while parts and ".".join(parts) not in modules:
        parts.pop()
    return ".".join(parts) if parts else name


def room(name: str) -> str:
    """The room a module belongs to: its package directly under ``headwater`` (or a top module)."""
    parts = name.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else name


def cycles(modules: dict[str, Module]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), or a self-import."""
    graph = {m.name: sorted({t for t, _ in m.imports if t in modules and t != m.name}) for m in modules.values()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    for v in graph:
        if v not in index:
            visit(v)
    return found


def _ancestor_package(importer: str, target: str) -> bool:
    """Importing one's own package ``__init__`` (its re-exports) is not an upward import."""
    return importer.startswith(target + ".")


def layer_violations(modules: dict[str, Module]) -> list[str]:
    problems = []
    for m in modules.values():
        for target, line in m.imports:
            if target not in modules or target == m.name or _ancestor_package(m.name, target):
                continue
            where = f"{m.path.relative_to(ROOT)}:{line}: {m.name} imports {target}"
            src, dst = room(m.name), room(target)
            if src == "headwater.kernels" and dst != "headwater.kernels":
                problems.append(f"{where} (kernels import nothing above them)")
            elif src == "headwater.engine" and dst not in ("headwater.engine", "headwater.kernels"):
                problems.append(f"{where} (the engine imports only kernels)")
            elif dst == "headwater.cli" and src not in ("headwater.cli", "headwater.__main__"):
                problems.append(f"{where} (nothing imports the CLI)")
            elif src == "headwater.methods" and dst in LAYERS_ABOVE_METHODS:
                problems.append(f"{where} (methods import no workflow, organism or CLI)")
            elif src in ROOM_ORDER and dst in ROOM_ORDER and ROOM_ORDER[dst] > ROOM_ORDER[src]:
                problems.append(f"{where} ({src} sits below {dst})")
            elif src in ROOM_ORDER and dst not in ROOM_ORDER and dst != "headwater":
                problems.append(f"{where} ({dst} is not a room of docs/architecture.md)")
    return problems


def private_imports(modules: dict[str, Module]) -> list[str]:
    return [f"{m.path.relative_to(ROOT)}:{line}: {m.name} uses {name}" for m in modules.values() for name, line in m.private]


def loaded() -> dict[str, Module]:
    modules = discover_modules()
    read_imports(modules)
    return modules


# ---------------------------------------------------------------------------------------------
# The rules


def test_the_graph_is_read():
    modules = loaded()
    assert "headwater.kernels.topk" in modules and "headwater.engine.engine" in modules
    assert any(t == "headwater.kernels.similarity" for t, _ in modules["headwater.kernels.topk"].imports)


def test_no_import_cycles():
    assert cycles(loaded()) == []


def test_layers_point_one_way():
    assert layer_violations(loaded()) == []


def test_no_module_uses_another_modules_private_names():
    assert private_imports(loaded()) == []


def test_every_module_belongs_to_a_room():
    """Only the package's face sits directly in headwater/: everything else lives in a room."""
    loose = [m.name for m in loaded().values() if room(m.name) not in ROOM_ORDER
             and m.name not in ("headwater", "headwater.__main__")]
    assert loose == []


def test_the_checks_catch_what_they_claim(tmp_path):
    """The rules themselves: a cycle, an upward import and a private name are each reported."""
    a = Module("headwater.methods.a", tmp_path / "a.py", False, 1, [("headwater.methods.b", 1), ("headwater.cli", 2)],
               [("headwater.methods.b._hidden", 3)])
    b = Module("headwater.methods.b", tmp_path / "b.py", False, 1, [("headwater.methods.a", 1)])
    cli = Module("headwater.cli", tmp_path / "cli.py", True, 1)
    a.path = ROOT / "a.py"
    b.path = ROOT / "b.py"
    cli.path = ROOT / "cli.py"
    graph = {m.name: m for m in (a, b, cli)}
    assert cycles(graph) == [["headwater.methods.a", "headwater.methods.b"]]
    assert any("nothing imports the CLI" in p for p in layer_violations(graph))
    assert private_imports(graph) == ["a.py:3: headwater.methods.a uses headwater.methods.b._hidden"]


if __name__ == "__main__":
    mods = loaded()
    sizes = sorted(((m.lines, m.name) for m in mods.values()), reverse=True)
    print(f"{len(mods)} modules, {sum(m.lines for m in mods.values())} lines; largest:")
    for lines, name in sizes[:12]:
        print(f"  {lines:5d}  {name}")
    print("cycles:", cycles(mods) or "none")
    for line in layer_violations(mods) + private_imports(mods):
        print(" ", line)
