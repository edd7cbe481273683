"""The DAGs parse cleanly and touch no service while parsing (the DAG processor re-parses them often)."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[2]


class ServiceCalledError(AssertionError):
    pass


def refuse(*args: object, **kwargs: object) -> None:
    raise ServiceCalledError("a service was called while parsing the DAG")


@pytest.fixture
def dagbag(monkeypatch: pytest.MonkeyPatch):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.syspath_prepend(str(ROOT / "plugins"))  # as Airflow does for plugins_folder
    with (
        mock.patch.object(socket.socket, "connect", refuse),
        mock.patch("confluent_kafka.Producer", refuse),
        mock.patch("confluent_kafka.Consumer", refuse),
        mock.patch("confluent_kafka.admin.AdminClient", refuse),
        mock.patch("neo4j.GraphDatabase.driver", refuse),
    ):
        yield DagBag(dag_folder=ROOT / "dags")
    for name in ("fx_extract", "fx_retire"):
        sys.modules.pop(name, None)


def test_no_import_errors(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert {"fx_extract", "fx_retire"} <= dagbag.dags.keys()


def test_shape(dagbag) -> None:
    dag = dagbag.dags["fx_extract"]
    assert [t.task_id for t in dag.tasks] == ["plan", "publish", "wait_for_workers", "aggregate", "verify"]
    assert dag.max_active_runs == 1
    assert dag.catchup is False
    assert set(dag.params) == {"as_of", "batch_size", "timeout_minutes"}
    assert dag.doc_md and "wait_for_workers" in dag.doc_md
    assert dag.get_task("wait_for_workers").upstream_task_ids == {"plan", "publish"}
    assert [o.name for o in dag.get_task("verify").outlets] == ["fx://node_features"]


def test_retention_runs_on_each_promotion_outside_the_extraction(dagbag) -> None:
    """fx_extract no longer retires old runs itself: its verify's asset event schedules fx_retire, which
    starts unpaused (a paused retention would let old runs fill Redis)."""
    dag = dagbag.dags["fx_retire"]
    assert [t.task_id for t in dag.tasks] == ["retire"]
    assert [asset.name for asset in dag.timetable.asset_condition.objects] == ["fx://node_features"]
    assert dag.is_paused_upon_creation is False
    assert dag.max_active_runs == 1


def test_parsing_imports_no_engine_and_no_client() -> None:
    """Parsing (the DAG processor's loop, and every task process's start) stays cheap: the Neo4j driver,
    redis-py, numpy and fx's engine and store are imported by the tasks that use them, not by the parse.
    Structural, not timed: ``python -X importtime`` of the DAG file measures it."""
    import subprocess

    code = ("import sys, fx_extract, fx_retire; "
            "print(sorted(m for m in ('neo4j', 'redis', 'numpy', 'fx_workers.engine', 'fx_workers.store', "
            "'fx_workers.steps.plan') if m in sys.modules))")
    out = subprocess.run((sys.executable, "-c", code), cwd=ROOT / "dags", capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT / "plugins")})
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_only_the_scheduler_warms() -> None:
    """``plugins/airflow_local_settings.py`` imports the tasks' libraries in the scheduler only, and never
    fx's own code (a task must plan with the catalogue the workers run, not the scheduler's stale copy)."""
    import airflow_local_settings

    assert airflow_local_settings.warm_scheduler(["/venv/bin/airflow", "triggerer"]) == []
    assert airflow_local_settings.warm_scheduler(["-c"]) == []
    assert set(airflow_local_settings.WARMED) >= {"airflow.providers.redis.hooks.redis",
                                                   "airflow.providers.neo4j.hooks.neo4j"}
    assert not [m for m in airflow_local_settings.WARMED if m.startswith(("fx_workers", "fx_airflow"))]
