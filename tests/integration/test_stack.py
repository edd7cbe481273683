"""The acceptance of the local stack: each service answers a real client, and `fx doctor` is green."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from confluent_kafka.admin import NewTopic

if TYPE_CHECKING:
    import redis
    from confluent_kafka.admin import AdminClient
    from neo4j import Driver

    from fx_workers.config import Settings


def test_kafka_creates_and_lists_a_topic(kafka_admin: AdminClient) -> None:
    name = f"fx-stack-test-{uuid.uuid4().hex[:8]}"
    kafka_admin.create_topics([NewTopic(name, 2, 1)])[name].result(timeout=30)
    try:
        topics = kafka_admin.list_topics(timeout=10).topics
        assert name in topics
        assert len(topics[name].partitions) == 2
    finally:
        kafka_admin.delete_topics([name])[name].result(timeout=30)


def test_neo4j_answers_with_the_generated_password(neo4j_driver: Driver, settings: Settings) -> None:
    records, _, _ = neo4j_driver.execute_query("RETURN 1 AS one", database_=settings.neo4j.database)
    assert records[0]["one"] == 1


def test_redis_pings(redis_client: redis.Redis) -> None:
    assert redis_client.ping() is True


def test_fx_doctor_exits_0(neo4j_driver: Driver, settings: Settings) -> None:
    from fx_workers.tools.load import ensure_schema

    ensure_schema(neo4j_driver, settings)  # the loader's constraints and index, which doctor requires
    fx = Path(sys.executable).parent / "fx"
    result = subprocess.run([fx, "doctor"], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"fx doctor exited {result.returncode}:\n{result.stdout}{result.stderr}"
