"""The Kafka side of a run: topics to create, where a run's signals start, and reading them back.

Clients are passed in (the DAG builds them from its connections); no Airflow import here.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from fx_workers.protocol import HEADER_RUN, header_value
from fx_workers.tools.doctor import LOW_REPLICATION_FIX, Replication, topic_partitions, topic_replicas

if TYPE_CHECKING:
    from collections.abc import Iterator

    from confluent_kafka import Consumer, Message
    from confluent_kafka.admin import AdminClient

    from fx_workers.config import Settings

log = logging.getLogger(__name__)
POLL_SECONDS = 0.1
"""``consume()`` waits this long when fewer than a full batch of messages is left: short, so the
tail of a run is not read one second at a time."""


class PipelineError(RuntimeError):
    """A step of the run cannot go on; the message says why and what to do."""


def missing_topics(admin: AdminClient, settings: Settings) -> list[tuple[str, int, int]]:
    """The topics to create, as ``(name, partitions, replication factor)`` (-1: the broker's default).

    Logs a warning for a topic that exists with a lower replication factor than :func:`topic_replicas`
    (a broker's loss would lose or block it); creating topics again never raises it.

    :raises PipelineError: when a topic exists with fewer partitions than configured (workers would idle)
    """
    existing = admin.list_topics(timeout=10).topics
    missing = []
    for name, wanted in topic_partitions(settings.kafka).items():
        if name not in existing:
            missing.append((name, wanted, -1))
            continue
        if (found := len(existing[name].partitions)) < wanted:
            raise PipelineError(f"topic {name} must have at least {wanted} partitions (config). Got {found}")
        warn_on_low_replication(name, Replication.of(existing[name]), topic_replicas(settings))
    return missing


def warn_on_low_replication(name: str, replication: Replication, wanted: int) -> bool:
    """Log a warning when topic ``name`` has fewer copies than ``wanted``; True when it did."""
    if not 0 < replication.factor < wanted:  # 0: metadata without replicas (a stand-in), nothing to say
        return False
    log.warning("topic %s has replication factor %d, config wants %d (stack.kafka_brokers): %s", name,
                replication.factor, wanted, LOW_REPLICATION_FIX)
    return True


def fail_on_delivery_error(err: Any, message: Any) -> None:
    """A producer delivery callback that raises (from ``flush()``) instead of only logging.

    :raises PipelineError: naming the topic and the broker's error
    """
    if err is not None:
        raise PipelineError(f"message to {message.topic()} not delivered: {err}")


def end_offsets(consumer: Consumer, topic: str) -> dict[int, int]:
    """The current end (high watermark) of every partition of ``topic``."""
    from confluent_kafka import TopicPartition

    metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
    if metadata is None or metadata.error is not None or not metadata.partitions:
        raise PipelineError(f"topic {topic} is missing: {metadata.error if metadata else 'not in metadata'}")
    return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
            for p in sorted(metadata.partitions)}


def read_run(consumer: Consumer, topic: str, run_id: str, start: dict[int, int], end: dict[int, int],
             idle_seconds: float = 60.0) -> Iterator[Message]:
    """Every message of ``run_id`` between the ``start`` and ``end`` offsets, in partition order.

    :raises PipelineError: on a consumer error, or when nothing arrives for ``idle_seconds``
    """
    from confluent_kafka import TopicPartition

    remaining = {p for p in start if start[p] < end.get(p, 0)}
    consumer.assign([TopicPartition(topic, p, start[p]) for p in remaining])
    last_seen = time.monotonic()
    while remaining:
        messages = consumer.consume(num_messages=1000, timeout=POLL_SECONDS)
        if messages:
            last_seen = time.monotonic()
        elif time.monotonic() - last_seen > idle_seconds:
            raise PipelineError(f"reading {topic}: nothing for {idle_seconds:.0f}s from partitions {sorted(remaining)}")
        for message in messages:
            if message.error():
                raise PipelineError(f"reading {topic}: {message.error()}")
            partition = message.partition()
            if partition not in remaining:
                continue
            if message.offset() + 1 >= end[partition]:
                remaining.discard(partition)
            if message.offset() < end[partition] and header_value(message.headers(), HEADER_RUN) == run_id:
                yield message
