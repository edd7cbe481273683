"""Airflow's own faults, through the stack's scheduler and triggerer (``dags test`` runs the trigger in
its own process, so it cannot lose either): the triggerer or the scheduler killed while
``wait_for_workers`` is deferred, two DAG runs triggered at once, and a DAG run cleared and run again.
Each DAG run must publish exactly what a local run of its ``as_of`` gives.

They use the stack's DAG, graph and workers (``make up``); ``make test`` runs one restart of each,
``make test-faults`` five.
"""

from __future__ import annotations

import os
import random
import time
from typing import TYPE_CHECKING

import psutil
import pytest

from ops.fixtures import AS_OF, Slice
from tests.faults import conftest
from tests.faults.harness import Outcome, restart_service, stack_pid
from tests.integration.pipeline_env import StackAirflow

if TYPE_CHECKING:
    import redis
    from neo4j import Driver

    from fx_workers.config import Settings

LATER = AS_OF + 30 * 86_400
RUNS = 5 if os.environ.get("FX_FAULTS") == "full" else 1
CASES = [(component, i) for component in ("triggerer", "scheduler") for i in range(RUNS)]


@pytest.fixture(scope="module")
def airflow(stack_settings: Settings, neo4j_driver: Driver) -> StackAirflow:
    airflow = StackAirflow(stack_settings)
    airflow.prepare(neo4j_driver)
    return airflow


@pytest.fixture(scope="module")
def stack(airflow: StackAirflow) -> Slice:
    """The stack's own settings, seen through a Slice for its snapshots."""
    return Slice(airflow.settings, airflow.env)


@pytest.fixture(scope="module")
def expected(stack: Slice, redis_client: redis.Redis) -> dict[int, dict]:
    """What a local run gives at each ``as_of`` the tests use."""
    return {as_of: stack.local_snapshot(redis_client, as_of) for as_of in (AS_OF, LATER)}


def published(airflow: StackAirflow, stack: Slice, client: redis.Redis, run_id: str) -> dict:
    """The records of the newest fx run DAG run ``run_id`` made."""
    runs = airflow.fx_runs(client, run_id)
    assert runs, f"DAG run {run_id} registered no fx run"
    return stack.snapshot(client, runs[0])


def stop_workers(settings: Settings) -> None:
    """Stop the stack's workers warm, so ``wait_for_workers`` stays deferred; ``python -m ops up`` restarts them."""
    procs = [psutil.Process(stack_pid(settings, f"worker-{i}")) for i in range(settings.workers.count)]
    for proc in procs:
        proc.terminate()
    psutil.wait_procs(procs, timeout=60)


@pytest.mark.parametrize(("component", "case"), CASES, ids=[f"{c}-{i}" for c, i in CASES])
def test_restart_while_deferred(airflow: StackAirflow, stack: Slice, expected: dict, redis_client: redis.Redis,
                                component: str, case: int) -> None:
    seed = int(os.environ.get("FX_FAULT_SEED") or random.randrange(2**31))
    print(f"fault={component}_restart seed={seed} (replay: FX_FAULT_SEED={seed} pytest tests/faults -k {component})")
    rng = random.Random(seed)
    started = time.monotonic()
    stop_workers(airflow.settings)
    run_id = airflow.trigger(as_of=AS_OF, batch_size=10)
    airflow.wait(run_id, until=("deferred",), task="wait_for_workers", timeout=300)
    time.sleep(rng.uniform(0, 2))
    down = rng.uniform(0, 3)
    restart_service(airflow.settings, f"airflow-{component}", down)  # and the workers, stopped above

    state = airflow.wait(run_id)
    seconds = time.monotonic() - started
    same = state == "success" and published(airflow, stack, redis_client, run_id) == expected[AS_OF]
    result = "identical to a clean run" if same else f"WRONG: the DAG run ended {state} or differs"
    conftest.OUTCOMES.append(Outcome(f"{component}_restart", seed, result, seconds,
                                     f"{component} killed while deferred, back after {down:.1f}s"))
    assert same, f"{result} (seed {seed}); see {airflow.task_log(run_id, 'wait_for_workers')[-2000:]}"


def test_two_runs_triggered_at_once_do_not_cross(airflow: StackAirflow, stack: Slice, expected: dict,
                                                 redis_client: redis.Redis) -> None:
    first, second = airflow.trigger(as_of=AS_OF, batch_size=10), airflow.trigger(as_of=LATER, batch_size=10)

    assert (airflow.wait(first), airflow.wait(second)) == ("success", "success")
    assert published(airflow, stack, redis_client, first) == expected[AS_OF]
    assert published(airflow, stack, redis_client, second) == expected[LATER]


def test_a_cleared_dag_run_runs_again_as_a_new_run(airflow: StackAirflow, stack: Slice, expected: dict,
                                                   redis_client: redis.Redis) -> None:
    run_id = airflow.trigger(as_of=AS_OF, batch_size=10)
    assert airflow.wait(run_id) == "success"
    [before] = airflow.fx_runs(redis_client, run_id)

    airflow.clear(run_id)
    airflow.wait(run_id, until=("queued", "running"), timeout=60)
    assert airflow.wait(run_id) == "success"

    again, first = airflow.fx_runs(redis_client, run_id)
    assert first == before and again != before  # a new plan and namespace; the old one stays for rollback
    assert stack.registry(redis_client).latest() == again
    assert stack.snapshot(redis_client, again) == expected[AS_OF]
