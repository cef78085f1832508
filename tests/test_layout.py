"""The package layout's import rules (docs/design.md, "Data flow and layout"), checked on the source.

- ``batchstore.dicom`` imports nothing else of batchstore (the package's ``__version__`` aside);
- ``batchstore.net`` imports only ``batchstore.dicom``;
- ``batchstore.sender`` and ``batchstore.receiver`` never import each other;
- ``batchstore.loadgen`` (``batchstore load``) imports ``dicom``, ``net`` and ``sender`` (the SCU engine);
- no module imports ``batchstore.cli`` or ``batchstore.api`` but the CLI itself and the package root;
- no import cycle between modules, counting imports inside functions and under ``TYPE_CHECKING`` too;
- no module of the package is longer than `MAX_LINES`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "batchstore"
MAX_LINES = 650

#: package -> the batchstore packages it may import (besides itself and the root's __version__)
ALLOWED = {
    "dicom": set(),
    "net": {"dicom"},
    "sender": {"dicom", "net"},
    "receiver": {"dicom", "net"},
    "loadgen": {"dicom", "net", "sender"},
    "cli": {"dicom", "net", "sender", "receiver", "loadgen", "api"},
    "api": {"dicom", "net", "sender", "loadgen"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> list[str]:
    """Absolute names a ``from ... import ...`` refers to (modules where a name is a module)."""
    is_package = path.name == "__init__.py"
    base = module.split(".") if is_package else module.split(".")[:-1]
    if node.level:
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    return [target] + [f"{target}.{alias.name}" for alias in node.names]


def _imports() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                candidates = _resolve(name, path, node)
            else:
                continue
            found.update(c for c in candidates if c in modules and c != name)
        graph[name] = found
    return graph


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_import_stays_inside_its_rules() -> None:
    crossings = []
    for module, targets in _imports().items():
        room = _room(module)
        if room == "" or room == "__main__":
            continue  # the package root and `python -m batchstore`
        for target in targets:
            other = _room(target)
            if other in ("", room):  # its own room, or the package root (checked below)
                continue
            if other not in ALLOWED.get(room, set()):
                crossings.append(f"{module} imports {target}")
    assert not crossings, "imports across the layout's lines:\n" + "\n".join(sorted(crossings))


def test_the_leaves_import_nothing_of_batchstore_but_the_version() -> None:
    for path in sorted((PACKAGE / "dicom").rglob("*.py")) + sorted((PACKAGE / "net").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.level and not node.module:
                names = {alias.name for alias in node.names}
                # `from .. import __version__`, or `from . import x` of a sibling
                if node.level > 1:
                    assert names == {"__version__"}, f"{path}: imports {names} from the package root"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    graph = _imports()
    # A package's __init__ imported as part of a submodule's import is not an edge of its own making.
    for module, targets in graph.items():
        graph[module] = {t for t in targets if not module.startswith(t + ".")}
    cycles = _cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize("module", sorted(_modules()))
def test_module_size(module: str) -> None:
    lines = _modules()[module].read_text().count("\n")
    assert lines <= MAX_LINES, f"{module} has {lines} lines (at most {MAX_LINES}): split it by job"


def test_the_checks_can_fail() -> None:
    """The rule checker itself: a made-up crossing and a made-up cycle are found."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _room("batchstore.sender.scan") == "sender"
    assert "receiver" not in ALLOWED["sender"] and "sender" not in ALLOWED["receiver"]
