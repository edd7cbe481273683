"""A restart of the only broker does not fence the workers' consumers: a private single-node Kafka
next to the stack is SIGKILLed and started again by ``ops.stack.up`` while two consumers built by
``new_consumer`` hold uncommitted messages, as workers inside a batch do; their commits after the
restart must not come back ``FENCED_INSTANCE_ID`` (fatal to a static member, which then had to be
rebuilt). With ``session.timeout.ms`` 10 s, both were fenced (docs/operations.md)."""

from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING

import psutil
from confluent_kafka import KafkaError, KafkaException, Producer

from fx_workers.config import load_settings
from fx_workers.worker.transport import new_consumer
from ops.fixtures import free_ports
from ops.kafka import kafka_services
from ops.process import Layout, read_pid, stop
from ops.stack import up

if TYPE_CHECKING:
    from pathlib import Path

    from confluent_kafka import Consumer, Message

    from fx_workers.config import Settings



def first_message(consumer: Consumer, deadline: float) -> Message:
    """Poll until a message arrives (the group has given this member its partitions)."""
    while time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            return message
    raise AssertionError("no message within the deadline")


def commit_error(consumer: Consumer, message: Message) -> KafkaError | None:
    try:
        consumer.commit(message=message, asynchronous=False)
    except KafkaException as exc:
        return exc.args[0]
    return None


def test_a_broker_restart_does_not_fence_the_workers(tmp_path: Path, settings: Settings) -> None:
    (tmp_path / "lib").symlink_to(settings.stack.dir / "lib")  # the jars `make setup` fetched
    own = load_settings(environ={**os.environ, "FX__STACK__DIR": str(tmp_path), "FX__STACK__KAFKA_HEAP": "256m",
                                 "FX__KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{free_ports(2)}"})
    layout = Layout(own.stack.dir)
    kafka = kafka_services(own, layout)
    consumers: list[Consumer] = []
    try:
        up(own, layout, kafka)
        producer = Producer({"bootstrap.servers": own.kafka.bootstrap_servers})
        for key in range(4 * own.kafka.partitions.requests):
            producer.produce(own.kafka.topics.requests, key=str(key).encode(), value=b"request")
        assert producer.flush(30) == 0
        consumers = [new_consumer(own, str(i)) for i in range(2)]
        deadline = time.monotonic() + 60
        held = [first_message(consumer, deadline) for consumer in consumers]

        pid = read_pid(layout, "kafka").pid  # as tests/faults' kafka_restart does
        for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
            proc.send_signal(signal.SIGKILL)
        time.sleep(3)
        up(own, layout, kafka)
        time.sleep(2)  # the coordinator has reloaded the group; the workers have not polled since

        errors = [commit_error(consumer, message) for consumer, message in zip(consumers, held, strict=True)]
        assert [e.name() for e in errors if e is not None and e.code() == KafkaError.FENCED_INSTANCE_ID] == []
        for consumer in consumers:  # and nothing fatal waits for the next poll
            for _ in range(4):
                message = consumer.poll(0.5)
                assert message is None or message.error() is None or message.error().code() not in (
                    KafkaError._FATAL, KafkaError.FENCED_INSTANCE_ID), message.error()
    finally:
        for consumer in consumers:
            consumer.close()
        for service in kafka:
            stop(service.name, layout)
