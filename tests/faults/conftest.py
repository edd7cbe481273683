"""The fault cases share the integration tests' stack fixtures, and print the fault table at the end."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.faults.harness import table
from tests.integration.conftest import (  # noqa: F401
    kafka_admin,
    neo4j_driver,
    piece,
    redis_client,
    settings,
    stack_settings,
)

if TYPE_CHECKING:
    import pytest

OUTCOMES: list = []
CLEAN: list[float] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not OUTCOMES:
        return
    text = table(OUTCOMES, CLEAN[0] if CLEAN else 0.0)
    terminalreporter.write_sep("=", "fault table")
    terminalreporter.write_line(text)
    for outcome in OUTCOMES:
        terminalreporter.write_line(f"{outcome.fault} seed={outcome.seed}: {outcome.result} in {outcome.seconds:.0f}s "
                                    f"({outcome.detail})")
    from fx_workers.config import load_settings

    out = load_settings().stack.dir / "faults" / "table.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n")
    terminalreporter.write_line(f"written to {out}")
