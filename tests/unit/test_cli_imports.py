"""The ``fx`` CLI's start-up: what ``fx --help`` imports, checked by module name, never by time
(a timed assertion fails on a busy machine; a heavy import added at module level fails here)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("pydantic", "rich", "numpy", "redis", "neo4j", "confluent_kafka", "yaml", "pyarrow", "pandas", "airflow")
"""Libraries that cost 0.1 s or more each to import; no command needs them to print its help."""

PROBE = """
import json, sys
sys.argv = ["fx", *json.loads(sys.argv[1])]
from fx_workers.tools import cli
try:
    cli.main()
except SystemExit:
    pass
sys.stdout.flush()
print(json.dumps(sorted({name.partition(".")[0] for name in sys.modules})), file=sys.stderr)
"""


def run_fx(*args: str) -> tuple[str, set[str]]:
    """``fx args`` in a fresh interpreter: its stdout, and the top-level packages it loaded."""
    result = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args)], capture_output=True, text=True,
                            timeout=60, check=True)
    return result.stdout, set(json.loads(result.stderr.strip().splitlines()[-1]))


def test_help_imports_no_heavy_library() -> None:
    _, modules = run_fx("--help")
    assert modules & set(HEAVY) == set()


@pytest.mark.parametrize("args", [("features", "--help"), ("runs", "--help"), ("doctor", "--help"),
                                  ("features", "get", "--help")])
def test_command_help_imports_no_heavy_library(args: tuple[str, ...]) -> None:
    """A command's own options are coerced by typer (0.29) through pydantic, so pydantic is allowed here."""
    _, modules = run_fx(*args)
    assert modules & set(HEAVY) - {"pydantic"} == set()


def test_help_lists_every_command() -> None:
    """Plain click help (typer's rich rendering would import rich), with every command listed."""
    text, _ = run_fx("--help")
    for command in ("generate", "load", "doctor", "extract", "verify", "worker", "features", "runs"):
        assert f"  {command} " in text
