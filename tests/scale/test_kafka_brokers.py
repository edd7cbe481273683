"""Three Kafka brokers: ``stack.kafka_brokers`` and what the stack derives from it (nodes, ports,
topic replication, the clients' bootstrap list), and fx_extract on a 3-broker cluster of the test's
own that loses a broker (SIGKILL) mid-run: the run ends identical to a clean run, each batch counted
once."""

from __future__ import annotations

import json
import os
import signal
import time
from typing import TYPE_CHECKING

import pytest
from confluent_kafka.admin import ConfigResource

from fx_workers.config import ConfigError, load_settings
from fx_workers.protocol import PRODUCER_CONFIG
from fx_workers.steps.topics import ensure_topics
from fx_workers.tools.doctor import kafka_admin
from ops.fixtures import Slice, free_ports
from ops.kafka import kafka_nodes, kafka_services, server_properties, with_all_brokers
from ops.process import Layout, StackError, running, signal_group
from ops.stack import down, env_exports, up
from tests.integration.pipeline_env import Workers, dags_test, migrated_airflow

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    import redis
    from confluent_kafka.admin import AdminClient

    from fx_workers.config import Settings

BATCH_SIZE = 20
"""A 5,000-transfer graph in about 30 batches: the kill lands after a few and well before the last."""
KILL_AFTER_BATCHES = 3
NODE_PORTS = 6
"""Three brokers, each with its controller one port above."""


def three_brokers(tmp_path: Path, bootstrap: str = "127.0.0.1:9092") -> Settings:
    return load_settings(environ={"FX__STACK__KAFKA_BROKERS": "3", "FX__KAFKA__BOOTSTRAP_SERVERS": bootstrap,
                                  "FX__STACK__DIR": str(tmp_path)})


# --- configuration, without a stack ----------------------------------------------------------------


def test_one_broker_is_the_default_and_only_one_or_three_are_accepted() -> None:
    assert load_settings(environ={}).stack.kafka_brokers == 1
    assert load_settings(environ={"FX__STACK__KAFKA_BROKERS": "3"}).stack.kafka_brokers == 3
    for wrong in ("2", "0", "5"):
        with pytest.raises(ConfigError, match=rf"stack\.kafka_brokers: .*must be one of \(1, 3\).* Got {wrong}"):
            load_settings(environ={"FX__STACK__KAFKA_BROKERS": wrong})


def test_three_brokers_two_ports_apart_with_their_controllers_between(tmp_path: Path) -> None:
    settings = three_brokers(tmp_path)
    nodes = kafka_nodes(settings)
    assert [(n.name, n.node_id, n.address, n.controller_port) for n in nodes] == [
        ("kafka", 1, "127.0.0.1:9092", 9093), ("kafka-2", 2, "127.0.0.1:9094", 9095),
        ("kafka-3", 3, "127.0.0.1:9096", 9097)]
    services = kafka_services(settings, Layout(tmp_path))
    assert [(s.name, s.ports) for s in services] == [("kafka", (9092, 9093)), ("kafka-2", (9094, 9095)),
                                                     ("kafka-3", (9096, 9097))]
    assert [s.ready is not None for s in services] == [True, False, False]  # the first creates the topics
    assert len({s.command[-1] for s in services}) == 3  # a server.properties (and data) each
    # The full list is accepted as well; another list would point clients at brokers the stack never runs.
    full = "127.0.0.1:9092,127.0.0.1:9094,127.0.0.1:9096"
    assert [n.address for n in kafka_nodes(three_brokers(tmp_path, full))] == full.split(",")
    with pytest.raises(StackError, match=r"set kafka\.bootstrap_servers to those or to the first alone"):
        kafka_nodes(three_brokers(tmp_path, "127.0.0.1:9092,127.0.0.1:9093,127.0.0.1:9094"))


