"""The worker's Kafka side: its consumer and producer, what it sends, and how it commits.

Kept apart from the loop so the rules that make delivery at least once are in one place: a message
is sent only when the broker acknowledged it (:func:`deliver`, which the DAG's operators reuse), an
offset is committed synchronously, and a consumer that the broker fenced is rebuilt rather than
polled further.
"""

from __future__ import annotations

import logging
import socket
from typing import TYPE_CHECKING, Any

from fx_workers.protocol import HEADER_KIND, HEADER_RUN, PRODUCER_CONFIG, DeadLetter, MessageKind

if TYPE_CHECKING:
    from collections.abc import Sequence

    from confluent_kafka import Consumer, KafkaError, Message, Producer

    from fx_workers.config import Settings
    from fx_workers.protocol import CompletionSignal, ExtractionRequest

log = logging.getLogger(__name__)

Outgoing = tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]
"""A message to produce: topic, key, value, headers."""
DELIVERY_TIMEOUT_SECONDS = 60.0
MAX_POLL_INTERVAL_SECONDS = 600.0
"""Kafka's ``max.poll.interval.ms``: the longest a batch may take before the group reassigns it."""
SESSION_TIMEOUT_SECONDS = 45.0
"""Kafka's ``session.timeout.ms`` (Kafka's own default): how long the group keeps a silent static member's
partitions, and how long the client waits for its coordinator before it gives its membership up. A
broker restart takes 15 to 40 s here; with 10 s librdkafka gave up mid-restart and reset its member id,
the worker's next commit reached the reloaded coordinator under that empty id beside the old one the
coordinator still held for its ``group.instance.id``, and the broker answered ``FENCED_INSTANCE_ID``, fatal
to the consumer (see docs/operations.md)."""


class DeliveryError(RuntimeError):
    """The broker did not acknowledge every produced message."""


def is_fatal(error: KafkaError) -> bool:
    """A consumer error it cannot recover from: librdkafka's fatal error (reported as ``_FATAL``, with the
    flag on the original error only) or a static member fenced by its own replacement after a broker
    restart. The consumer must be rebuilt; polling it further returns nothing."""
    from confluent_kafka import KafkaError

    return error.fatal() or error.code() in (KafkaError._FATAL, KafkaError.FENCED_INSTANCE_ID)


def default_worker_id() -> str:
    """The hostname: unique per container replica and stable across its restarts."""
    return socket.gethostname()


def client_id(worker_id: str) -> str:
    """Kafka ``client.id`` and static ``group.instance.id`` of worker ``worker_id``."""
    return f"fx-worker-{worker_id}"


def consumer_config(settings: Settings, worker_id: str) -> dict[str, Any]:
    """A static member of the ``kafka.consumer_group`` that commits by hand."""
    return {
        "bootstrap.servers": settings.kafka.bootstrap_servers,
        "group.id": settings.kafka.consumer_group,
        "client.id": client_id(worker_id),
        "group.instance.id": client_id(worker_id),
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        # Outlasts a broker restart (no fence); a worker gone for good holds its partitions this long.
        "session.timeout.ms": int(SESSION_TIMEOUT_SECONDS * 1000),
        "max.poll.interval.ms": int(MAX_POLL_INTERVAL_SECONDS * 1000),
    }


def new_consumer(settings: Settings, worker_id: str) -> Consumer:
    """A new member of the group, subscribed to the requests topic."""
    from confluent_kafka import Consumer

    consumer = Consumer(consumer_config(settings, worker_id))

    def assigned(_consumer: Consumer, partitions: list) -> None:
        log_assignment(settings, worker_id, partitions)

    consumer.subscribe([settings.kafka.topics.requests], on_assign=assigned)
    return consumer


def log_assignment(settings: Settings, worker_id: str, partitions: list) -> None:
    """Log the partitions the group gave a worker, with a warning when it got none: a partition goes to
    one member, so the workers beyond the request topic's partition count sit idle."""
    if partitions:
        log.info("worker %s assigned partitions %s", worker_id, sorted(p.partition for p in partitions))
        return
    kafka = settings.kafka
    log.warning("worker %s was assigned no partition of %s: the group %s has more workers than its %d "
                "partitions (kafka.partitions.requests), so this one sits idle; raise the partitions "
                "(`make up` adds them) or run fewer workers (workers.count)", worker_id,
                kafka.topics.requests, kafka.consumer_group, kafka.partitions.requests)


