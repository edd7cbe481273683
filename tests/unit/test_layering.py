"""Imports run one way. The rooms, from the bottom up; each may import its own room and the rooms
below it, never one above it, nor the other room of its own floor:

0. ``fx_workers/config.py``, ``protocol.py``, ``progress.py``: settings and the Kafka messages
1. ``fx_workers/engine``: the graph read and the feature catalogue
2. ``fx_workers/store``: Redis keys, records, the run ledger
3. ``fx_workers/steps``: plan, aggregate, verify, publish, topics
4. ``fx_workers/worker`` (and ``fx_workers/__main__.py``): the extraction worker
5. ``fx_workers/tools`` (the ``fx`` CLI) | ``plugins`` (the Airflow trigger and operator)
6. ``dags``: wiring only
7. ``ops``: the local stack and the own-stack fixtures
8. ``bench``
9. ``tests``

and nothing loads a module by its file path (``importlib.util.spec_from_file_location``).
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

from fx_workers.config import REPO_ROOT

FLOORS = {
    "foundation": 0, "engine": 1, "store": 2, "steps": 3, "worker": 4, "tools": 5, "plugins": 5, "dags": 6,
    "ops": 7, "bench": 8, "tests": 9,
}
FOUNDATION = {"__init__", "config", "protocol", "progress"}
FOLDERS = ("fx_workers", "plugins", "dags", "ops", "bench", "tests")


def room_of_module(name: str) -> str | None:
    """The room a dotted module name belongs to; None for a library."""
    top, _, rest = name.partition(".")
    if top == "fx_workers":
        sub = rest.split(".", 1)[0] or "__init__"
        if sub in FOUNDATION:
            return "foundation"
        return "worker" if sub == "__main__" else sub
    if top in ("fx_airflow", "airflow_local_settings"):
        return "plugins"
    return top if top in ("ops", "bench", "tests") else None


def room_of_file(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return room_of_module(".".join(parts)) or parts[0]  # plugins/ and dags/ by their folder


def module_name(path: Path) -> str:
    """The dotted name a file is imported as (plugins/ is on Airflow's path, not a package)."""
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[1:] if parts[0] == "plugins" else parts)


@dataclass(frozen=True)
class Import:
    line: int
    module: str


def imports(path: Path) -> list[Import]:
    """Every module ``path`` imports (at the top, in functions and under ``TYPE_CHECKING`` alike)."""
    found = []
    package = module_name(path).rsplit(".", 1)[0]  # a package's __init__ too: "a.b.__init__" -> "a.b"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [Import(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the file's package up
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.append(Import(node.lineno, ".".join([*base, *([node.module] if node.module else [])])))
            else:
                found.append(Import(node.lineno, node.module or ""))
    return found


def loads_by_path(path: Path) -> list[int]:
    return [node.lineno for node in ast.walk(ast.parse(path.read_text(), str(path)))
            if isinstance(node, ast.Attribute | ast.Name)
            and getattr(node, "attr", getattr(node, "id", None)) == "spec_from_file_location"]


def violations(room: str, found: list[Import]) -> list[str]:
    """The imports of a module of ``room`` that reach up, or across its floor."""
    wrong = []
    for item in found:
        target = room_of_module(item.module)
        if target is not None and target != room and FLOORS[target] >= FLOORS[room]:
            wrong.append(f"line {item.line}: {room} (floor {FLOORS[room]}) imports {item.module} "
                         f"({target}, floor {FLOORS[target]})")
    return wrong


SOURCES = sorted(path for folder in FOLDERS for path in (REPO_ROOT / folder).rglob("*.py"))


def test_every_room_is_placed() -> None:
    assert {room_of_file(path) for path in SOURCES} == set(FLOORS)


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_imports_run_one_way(path: Path) -> None:
    wrong = violations(room_of_file(path), imports(path))
    assert not wrong, "\n".join(wrong)
    assert not loads_by_path(path), f"loads a module by file path at lines {loads_by_path(path)}"


def test_the_rule_refuses_imports_upwards_across_a_floor_and_from_bench_into_tests() -> None:
    assert violations("steps", [Import(13, "fx_workers.tools.doctor")]) == [
        "line 13: steps (floor 3) imports fx_workers.tools.doctor (tools, floor 5)"]
    assert violations("bench", [Import(1, "tests.integration.pipeline_env")])
    assert violations("tools", [Import(1, "fx_airflow.hooks")])  # the other room of floor 5
    assert violations("engine", [Import(1, "fx_workers.store.keys")])
    assert not violations("ops", [Import(1, "fx_workers.steps.topics"), Import(2, "fx_workers.config"),
                                  Import(3, "confluent_kafka"), Import(4, "ops.process")])