def test_one_broker_keeps_its_name_ports_and_home(tmp_path: Path) -> None:
    settings = load_settings(environ={"FX__STACK__DIR": str(tmp_path)})
    [service] = kafka_services(settings, Layout(tmp_path))
    assert (service.name, service.ports) == ("kafka", (9092, 9093))
    assert service.command[-1] == str(tmp_path / "kafka" / "server.properties")
    assert not {"FX__KAFKA__BOOTSTRAP_SERVERS", "FX__STACK__KAFKA_BROKERS"} & set(env_exports(settings))


def test_topics_are_replicated_on_every_broker_two_in_sync_with_three(tmp_path: Path) -> None:
    def defaults(settings: Settings) -> str:
        nodes = kafka_nodes(settings)
        return server_properties(nodes[0], nodes, tmp_path)

    assert "default.replication.factor=1\nmin.insync.replicas=1\n" in defaults(load_settings(environ={}))
    assert "default.replication.factor=3\nmin.insync.replicas=2\n" in defaults(three_brokers(tmp_path))


def test_every_client_of_the_stack_gets_all_brokers_and_producers_wait_for_the_replicas(tmp_path: Path) -> None:
    exports = env_exports(three_brokers(tmp_path))
    servers = "127.0.0.1:9092,127.0.0.1:9094,127.0.0.1:9096"
    assert (exports["FX__KAFKA__BOOTSTRAP_SERVERS"], exports["FX__STACK__KAFKA_BROKERS"]) == (servers, "3")
    connection = json.loads(exports["AIRFLOW_CONN_FX_KAFKA"])  # the DAG's producer, admin and readers
    assert connection["extra"] == {"bootstrap.servers": servers, "acks": "all", "enable.idempotence": True}
    assert PRODUCER_CONFIG == {"acks": "all", "enable.idempotence": True}


