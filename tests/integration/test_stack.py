"""The acceptance of the local stack: each service answers a real client, and `fx doctor` is green."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from confluent_kafka.admin import NewTopic
from pydantic import SecretStr

from fx_workers.config import REPO_ROOT

if TYPE_CHECKING:
    import redis
    from confluent_kafka.admin import AdminClient
    from neo4j import Driver

    from fx_workers.config import Settings


def test_kafka_creates_and_lists_a_topic_and_logs_it(kafka_admin: AdminClient, settings: Settings) -> None:
    name = f"fx-stack-test-{uuid.uuid4().hex[:8]}"
    kafka_admin.create_topics([NewTopic(name, 2, 1)])[name].result(timeout=30)
    try:
        topics = kafka_admin.list_topics(timeout=10).topics
        assert name in topics
        assert len(topics[name].partitions) == 2
        log = settings.stack.dir / "logs" / "kafka.log"  # the broker's log4j output (once silenced by slf4j 1.7)
        deadline = time.monotonic() + 15
        while name not in log.read_text():
            assert time.monotonic() < deadline, f"Kafka logged nothing about topic {name} in {log}"
            time.sleep(0.2)
    finally:
        kafka_admin.delete_topics([name])[name].result(timeout=30)


def test_neo4j_answers_with_the_generated_password(neo4j_driver: Driver, settings: Settings) -> None:
    records, _, _ = neo4j_driver.execute_query("RETURN 1 AS one", database_=settings.neo4j.database)
    assert records[0]["one"] == 1


def test_redis_pings(redis_client: redis.Redis) -> None:
    assert redis_client.ping() is True


def test_fx_doctor_exits_0_with_redis_auth_on(neo4j_driver: Driver, settings: Settings) -> None:
    """`make up` created the graph's constraints and index (no load needed) and started Redis with users."""
    fx = Path(sys.executable).parent / "fx"
    result = subprocess.run([fx, "doctor"], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, f"fx doctor exited {result.returncode}:\n{result.stdout}{result.stderr}"
    assert "auth on: user fx" in result.stdout


def test_doctor_explains_a_redis_password_that_does_not_match(settings: Settings) -> None:
    from fx_workers.tools.doctor import redis_checks

    wrong = settings.model_copy(update={"redis": settings.redis.model_copy(update={"password": SecretStr("nope")})})
    check = next(redis_checks(wrong))
    assert not check.ok
    assert "refused user fx with the password from FX__REDIS__PASSWORD" in check.detail
    assert "make down && make up" in check.fix and "nope" not in check.detail + check.fix


def test_doctor_explains_a_missing_redis_password(settings: Settings, tmp_path: Path) -> None:
    from fx_workers.tools.doctor import redis_checks

    none = settings.redis.model_copy(update={"password_file": tmp_path / "absent"})
    check = next(redis_checks(settings.model_copy(update={"redis": none})))
    assert not check.ok and "wants a password and none is configured" in check.detail
    assert "make up" in check.fix and "FX__REDIS__PASSWORD" in check.fix


def test_doctor_fails_a_redis_that_takes_anonymous_clients(settings: Settings, tmp_path: Path) -> None:
    """A Redis of its own on a free port, without a password: reachable, but "auth off" fails."""
    import socket
    import time

    from fx_workers.tools.doctor import redis_checks

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                               "--appendonly", "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL)
    try:
        open_settings = settings.model_copy(update={"redis": settings.redis.model_copy(
            update={"port": port, "password_file": tmp_path / "absent"})})
        deadline = time.monotonic() + 10
        while not (checks := list(redis_checks(open_settings)))[0].ok and time.monotonic() < deadline:
            time.sleep(0.1)
        reachable, auth = checks
        assert reachable.ok
        assert (auth.name, auth.ok) == ("redis auth", False) and "auth off" in auth.detail
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.parametrize("command", ["dags list", "dags list-runs fx_extract", "dags details fx_extract"])
def test_airflow_cli_prints_clean_json_with_the_stack_env(settings: Settings, command: str) -> None:
    """`source .stack/env && airflow ... -o json | jq` works: no warning on stdout before the JSON."""
    script = f"source {settings.stack.dir / 'env'} && airflow {command} -o json"
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=180, check=False)
    assert result.returncode == 0, result.stderr
    json.loads(result.stdout)


def test_the_warning_filters_silence_airflows_airflowignore_reader(settings: Settings) -> None:
    """pathspec's GitWildMatchPattern deprecation, raised by the code that reads plugins/.airflowignore."""
    script = f"""source {settings.stack.dir / 'env'} && python -c '
from airflow._shared.module_loading.file_discovery import find_path_from_directory
list(find_path_from_directory("{REPO_ROOT / "plugins"}", ".airflowignore", "glob"))'"""
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    assert "GitWildMatchPattern" not in result.stdout + result.stderr
