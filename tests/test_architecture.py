"""The imports point the way docs/ARCHITECTURE.md says.

The table "Rooms and what each may import" in docs/ARCHITECTURE.md is read
here: each module of the project belongs to the room with the longest
matching prefix, and each of its imports (module level or inside a function,
absolute or relative) must land in its own room or in one the table allows.
The map and the code cannot drift apart: a new arrow needs a new word in the
map.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAP = REPO / "docs" / "ARCHITECTURE.md"
APPS = ("kernel", "archive", "booking", "portal", "preservation", "research", "pacs", "idp", "fse_gateway")
TABLE_TITLE = "## Rooms and what each may import"


@dataclass(frozen=True)
class Room:
    name: str
    prefixes: tuple[str, ...]
    may_import: frozenset[str]


def rooms_read(text: str) -> list[Room]:
    """The rooms of the map's table: name, module prefixes, rooms it may import."""
    section = text.split(TABLE_TITLE, 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in rows[0].strip("|").split("|")]
    col = {name: header.index(name) for name in ("room", "modules", "may import")}
    rooms = []
    for line in rows[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        prefixes = tuple(re.findall(r"`([\w.]+)`", cells[col["modules"]]))
        allowed = frozenset(name.strip() for name in cells[col["may import"]].split(",") if name.strip())
        rooms.append(Room(cells[col["room"]], prefixes, allowed))
    return rooms


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    modules = {}
    for app in APPS:
        for path in (REPO / app).rglob("*.py"):
            if "migrations" not in path.parts:
                modules[module_name(path)] = path
    return modules


def imports_of(module: str, source: str, is_package: bool) -> set[str]:
    """Every dotted name ``module``'s source imports (``from a import b`` gives ``a.b``)."""
    package = module if is_package else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # ``from a import b``: b is a module of a, or a name defined in a.
            names.update(f"{target}.{alias.name}" for alias in node.names)
    return {name for name in names if name.split(".")[0] in APPS}


def resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module a dotted name lands in (``archive.models.Study`` -> ``archive.models``)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def room_of(module: str, rooms: list[Room]) -> Room | None:
    best: tuple[int, Room | None] = (-1, None)
    for room in rooms:
        for prefix in room.prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best[0]:
                best = (len(prefix), room)
    return best[1]


def violations(rooms: list[Room], modules: dict[str, Path], sources: dict[str, str]) -> list[str]:
    found = []
    for module, source in sorted(sources.items()):
        here = room_of(module, rooms)
        if here is None:
            found.append(f"{module}: in no room of the map")
            continue
        is_package = modules[module].name == "__init__.py"
        targets = {resolve(name, modules) for name in imports_of(module, source, is_package)}
        for target in sorted(t for t in targets if t is not None):
            there = room_of(target, rooms)
            if there is None or there.name == here.name or there.name in here.may_import:
                continue
            found.append(f"{module} ({here.name}) imports {target} ({there.name})")
    return found


@pytest.fixture(scope="module")
def rooms() -> list[Room]:
    return rooms_read(MAP.read_text(encoding="utf-8"))


def test_the_map_names_rooms_that_exist(rooms: list[Room]) -> None:
    names = {room.name for room in rooms}
    modules = project_modules()
    assert {"kernel", "index", "archive edges", "portal"} <= names
    for room in rooms:
        assert room.may_import <= names, f"{room.name} may import rooms the map does not define"
        for prefix in room.prefixes:
            assert any(m == prefix or m.startswith(prefix + ".") for m in modules), f"{prefix}: no such module"
    kernel = next(room for room in rooms if room.name == "kernel")
    assert not kernel.may_import, "the kernel imports none of the others"


def test_every_import_points_where_the_map_allows(rooms: list[Room]) -> None:
    modules = project_modules()
    sources = {name: path.read_text(encoding="utf-8") for name, path in modules.items()}
    assert violations(rooms, modules, sources) == []


def test_an_import_against_the_map_is_found(rooms: list[Room]) -> None:
    """The check itself: the kernel reaching up into the archive, the index into a room above it."""
    modules = project_modules()
    sources = {
        "kernel.audit": "from archive.models import Study\n",
        "archive.query": "def f():\n    from .reporting.services import report_sign\n",
        "archive.storage.retrieve": "from ..models import Copy\n",
    }
    assert violations(rooms, modules, sources) == [
        "archive.query (index) imports archive.reporting.services (reporting)",
        "kernel.audit (kernel) imports archive.models (index)",
    ]