def deliver(producer: Producer, messages: Sequence[Outgoing], *, timeout: float = DELIVERY_TIMEOUT_SECONDS,
            run_id: str | None = None) -> None:
    """Produce ``messages`` and wait for the broker's acknowledgements.

    :raises DeliveryError: when a message was not acknowledged within ``timeout`` seconds
    """
    errors = []

    def delivered(err: Any, _msg: Any) -> None:
        if err is not None:
            errors.append(err)

    for topic, key, value, headers in messages:
        producer.produce(topic, value=value, key=key, headers=headers, on_delivery=delivered)
        producer.poll(0)
    pending = producer.flush(timeout)
    if errors or pending:
        where = f" of run {run_id}" if run_id else ""
        raise DeliveryError(f"{len(errors)} failed and {pending} unacknowledged of {len(messages)} messages"
                            f"{where}; first error: {errors[0] if errors else None}")


class KafkaTransport:
    """One worker's consumer and producer; the consumer is replaced when the broker fences it."""

    def __init__(self, settings: Settings, worker_id: str) -> None:
        from confluent_kafka import Producer

        self.settings = settings
        self.worker_id = worker_id
        self.consumer = new_consumer(settings, worker_id)
        self.producer = Producer({
            "bootstrap.servers": settings.kafka.bootstrap_servers,
            "client.id": client_id(worker_id),
            **PRODUCER_CONFIG,
            "compression.type": "zstd",
            "linger.ms": 5,
            "message.timeout.ms": int(DELIVERY_TIMEOUT_SECONDS * 1000),
        })

    def poll(self, timeout: float) -> Message | None:
        """The next request, or None; a consumer error is logged, and a fatal one rebuilds the consumer."""
        message = self.consumer.poll(timeout)
        if message is None or (error := message.error()) is None:
            return message
        if is_fatal(error):
            log.error("fatal consumer error, rebuilding the consumer: %s", error)
            self._rebuild()
        else:
            log.warning("consumer error: %s", error)
        return None

    def send(self, messages: Sequence[Outgoing], run_id: str | None = None) -> None:
        """:func:`deliver` on this worker's producer."""
        deliver(self.producer, messages, run_id=run_id)

    def commit(self, message: Message) -> None:
        """Commit past ``message``; losing the partition meanwhile only means a harmless redelivery."""
        from confluent_kafka import KafkaException

        try:
            self.consumer.commit(message=message, asynchronous=False)
        except KafkaException as exc:
            log.warning("commit of offset %s failed (it will be redelivered): %s", message.offset(), exc)
            if is_fatal(exc.args[0]):
                log.error("fatal consumer error, rebuilding the consumer: %s", exc)
                self._rebuild()

    def rewind(self, *messages: Message) -> None:
        """Read ``messages`` again next, the first one first (they were not concluded, so not committed)."""
        from confluent_kafka import KafkaException, TopicPartition

        for message in reversed(messages):  # on one partition the last seek wins: the earliest offset
            try:
                self.consumer.seek(TopicPartition(message.topic(), message.partition(), message.offset()))
            except KafkaException as exc:  # the partition moved to another member: it reads from the commit
                log.warning("could not rewind partition %s: %s", message.partition(), exc)

    def signal(self, signal: CompletionSignal) -> Outgoing:
        key = f"{signal.run_id}/{signal.batch_id}".encode()
        return self.settings.kafka.topics.results, key, signal.encode(), signal.headers()

    def dead_letter(self, message: Message, reason: str, request: ExtractionRequest | None = None) -> Outgoing:
        original = message.value() or b""
        letter = DeadLetter(
            reason=reason, topic=message.topic(), partition=message.partition(), offset=message.offset(),
            worker_id=self.worker_id, run_id=request.run_id if request else None,
            batch_id=request.batch_id if request else None, original_bytes=len(original),
        )
        headers = [(HEADER_KIND, MessageKind.DEAD_LETTER.encode())]
        if request is not None:
            headers.append((HEADER_RUN, request.run_id.encode()))
        return self.settings.kafka.topics.dead_letter, message.key(), letter.frame(original), headers

    def close(self) -> None:
        """Leave the group and send what is still queued."""
        self._close_consumer()
        self.producer.flush(DELIVERY_TIMEOUT_SECONDS)

    def _rebuild(self) -> None:
        self._close_consumer()
        self.consumer = new_consumer(self.settings, self.worker_id)

    def _close_consumer(self) -> None:
        try:
            self.consumer.close()
        except Exception as exc:  # a fenced consumer may refuse to close cleanly; it is dropped anyway
            log.warning("closing the consumer: %s", exc)
