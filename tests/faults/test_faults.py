"""Faults at a seeded random moment of an ``fx_extract`` run; what readers get must equal a clean run.

``make test`` runs one case each of a lost worker, a killed worker, a Redis restart and a Neo4j outage
longer than the workers' retries;
``make test-faults`` (``FX_FAULTS=full``) runs the whole table: 20 seeded runs for a killed worker
and a broker restart, 5 for every other fault. ``FX_FAULT_SEED`` replays one seed.
"""

from __future__ import annotations

import os
import random
import time
from typing import TYPE_CHECKING

import pytest

from ops.fixtures import AS_OF
from tests.faults import conftest
from tests.faults.harness import BATCH_SIZE, FAULTS, Harness
from tests.integration.pipeline_env import Workers, dags_test, migrated_airflow

if TYPE_CHECKING:
    from collections.abc import Iterator

    import redis

    from ops.fixtures import Slice

FULL = {"worker_sigkill": 20, "kafka_restart": 20, "worker_sigterm": 5, "worker_lost": 5, "neo4j_restart": 5,
        "redis_restart": 5, "neo4j_outage": 5}
QUICK = {"worker_lost": 1, "worker_sigkill": 1, "redis_restart": 1, "neo4j_outage": 1}
PLAN = FULL if os.environ.get("FX_FAULTS") == "full" else QUICK
CASES = [(fault, i) for fault, runs in PLAN.items() for i in range(runs)]


@pytest.fixture(scope="module")
def harness(piece: Slice, redis_client: redis.Redis, tmp_path_factory) -> Iterator[Harness]:
    env = migrated_airflow(piece, tmp_path_factory.mktemp("airflow"))
    workers = Workers(piece, tmp_path_factory.mktemp("workers"))
    expected = piece.local_snapshot(redis_client)
    started = time.monotonic()
    clean = dags_test(env, BATCH_SIZE)
    output, _ = clean.communicate(timeout=600)
    assert clean.returncode == 0, output[-3000:]
    conftest.CLEAN.append(time.monotonic() - started)
    assert piece.snapshot(redis_client) == expected, "a clean distributed run differs from the local run"
    yield Harness(piece, env, workers, redis_client, AS_OF, expected, conftest.CLEAN[0], [])
    workers.stop()


@pytest.mark.parametrize(("fault", "case"), CASES, ids=[f"{f}-{i}" for f, i in CASES])
def test_fault(harness: Harness, fault: str, case: int) -> None:
    assert fault in FAULTS
    seed = int(os.environ.get("FX_FAULT_SEED") or random.randrange(2**31))
    print(f"fault={fault} seed={seed} (replay: FX_FAULT_SEED={seed} pytest tests/faults -k {fault})")
    outcome = harness.run(fault, seed)
    conftest.OUTCOMES.append(outcome)
    assert outcome.ok, f"{outcome.result}: {outcome.detail} (seed {seed})"
