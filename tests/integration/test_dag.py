"""The fx_extract DAG end to end: `airflow dags test` with worker processes, a worker killed mid-run,
and a run triggered through the stack's scheduler."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.request
from typing import TYPE_CHECKING

import pytest

from fx_workers.config import REPO_ROOT
from fx_workers.tools.load import load_csv
from fx_workers.tools.stack import AirflowApi
from tests.integration.pipeline_env import AIRFLOW, AS_OF, Slice, Workers, dags_test, migrated_airflow

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


@pytest.fixture(scope="module")
def stack_settings(settings: Settings) -> Settings:
    """The stack's own Airflow must be up: this test goes through its scheduler and workers."""
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{settings.airflow.api_port}/api/v2/monitor/health", timeout=5)
    except OSError as exc:
        pytest.fail(f"the stack's Airflow API server is not available ({exc}). Start it with `make up`.",
                    pytrace=False)
    return settings


def stack_env(settings: Settings) -> dict[str, str]:
    """What ``source .stack/env`` gives a shell."""
    out = subprocess.run(("bash", "-c", f"source {settings.stack.dir / 'env'} && env -0"), capture_output=True,
                         check=True)
    return dict(line.split("=", 1) for line in out.stdout.decode().split("\0") if "=" in line)


def test_scheduler_driven_run(stack_settings: Settings, neo4j_driver) -> None:
    settings = stack_settings
    graph = settings.graph
    accounts = neo4j_driver.execute_query(f"MATCH (a:{graph.account_label}) RETURN count(a) AS n",
                                          database_=settings.neo4j.database).records[0]["n"]
    if accounts == 0:
        load_csv(REPO_ROOT / "data" / "sample.csv", settings)
    env = stack_env(settings)
    subprocess.run((AIRFLOW, "dags", "unpause", "fx_extract"), env=env, check=True, capture_output=True)
    triggered = subprocess.run(
        (AIRFLOW, "dags", "trigger", "fx_extract", "--conf", json.dumps({"as_of": AS_OF}), "-o", "json"),
        env=env, check=True, capture_output=True, text=True,
    )
    run_id = json.loads(triggered.stdout.strip().splitlines()[-1])[0]["dag_run_id"]

    api = AirflowApi(settings)
    deadline = time.monotonic() + 600
    while (state := api.request(f"/api/v2/dags/fx_extract/dagRuns/{run_id}")["state"]) not in (
        "success", "failed"
    ):
        assert time.monotonic() < deadline, f"run {run_id} still {state}"
        time.sleep(2)
    assert state == "success"

    logs = settings.stack.dir / "airflow" / "logs" / "dag_id=fx_extract" / f"run_id={run_id}"
    wait_logs = "".join(path.read_text() for path in (logs / "task_id=wait_for_workers").glob("attempt=*"))
    assert "progress run=" in wait_logs
    assert all((logs / f"task_id={task}").is_dir() for task in ("plan", "publish", "aggregate", "verify", "retire"))
