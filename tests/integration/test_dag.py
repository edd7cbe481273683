"""The fx_extract DAG end to end: `airflow dags test` with worker processes, a worker killed mid-run,
two DAG runs of other as_of at the same time on the same topics, and a run triggered through the
stack's scheduler."""

from __future__ import annotations

import signal
import subprocess
import time
from typing import TYPE_CHECKING

import pytest

from ops.fixtures import AS_OF, Slice
from tests.integration.pipeline_env import StackAirflow, Workers, dags_test, migrated_airflow

if TYPE_CHECKING:
    from collections.abc import Iterator

    import redis

    from fx_workers.config import Settings


@pytest.fixture(scope="module")
def expected(piece: Slice, redis_client: redis.Redis) -> dict:
    return piece.local_snapshot(redis_client)


@pytest.fixture(scope="module")
def env(piece: Slice, tmp_path_factory) -> dict[str, str]:
    return migrated_airflow(piece, tmp_path_factory.mktemp("airflow"))


@pytest.fixture(scope="module")
def workers(piece: Slice, tmp_path_factory) -> Iterator[Workers]:
    workers = Workers(piece, tmp_path_factory.mktemp("workers"))
    yield workers
    codes = workers.stop()
    assert all(code in (0, -signal.SIGKILL, -signal.SIGTERM) for code in codes.values()), codes  # -TERM: still starting


def finish(proc: subprocess.Popen[str]) -> str:
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-5000:]
    return output


def test_dags_test_equals_local_run(piece: Slice, expected: dict, env: dict, workers: Workers,
                                    redis_client: redis.Redis) -> None:
    output = finish(dags_test(env, batch_size=100))

    assert "progress run=" in output
    assert piece.snapshot(redis_client) == expected
    registry = piece.registry(redis_client)
    manifest = registry.manifest(registry.latest())
    assert manifest["dag_run_id"].startswith("manual__")
    assert (manifest["status"], manifest["as_of"], manifest["mode"]) == ("verified", str(AS_OF), "airflow")
    assert manifest["drift_verdict"] in ("ok", "warn")  # against the local run before it


def test_worker_killed_mid_run(piece: Slice, expected: dict, env: dict, workers: Workers,
                               redis_client: redis.Redis) -> None:
    done_before = workers.log(1).read_text().count("batch done")
    run = dags_test(env, batch_size=10)
    deadline = time.monotonic() + 300
    while workers.log(1).read_text().count("batch done") == done_before:
        assert run.poll() is None and time.monotonic() < deadline, "worker 1 never got a batch"
        time.sleep(0.05)
    workers.procs[1].send_signal(signal.SIGKILL)

    finish(run)
    assert piece.snapshot(redis_client) == expected
    workers.restart(1)


def test_two_dag_runs_at_once_do_not_cross(piece: Slice, expected: dict, env: dict, workers: Workers,
                                           redis_client: redis.Redis, tmp_path_factory) -> None:
    """Two DAG runs (two Airflow deployments, so both really run together) share the topics, the
    consumer group and the workers; each must publish exactly its own as_of's values."""
    later = AS_OF + 30 * 86_400
    expected_later = piece.local_snapshot(redis_client, later)
    other = migrated_airflow(piece, tmp_path_factory.mktemp("airflow-other"))

    runs = [dags_test(env, batch_size=20), dags_test(other, batch_size=30, as_of=later)]
    for run in runs:
        finish(run)

    newest = [run for run in piece.registry(redis_client).list() if run.get("mode") == "airflow"][:2]
    by_as_of = {int(run.get("as_of")): piece.snapshot(redis_client, run.run_id) for run in newest}
    assert by_as_of == {AS_OF: expected, later: expected_later}


def test_scheduler_driven_run(stack_settings: Settings, neo4j_driver) -> None:
    airflow = StackAirflow(stack_settings)
    airflow.prepare(neo4j_driver)
    run_id = airflow.trigger(as_of=AS_OF)
    assert airflow.wait(run_id) == "success"

    assert "progress run=" in airflow.task_log(run_id, "wait_for_workers")
    assert all(airflow.task_log(run_id, task) for task in ("plan", "publish", "aggregate", "verify"))
    assert "retention kept" in airflow.task_log(airflow.retirement(run_id), "retire", dag="fx_retire")
