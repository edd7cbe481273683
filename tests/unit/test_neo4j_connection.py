"""The ``fx_neo4j`` Airflow connection of the local stack reaches the server the way ``neo4j.uri`` says:
Airflow's own ``Neo4jHook`` builds the same URI from it, routing (``neo4j://``) and TLS included."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from airflow.models.connection import Connection
from airflow.providers.neo4j.hooks.neo4j import Neo4jHook

from fx_workers.config import REPO_ROOT, load_settings
from ops.airflow import connections


@pytest.mark.parametrize("uri", ["bolt://127.0.0.1:7687", "neo4j://127.0.0.1:7687", "neo4j+s://db.example:7688",
                                 "bolt+ssc://db.example:7687"])
def test_the_airflow_connection_builds_the_configured_uri(uri: str, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    shutil.copy(REPO_ROOT / "config.yaml", config)
    settings = load_settings(config, environ={"FX__NEO4J__URI": uri, "FX__NEO4J__PASSWORD": "x"})
    spec = connections(settings)["fx_neo4j"]
    connection = Connection(conn_id="fx_neo4j", conn_type=spec["conn_type"], host=spec["host"], port=spec["port"],
                            login=spec["login"], password=spec["password"], schema=spec["schema"],
                            extra=json.dumps(spec["extra"]))
    assert Neo4jHook("fx_neo4j").get_uri(connection) == uri
