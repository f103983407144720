"""The package's structure: layers import downward only, no import cycles, no private names
across modules, and no library module importing the CLI.

Every import counts, at module level or inside a function (a lazy import that hides a
cycle is still a cycle). See ``docs/architecture.md`` for the layers.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"

#: Top-level parts of ``prosam`` from the bottom up. A part may import its own modules and
#: the parts of lower layers; parts of one layer are siblings and do not import each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("prosam", "prosam.errors"),
    ("prosam.io",),
    ("prosam.core",),
    ("prosam.sam", "prosam.prompts"),
    ("prosam.data", "prosam.backbones", "prosam.metrics", "prosam.visualize", "prosam.pretrained"),
    ("prosam.methods", "prosam.stable"),
    ("prosam.evaluation", "prosam.quality"),
    ("prosam.label",),
    ("prosam.app",),
    ("prosam.cli",),
)

#: Known violations, as ``"kind: detail"`` strings. The list only ever shrinks.
ALLOWED: set[str] = set()


@dataclass(frozen=True)
class ImportEdge:
    source: str  # importing module
    target: str  # imported module
    name: str | None  # the imported name, for ``from target import name``
    line: int


def module_name(path: Path, base: Path) -> str:
    parts = list(path.relative_to(base).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def library_modules() -> dict[str, Path]:
    return {module_name(p, SRC): p for p in sorted((SRC / "prosam").rglob("*.py"))}


def absolute_target(module: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join(package + ([node.module] if node.module else []))


def import_edges(module: str, path: Path, known: dict[str, Path]) -> list[ImportEdge]:
    """Every ``prosam`` import in ``path``, resolved to the module it loads."""
    edges = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            pairs = [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = absolute_target(module, path, node)
            pairs = [
                (f"{base}.{a.name}", None) if f"{base}.{a.name}" in known else (base, a.name)
                for a in node.names
            ]
        else:
            continue
        for target, name in pairs:
            if target == "prosam" or target.startswith("prosam."):
                while target not in known and "." in target:
                    target = target.rsplit(".", 1)[0]
                edges.append(ImportEdge(module, target, name, node.lineno))
    return edges


def part_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else parts[0]


def layer_of(part: str) -> int:
    for i, layer in enumerate(LAYERS):
        if part in layer:
            return i
    raise AssertionError(f"{part} is in no layer: add it to LAYERS (and docs/architecture.md)")


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def private_package_of(module: str) -> str | None:
    """The package a private module (``pkg._mod``) belongs to, or None for a public one."""
    parts = module.split(".")
    for i, part in enumerate(parts):
        if is_private(part):
            return ".".join(parts[:i])
    return None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
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
    return found


def library_violations() -> set[str]:
    known = library_modules()
    graph: dict[str, set[str]] = {m: set() for m in known}
    found: set[str] = set()
    for module, path in known.items():
        for edge in import_edges(module, path, known):
            if edge.target == module:
                continue
            graph[module].add(edge.target)
            source_part, target_part = part_of(module), part_of(edge.target)
            if edge.name and is_private(edge.name):
                found.add(f"private: {module} imports {edge.target}.{edge.name}")
            hidden = private_package_of(edge.target)
            if hidden and module != hidden and not module.startswith(hidden + "."):
                found.add(f"private: {module} imports {edge.target}")
            if source_part == target_part:
                continue
            if layer_of(target_part) >= layer_of(source_part):
                found.add(f"layer: {module} imports {edge.target}")
    found.update(f"cycle: {' <-> '.join(c)}" for c in cycles(graph))
    return found


def private_uses_outside(folder: Path) -> set[str]:
    """``from prosam.x import _name`` and ``alias._name`` on an imported prosam module, in
    tests or benchmarks (their own helpers are fine)."""
    known = library_modules()
    found: set[str] = set()
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        aliases: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("prosam"):
                        aliases.add(a.asname or a.name.split(".")[0])
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("prosam"):
                for a in node.names:
                    if is_private(a.name):
                        found.add(f"private: {path.name} imports {node.module}.{a.name}")
                    elif f"{node.module}.{a.name}" in known:
                        aliases.add(a.asname or a.name)
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and is_private(node.attr)
            ):
                found.add(f"private: {path.name} uses {node.value.id}.{node.attr}")
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "setattr"
                and len(node.args) >= 2
                and isinstance(node.args[0], ast.Name)
                and node.args[0].id in aliases
                and isinstance(node.args[1], ast.Constant)
                and isinstance(node.args[1].value, str)
                and is_private(node.args[1].value)
            ):
                found.add(f"private: {path.name} patches {node.args[0].id}.{node.args[1].value}")
    return found


def all_violations() -> set[str]:
    return (
        library_violations()
        | private_uses_outside(ROOT / "tests")
        | private_uses_outside(ROOT / "benchmarks")
    )


def test_no_new_violations() -> None:
    new = sorted(all_violations() - ALLOWED)
    assert not new, "structure violations (see docs/architecture.md):\n" + "\n".join(new)


def test_allow_list_has_no_stale_entries() -> None:
    stale = sorted(ALLOWED - all_violations())
    assert not stale, "fixed: delete these from ALLOWED:\n" + "\n".join(stale)


def test_every_part_has_a_layer() -> None:
    for module in library_modules():
        layer_of(part_of(module))


def test_guard_catches_a_cycle_an_upward_import_and_a_private_name(tmp_path: Path) -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert layer_of("prosam.cli") > layer_of("prosam.label") > layer_of("prosam.sam")
    script = tmp_path / "t.py"
    script.write_text(
        "import prosam.label.job as job\n"
        "from prosam.io import _hidden\n"
        "job._secret()\n"
        "monkeypatch.setattr(job, '_other', 1)\n"
    )
    found = private_uses_outside(tmp_path)
    assert found == {
        "private: t.py imports prosam.io._hidden",
        "private: t.py uses job._secret",
        "private: t.py patches job._other",
    }


@pytest.mark.parametrize("layer", range(len(LAYERS)))
def test_layers_name_real_parts(layer: int) -> None:
    parts = {part_of(m) for m in library_modules()}
    missing = [p for p in LAYERS[layer] if p not in parts]
    assert not missing, f"LAYERS names parts that do not exist: {missing}"
