"""The DAG parses cleanly and touches no service while parsing (the DAG processor re-parses it often)."""

from __future__ import annotations

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
    sys.modules.pop("fx_extract", None)


def test_no_import_errors(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert "fx_extract" in dagbag.dags


def test_shape(dagbag) -> None:
    dag = dagbag.dags["fx_extract"]
    assert [t.task_id for t in dag.tasks] == ["plan", "publish", "wait_for_workers", "aggregate", "verify", "retire"]
    assert dag.max_active_runs == 1
    assert dag.catchup is False
    assert set(dag.params) == {"as_of", "batch_size", "timeout_minutes"}
    assert dag.doc_md and "wait_for_workers" in dag.doc_md
    assert dag.get_task("wait_for_workers").upstream_task_ids == {"plan", "publish"}
    assert [o.name for o in dag.get_task("verify").outlets] == ["fx://node_features"]
