"""Marks every test under ``tests/integration/`` and ``tests/faults/`` as ``integration``:
``pytest -m "not integration"`` runs the unit tests alone, without the stack."""

from __future__ import annotations

from pathlib import Path

import pytest

STACK_TESTS = (Path(__file__).parent / "integration", Path(__file__).parent / "faults")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if any(folder in item.path.parents for folder in STACK_TESTS):
            item.add_marker(pytest.mark.integration)
