"""The Kafka side of a run: the topics fx needs, where a run's signals start, and reading them back.

:func:`ensure_topics` is the one rule for fx's topics, used by the DAG, ``make up`` (``ops.kafka``) and
the benches. Clients are passed in (the DAG builds them from its connections); no Airflow import here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from fx_workers.protocol import HEADER_RUN, header_value

if TYPE_CHECKING:
    from collections.abc import Iterator

    from confluent_kafka import Consumer, KafkaError, Message
    from confluent_kafka.admin import AdminClient, TopicMetadata

    from fx_workers.config import KafkaConfig, Settings

T = TypeVar("T")

log = logging.getLogger(__name__)
POLL_SECONDS = 0.1
"""``consume()`` waits this long when fewer than a full batch of messages is left: short, so the
tail of a run is not read one second at a time."""


SETTLE_SECONDS = 10.0
"""How long :func:`end_offsets` retries while a topic's metadata settles: right after a topic is created
(or a broker restarts) a partition may have no leader yet, or its old one answers
``NOT_LEADER_FOR_PARTITION``."""
SETTLING = frozenset({"LEADER_NOT_AVAILABLE", "NOT_LEADER_FOR_PARTITION", "UNKNOWN_TOPIC_OR_PART",
                      "_UNKNOWN_PARTITION", "_UNKNOWN_TOPIC"})
"""The ``KafkaError`` names of metadata that is settling."""
LOW_REPLICATION_FIX = ("Kafka keeps a topic's replication factor as it was created: raise it with "
                       "kafka-reassign-partitions.sh, or delete the topic (`make clean-stack` on the local stack), "
                       "then `make up`")


class PipelineError(RuntimeError):
    """A step of the run cannot go on; the message says why and what to do."""


def topic_partitions(kafka: KafkaConfig) -> dict[str, int]:
    """Configured topic name -> configured partition count."""
    return {
        getattr(kafka.topics, role): getattr(kafka.partitions, role) for role in type(kafka.topics).model_fields
    }


def topic_replicas(settings: Settings) -> int:
    """The copies each fx topic should have: one per broker of ``stack.kafka_brokers`` (the stack's
    brokers' ``default.replication.factor``, so a topic created with the broker's default has them too)."""
    return settings.stack.kafka_brokers


@dataclass(frozen=True)
class Replication:
    """A topic's copies as its metadata says: the fewest replicas of any partition, and the
    partitions with fewer in-sync replicas than replicas (a broker down or behind)."""

    factor: int
    under_replicated: int

    @classmethod
    def of(cls, topic: TopicMetadata) -> Replication:
        described = [p for p in topic.partitions.values() if p is not None]  # None: a test's stand-in
        return cls(min((len(p.replicas) for p in described), default=0),
                   sum(len(p.isrs) < len(p.replicas) for p in described))


def ensure_topics(admin: AdminClient, settings: Settings, timeout: float = 30.0) -> list[str]:
    """Create the missing fx topics, add partitions to any with fewer than configured, and log a warning
    for any with fewer replicas than :func:`topic_replicas` (Kafka keeps a topic's replication factor,
    so that one is the operator's to fix). New topics take the brokers' default replication factor and
    ``min.insync.replicas``; the stack's brokers default to a copy on each and, with three, 2 in sync.

    :param timeout: seconds each request to the brokers may take, defaults to 30
    :returns: the topics created or grown
    :raises PipelineError: when a topic must be created while fewer brokers than :func:`topic_replicas`
        are registered (the first broker up would lead every partition), or a broker refuses a change
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import NewPartitions, NewTopic

    metadata = admin.list_topics(timeout=timeout)
    existing, wanted, replicas = metadata.topics, topic_partitions(settings.kafka), topic_replicas(settings)
    for name in sorted(wanted.keys() & existing.keys()):
        warn_on_low_replication(name, Replication.of(existing[name]), replicas)
    create = [NewTopic(name, count) for name, count in wanted.items() if name not in existing]
    grow = [NewPartitions(name, count) for name, count in wanted.items()
            if name in existing and existing[name].error is None and len(existing[name].partitions) < count]
    if create and len(metadata.brokers) < replicas:
        raise PipelineError(f"{len(metadata.brokers)} of {replicas} brokers registered (stack.kafka_brokers); "
                            f"topics {', '.join(topic.topic for topic in create)} wait for the others")
    futures = {**(admin.create_topics(create, operation_timeout=timeout) if create else {}),
               **(admin.create_partitions(grow, operation_timeout=timeout) if grow else {})}
    changed = []
    for name, future in futures.items():
        try:
            future.result(timeout=timeout)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:  # else another caller was first
                raise PipelineError(f"topic {name}: {exc.args[0].str()}") from None
            continue
        log.info("topic %s now has %d partitions", name, wanted[name])
        changed.append(name)
    return sorted(changed)


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


def end_offsets(consumer: Consumer, topic: str, settle_seconds: float = SETTLE_SECONDS) -> dict[int, int]:
    """The current end (high watermark) of every partition of ``topic``, asked again while its metadata
    settles (:data:`SETTLING`), for up to ``settle_seconds``.

    :raises PipelineError: when the topic is missing, or its metadata has not settled in time
    """
    from confluent_kafka import KafkaException, TopicPartition

    def ends() -> dict[int, int]:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is not None and metadata.error is not None:
            raise KafkaException(metadata.error)  # no leader yet, right after creation: settling
        if metadata is None or not metadata.partitions:
            raise PipelineError(f"topic {topic} is missing: not in metadata")
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
                for p in sorted(metadata.partitions)}

    try:
        return retry_settling(ends, settle_seconds)
    except KafkaException as exc:
        raise PipelineError(f"topic {topic}: {exc.args[0].str()}") from None


def retry_settling(call: Callable[[], T], budget_seconds: float, pause_seconds: float = 0.2) -> T:
    """``call()``, again after ``pause_seconds`` while it raises a ``KafkaException`` of :data:`SETTLING`,
    until ``budget_seconds`` have passed; then its last error is raised."""
    from confluent_kafka import KafkaException

    deadline = time.monotonic() + budget_seconds
    while True:
        try:
            return call()
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            if error.name() not in SETTLING or time.monotonic() >= deadline:
                raise
            log.info("Kafka metadata settling (%s); asking again", error.str())
        time.sleep(pause_seconds)


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
