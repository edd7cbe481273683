"""Clients of the running local stack. When a service is down its tests fail (not skip), saying
which service and to run ``make up``: a skipped integration suite would pass CI while proving nothing."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from fx_workers.config import load_settings
from fx_workers.engine.graph import open_driver
from fx_workers.tools.doctor import kafka_admin as make_kafka_admin
from fx_workers.tools.doctor import kafka_checks, neo4j_checks, redis_checks

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import redis
    from confluent_kafka.admin import AdminClient
    from neo4j import Driver

    from fx_workers.config import Settings
    from fx_workers.tools.doctor import Check
    from ops.fixtures import Slice


def require(checks: Callable[[Settings], Iterator[Check]], settings: Settings) -> None:
    """Fail the requesting test unless the service's first doctor check (reachable) passes."""
    check = next(checks(settings))
    if not check.ok:
        pytest.fail(f"{check.name} is not available: {check.detail}. Start the stack with `make up`.", pytrace=False)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return load_settings()


@pytest.fixture(scope="session")
def kafka_admin(settings: Settings) -> AdminClient:
    require(kafka_checks, settings)
    return make_kafka_admin(settings.kafka)


@pytest.fixture(scope="session")
def neo4j_driver(settings: Settings) -> Iterator[Driver]:
    require(neo4j_checks, settings)
    with open_driver(settings.neo4j) as driver:
        yield driver


@pytest.fixture(scope="session")
def redis_client(settings: Settings) -> Iterator[redis.Redis]:
    from fx_workers.store.client import open_redis

    require(redis_checks, settings)
    client = open_redis(settings.redis, socket_timeout=5)
    yield client
    client.close()


@pytest.fixture(scope="module")
def piece(redis_client, kafka_admin, neo4j_driver, tmp_path_factory) -> Iterator[Slice]:
    """A graph, topics, consumer group and Redis prefix of the module's own (see ops.fixtures)."""
    from ops.fixtures import Slice

    piece = Slice.create()
    piece.load_graph(tmp_path_factory.mktemp("graph"), kafka_admin)
    yield piece
    piece.drop(redis_client, kafka_admin, neo4j_driver)


@pytest.fixture(scope="module")
def stack_settings(settings: Settings) -> Settings:
    """The stack's own Airflow must be up: tests using this go through its scheduler and triggerer."""
    import urllib.request

    try:
        urllib.request.urlopen(f"http://127.0.0.1:{settings.airflow.api_port}/api/v2/monitor/health", timeout=5)
    except OSError as exc:
        pytest.fail(f"the stack's Airflow API server is not available ({exc}). Start it with `make up`.",
                    pytrace=False)
    return settings