# --- a run that loses a broker -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def brokers(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A 3-broker KRaft cluster on free loopback ports under a temporary stack dir, started by the same
    functions as ``make up`` and stopped, by PID, like ``make down``; its settings list every broker."""
    root = tmp_path_factory.mktemp("kafka-stack")
    (root / "lib").symlink_to(settings.stack.dir / "lib")  # the jars `make setup` fetched
    own = load_settings(environ={**os.environ, "FX__STACK__DIR": str(root), "FX__STACK__KAFKA_BROKERS": "3",
                                 "FX__STACK__KAFKA_HEAP": "256m",
                                 "FX__KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_ports(NODE_PORTS)}"})
    layout = Layout(own.stack.dir)
    try:
        up(own, layout, kafka_services(own, layout))
        yield with_all_brokers(own)
    finally:
        down(own, layout)


@pytest.fixture(scope="module")
def on_brokers(piece: Slice, brokers: Settings) -> Slice:
    """The module's slice (graph, topic names, group, prefix) with Kafka on the 3-broker cluster, and its
    topics created there by ``ensure_topics`` (the brokers' default replication)."""
    env = {**piece.env, "FX__KAFKA__BOOTSTRAP_SERVERS": brokers.kafka.bootstrap_servers}
    moved = Slice(load_settings(environ=env), env)
    wait_until_listed(brokers, ensure_topics(kafka_admin(moved.settings.kafka), moved.settings))
    return moved


def wait_until_listed(brokers: Settings, topics: list[str]) -> None:
    """Until every broker lists ``topics``: each learns of a new topic on its own, a moment after the
    others, and a client asks any of them."""
    deadline = time.monotonic() + 60
    for node in kafka_nodes(brokers):
        alone = brokers.kafka.model_copy(update={"bootstrap_servers": node.address})
        while True:
            metadata = kafka_admin(alone).list_topics(timeout=10)  # a new client asks its bootstrap broker (-1)
            if metadata.orig_broker_id in (-1, node.node_id) and all(t in metadata.topics for t in topics):
                break
            assert time.monotonic() < deadline, f"{node.name} never listed {topics}"
            time.sleep(0.2)


def leaders(admin: AdminClient, topics: list[str]) -> dict[int, int]:
    """Partitions led per broker id, over ``topics``."""
    metadata = admin.list_topics(timeout=10)
    led: dict[int, int] = {}
    for topic in topics:
        for partition in metadata.topics[topic].partitions.values():
            led[partition.leader] = led.get(partition.leader, 0) + 1
    return led


def test_a_run_that_loses_a_broker_ends_identical_to_a_clean_run(
    on_brokers: Slice, brokers: Settings, redis_client: redis.Redis, tmp_path: Path
) -> None:
    kafka = on_brokers.settings.kafka
    admin = kafka_admin(kafka)
    topics = [kafka.topics.requests, kafka.topics.results]
    metadata = admin.list_topics(timeout=10)
    assert sorted(metadata.brokers) == [1, 2, 3]
    for topic in topics:
        assert {len(p.replicas) for p in metadata.topics[topic].partitions.values()} == {3}, topic
    resource = ConfigResource("topic", kafka.topics.results)
    assert admin.describe_configs([resource])[resource].result(10)["min.insync.replicas"].value == "2"

    expected = on_brokers.local_snapshot(redis_client)  # a clean run: no Kafka at all
    env = migrated_airflow(on_brokers, tmp_path / "airflow")
    workers = Workers(on_brokers, tmp_path)
    try:
        run = dags_test(env, batch_size=BATCH_SIZE)
        deadline = time.monotonic() + 300
        while workers.batches_done() < KILL_AFTER_BATCHES:
            assert run.poll() is None and time.monotonic() < deadline, "no batch done"
            time.sleep(0.05)
        # The workers' group coordinator: commits, the group's state and some partitions' leaders move.
        group = admin.describe_consumer_groups([kafka.consumer_group])[kafka.consumer_group].result(10)
        victim = next(n for n in kafka_nodes(brokers) if n.node_id == group.coordinator.id)
        led = leaders(admin, topics)
        signal_group(running(Layout(brokers.stack.dir), victim.name).pid, signal.SIGKILL)
        done_at_kill, killed_at = workers.batches_done(), time.monotonic()
        output, _ = run.communicate(timeout=600)
    finally:
        workers.stop()
    assert run.returncode == 0, output[-5000:]
    print(f"\nkilled {victim.name} (coordinator, leader of {led.get(victim.node_id, 0)} partitions) after "
          f"{done_at_kill} batches; the run ended {time.monotonic() - killed_at:.1f} s later")

    assert led.get(victim.node_id, 0) > 0
    metadata = admin.list_topics(timeout=10)
    assert sorted(metadata.brokers) == sorted({1, 2, 3} - {victim.node_id})
    offsets = metadata.topics["__consumer_offsets"].partitions.values()  # created by the workers' group
    assert {len(p.replicas) for p in offsets} == {3} and {len(p.isrs) for p in offsets} == {2}
    registry = on_brokers.registry(redis_client)
    run_id = registry.latest()
    manifest = registry.manifest(run_id)
    batches = json.loads(manifest["batch_table"])
    assert done_at_kill < len(batches), "the broker died after the last batch: not mid-run"
    assert on_brokers.snapshot(redis_client) == expected
    accounts = sum(key.startswith("n:") for key in expected)
    transfers = sum(key.startswith("e:") for key in expected)
    assert None not in batches and int(manifest["batches_counted"]) == len(batches)  # none lost
    assert (int(manifest["accounts_written"]), int(manifest["transfers"])) == (accounts, transfers)  # none twice
    assert (manifest["conflicts"], manifest["failed_batches"], manifest["status"]) == ("{}", "{}", "verified")
    print(f"{len(batches)} batches counted once each; duplicate signals set aside: {manifest['duplicates']}")


def test_down_stops_the_cluster_promptly(brokers: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    """Kept last. With controlled shutdown on, the last broker waited for a quorum that had gone, until
    ``stop`` killed it 30 s later."""
    layout = Layout(brokers.stack.dir)
    began = time.monotonic()
    down(brokers, layout)
    assert all(running(layout, node.name) is None for node in kafka_nodes(brokers))
    assert "killed after" not in capsys.readouterr().out
    assert time.monotonic() - began < 20
