"""Marks every test under ``tests/integration/`` as ``integration``: ``pytest -m "not integration"``
runs the unit tests alone, without the stack."""

from __future__ import annotations

from pathlib import Path

import pytest

INTEGRATION = Path(__file__).parent / "integration"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION in item.path.parents:
            item.add_marker(pytest.mark.integration)
