"""The import layers of cockpit_api, checked from the source (ARCHITECTURE.md "Rooms").

rewrite_imports: skip (the names below are the rooms themselves, not modules to rename)

Every module of the package (handlers/ and backends/ included, as cockpit_api.handlers and
cockpit_api.backends) belongs to one room, and the rooms are stacked: a module may import
its own room and the rooms below it, never one above or beside it, and nothing may form a
circle. Imports inside functions and under ``TYPE_CHECKING`` count too, so neither can hide
an arrow. The two tests at the end run the same check on a copy of the tree with one bad
import added, to show that it fails.
"""

from __future__ import annotations

import ast
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "cockpit_api"

# Top to bottom. A room is a module or a package (a dotted prefix); a module belongs to the
# longest room naming it. Rooms in one tuple sit side by side: they may not import each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("cockpit_api.cli",),
    ("cockpit_api.twin",),  # tools run against a deployment: the twin takes a snapshot
    ("cockpit_api.snapshot",),
    ("cockpit_api.app",),
    ("cockpit_api.handlers",),
    ("cockpit_api.sandboxes",),
    ("cockpit_api.world",),
    ("cockpit_api.ops.audit",),  # the audit log's writer wraps the app; it answers problems
    ("cockpit_api.http", "cockpit_api.conformance"),
    ("cockpit_api.state",),
    ("cockpit_api.feed",),
    ("cockpit_api.ops",),  # Prometheus and logs
    ("cockpit_api.auth",),
    ("cockpit_api.shapes",),
    ("cockpit_api.config",),
    ("cockpit_api.store",),
    # the backends import nothing from the server
    ("cockpit_api.backends.sim", "cockpit_api.backends.libvirt", "cockpit_api.backends"),
    ("cockpit_api.backends.inventory", "cockpit_api.backends.jobstore"),
    ("cockpit_api.backends.base",),
    ("cockpit_api",),  # the package itself (no code)
)
# The repository's top-level folders are installed under the package: importing them by
# their bare names would load every module twice.
BARE = ("handlers", "backends")


def modules(root: Path) -> dict[str, Path]:
    """Dotted name -> file, for every module of the package under ``root`` (links followed)."""
    found = {}
    base = root / PACKAGE
    for folder, dirs, files in os.walk(base, followlinks=True):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        rel = Path(folder).relative_to(root)
        for f in files:
            if f.endswith(".py"):
                parts = [*rel.parts] + ([] if f == "__init__.py" else [f[:-3]])
                found[".".join(parts)] = Path(folder) / f
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """(imported module, line) for every import in the file, wherever it stands."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                yield (full if full in known else target), node.lineno


def room_of(module: str) -> tuple[int, str]:
    """(layer index, room) of a module: the longest room that names it."""
    best: tuple[int, str] | None = None
    for i, layer in enumerate(LAYERS):
        for room in layer:
            if (module == room or module.startswith(room + ".")) and (
                    best is None or len(room) > len(best[1])):
                best = (i, room)
    assert best is not None, f"{module} is in no room: add it to LAYERS"
    return best


def problems(root: Path) -> list[str]:
    known = modules(root)
    graph: dict[str, set[str]] = {m: set() for m in known}
    found = []
    for name, path in sorted(known.items()):
        layer, room = room_of(name)
        for target, line in imports(name, path, known):
            where = f"{path.relative_to(root)}:{line}"
            if target.split(".")[0] in BARE:
                found.append(f"{where}: imports {target}; use {PACKAGE}.{target}")
                continue
            if target not in known:
                continue  # the standard library or a dependency
            graph[name].add(target)
            t_layer, t_room = room_of(target)
            if t_room == room:
                continue
            if t_layer < layer:
                found.append(f"{where}: {name} imports {target}, a room above it ({t_room})")
            elif t_layer == layer:
                found.append(f"{where}: {name} imports {target}, a room beside it ({t_room})")
    found = list(dict.fromkeys(found))  # one line per import, not per imported name
    found += [f"import circle among {', '.join(c)}" for c in circles(graph)]
    return found


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each as a path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:  # the package is ~80 modules: recursion is fine
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_rooms_are_stacked_without_circles() -> None:
    assert problems(ROOT) == []


def test_every_module_is_in_a_room() -> None:
    for name in modules(ROOT):
        room_of(name)  # raises for a module no room names


def _copy(tmp_path: Path) -> Path:
    """The package as the checker sees it, copied (links resolved) into tmp_path."""
    shutil.copytree(ROOT / PACKAGE, tmp_path / PACKAGE, symlinks=False,
                    ignore=shutil.ignore_patterns("__pycache__", "dashboard", "*.yaml"))
    return tmp_path


def test_an_upward_import_fails_the_check(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    base = root / PACKAGE / "backends" / "base.py"
    base.write_text(base.read_text() + "\nfrom cockpit_api.store import Store  # noqa\n")
    found = problems(root)
    assert any("cockpit_api.backends.base imports cockpit_api.store, a room above it" in p
               for p in found), found


def test_a_circle_fails_the_check(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    # inside one room (no layer rule applies), behind a function: still a circle
    base = root / PACKAGE / "http" / "served_spec.py"
    base.write_text(base.read_text() + "\n\ndef _late() -> None:\n"
                    "    from cockpit_api.http import problems  # noqa\n")
    found = problems(root)
    assert any(p.startswith("import circle among") and "cockpit_api.http.problems" in p
               and "cockpit_api.http.served_spec" in p for p in found), found


def test_a_bare_top_level_import_fails_the_check(tmp_path: Path) -> None:
    root = _copy(tmp_path)
    vms = root / PACKAGE / "handlers" / "vms.py"
    vms.write_text(vms.read_text() + "\nimport backends.base  # noqa\n")
    assert any("imports backends.base; use cockpit_api.backends.base" in p
               for p in problems(root))
