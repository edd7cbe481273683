"""The extraction worker: consume a request, compute its batch, write it to the run's namespace in
Redis, send the completion signal, then commit.

Delivery is at least once: the request's offset is committed only after the batch is written and
the broker acknowledged its signal, so a worker killed mid-batch leaves the request to be
redelivered; the rewrite writes the same bytes and the aggregation counts the batch once. A request
that cannot be decoded, or that names a run or plan that does not exist, goes to the dead letter
topic; a batch that keeps failing goes there too, with a failed signal so the DAG stops waiting.

The loop follows rq: check stop, poll, process, repeat. The first SIGTERM/SIGINT is a warm stop
(finish the current batch), the second a cold stop (abandon it uncommitted). A thread keeps the
health key (:meth:`~fx_workers.store.keys.RedisKeys.worker_health`) alive with counters, as arq does.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from fx_workers.engine.extract import catalogue_of, extract_batch
from fx_workers.engine.graph import WindowCache, open_driver
from fx_workers.protocol import (
    HEADER_KIND,
    HEADER_RUN,
    PRODUCER_CONFIG,
    BatchStatus,
    CompletionSignal,
    DeadLetter,
    ExtractionRequest,
    MessageError,
    MessageKind,
)
from fx_workers.steps.compute import write_batch
from fx_workers.store.client import open_redis
from fx_workers.store.keys import RedisKeys
from fx_workers.store.runs import RunRegistry, RunStatus
from fx_workers.store.writer import BatchWriter

if TYPE_CHECKING:
    from collections.abc import Iterator

    from confluent_kafka import Consumer, KafkaError, Message, Producer
    from neo4j import Driver
    from redis import Redis

    from fx_workers.config import Settings

log = logging.getLogger(__name__)

Outgoing = tuple[str, bytes | None, bytes, list[tuple[str, bytes]]]
"""A message to produce: topic, key, value, headers."""
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
HEALTH_INTERVAL_SECONDS = 5.0
DELIVERY_TIMEOUT_SECONDS = 60.0
MAX_BACKOFF_SECONDS = 15.0
MAX_POLL_INTERVAL_SECONDS = 600.0
"""Kafka's ``max.poll.interval.ms``: the longest a batch may take before the group reassigns it."""
SESSION_TIMEOUT_SECONDS = 45.0
"""Kafka's ``session.timeout.ms`` (Kafka's own default): how long the group keeps a silent static member's
partitions, and how long the client waits for its coordinator before it gives its membership up. A
broker restart takes 15 to 40 s here; with 10 s librdkafka gave up mid-restart and reset its member id,
the worker's next commit reached the reloaded coordinator under that empty id beside the old one the
coordinator still held for its ``group.instance.id``, and the broker answered ``FENCED_INSTANCE_ID``, fatal
to the consumer (see docs/operations.md)."""
QUIET_POLL_SECONDS = 30.0
"""The health key goes stale when the loop has not polled for this long outside a batch."""


class DeliveryError(RuntimeError):
    """The broker did not acknowledge every produced message."""


class ColdStopError(BaseException):
    """Raised by the second stop signal to abandon the current batch (not an ``Exception``)."""


@dataclass
class WorkerStats:
    """Counters published in the health key."""

    worker_id: str
    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)
    started: float = field(default_factory=time.time)
    batches: int = 0
    failed: int = 0
    dead_letters: int = 0
    accounts: int = 0
    transfers: int = 0
    current: str | None = None


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: a lost Neo4j or Redis connection (a restart, a cluster's failover), retriable
    Kafka errors."""
    from confluent_kafka import KafkaException
    from neo4j.exceptions import DriverError, Neo4jError
    from redis import exceptions as redis_errors

    if isinstance(exc, DriverError | Neo4jError):
        return exc.is_retryable()
    if isinstance(exc, KafkaException):
        return exc.args[0].retriable()
    # A Redis Cluster failing over: CLUSTERDOWN, TRYAGAIN, or no node known for a slot yet.
    return isinstance(exc, DeliveryError | redis_errors.ConnectionError | redis_errors.TimeoutError
                      | redis_errors.BusyLoadingError | redis_errors.ClusterDownError | redis_errors.TryAgainError
                      | redis_errors.SlotNotCoveredError)


def is_fatal(error: KafkaError) -> bool:
    """A consumer error it cannot recover from: librdkafka's fatal error (reported as ``_FATAL``, with the
    flag on the original error only) or a static member fenced by its own replacement after a broker
    restart. The consumer must be rebuilt; polling it further returns nothing."""
    from confluent_kafka import KafkaError

    return error.fatal() or error.code() in (KafkaError._FATAL, KafkaError.FENCED_INSTANCE_ID)


def retry_delays(first: float, total: float, cap: float = MAX_BACKOFF_SECONDS) -> Iterator[float]:
    """Delays that double from ``first`` up to ``cap`` while their sum stays within ``total``."""
    spent, delay = 0.0, first
    while spent + delay <= total:
        yield delay
        spent += delay
        delay = min(delay * 2, cap)


def default_worker_id() -> str:
    """The hostname: unique per container replica and stable across its restarts."""
    return socket.gethostname()


def client_id(worker_id: str) -> str:
    """Kafka ``client.id`` and static ``group.instance.id`` of worker ``worker_id``."""
    return f"fx-worker-{worker_id}"


class Worker:
    """One member of the ``kafka.consumer_group``; :meth:`run` until stopped or ``max_messages``.

    :param settings: the fx settings
    :param worker_id: the stable id that becomes the static group membership (a container's hostname)
    :param max_messages: exit after this many requests, defaults to never (tests use it)
    :param backoff_seconds: the first retry delay, doubled on each retry (up to 15 s) while the
        delays stay within ``workers.retry_seconds``, defaults to 1
    """

    def __init__(
        self,
        settings: Settings,
        worker_id: str,
        *,
        max_messages: int | None = None,
        backoff_seconds: float = 1.0,
    ) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.max_messages = max_messages
        self.backoff_seconds = backoff_seconds
        self._polled = time.monotonic()
        """When the loop last polled; the health key is only refreshed while this is recent."""
        self.stats = WorkerStats(worker_id)
        self.keys = RedisKeys(settings.redis.prefix)
        self.windows = WindowCache()
        """The pattern window of the run this worker computes now, read once for all its batches here."""
        self._stopping = threading.Event()

    def stop(self) -> None:
        """Warm stop: finish the current batch, then leave the loop."""
        self._stopping.set()

    def run(self) -> None:
        """Consume until :meth:`stop`, ``max_messages`` or a :class:`ColdStopError`; always close cleanly.

        No message stops the loop: whatever cannot be processed is dead-lettered and committed; a
        message whose outcome cannot be delivered is read again after a pause; a fatal consumer error
        (such as a fenced static member) rebuilds the consumer.
        """
        consumer, producer = self._consumer(), self._producer()
        # The worker's own backoff (workers.retry_seconds, logged per attempt) is the one retry budget:
        # the driver's 30 s of retries inside every managed transaction would stretch it many times over.
        driver = open_driver(self.settings.neo4j, max_transaction_retry_time=0)
        redis = open_redis(self.settings.redis)
        health = threading.Thread(target=self._keep_health, args=(redis,), name="health", daemon=True)
        health.start()
        handled = 0
        log.info("worker %s started: group=%s topic=%s", self.worker_id, self.settings.kafka.consumer_group,
                 self.settings.kafka.topics.requests)
        try:
            while not self._stopping.is_set() and (self.max_messages is None or handled < self.max_messages):
                message = consumer.poll(1.0)
                self._polled = time.monotonic()
                if message is None:
                    continue
                if (error := message.error()) is not None:
                    if is_fatal(error):
                        log.error("fatal consumer error, rebuilding the consumer: %s", error)
                        consumer = self._rebuild(consumer)
                    else:
                        log.warning("consumer error: %s", error)
                    continue
                if self._process(message, driver, redis, producer):
                    consumer = self._commit(consumer, message)
                    handled += 1
                else:
                    self._rewind(consumer, message)
        except ColdStopError:
            log.warning("cold stop: abandoning batch %s uncommitted", self.stats.current)
        finally:
            self._stopping.set()
            self._close(consumer)
            producer.flush(DELIVERY_TIMEOUT_SECONDS)
            driver.close()
            health.join()
            log.info("worker %s stopped after %d messages: %s", self.worker_id, handled, asdict(self.stats))

    def _process(self, message: Message, driver: Driver, redis: Redis, producer: Producer) -> bool:
        """Handle one message whatever it holds; False when it must be read again (nothing was concluded)."""
        try:
            self._handle(message, driver, redis, producer)
            return True
        except Exception as exc:
            if is_transient(exc):
                log.warning("offset %s of partition %s will be read again in %.0fs: %s", message.offset(),
                            message.partition(), MAX_BACKOFF_SECONDS, exc)
                self._stopping.wait(MAX_BACKOFF_SECONDS)
                return False
            log.exception("unexpected error on offset %s of partition %s", message.offset(), message.partition())
            reason = f"unexpected error: {type(exc).__name__}: {exc}"
            try:
                self._produce(producer, [self._dead_letter(message, reason)])
            except DeliveryError:
                return False
            return True

    def _rewind(self, consumer: Consumer, message: Message) -> None:
        """Read ``message`` again next (its outcome was not delivered, so it was not committed)."""
        from confluent_kafka import KafkaException, TopicPartition

        try:
            consumer.seek(TopicPartition(message.topic(), message.partition(), message.offset()))
        except KafkaException as exc:  # the partition moved to another member: it reads from the commit
            log.warning("could not rewind partition %s: %s", message.partition(), exc)

    def _rebuild(self, consumer: Consumer) -> Consumer:
        self._close(consumer)
        return self._consumer()

    def _close(self, consumer: Consumer) -> None:
        try:
            consumer.close()
        except Exception as exc:  # a fenced consumer may refuse to close cleanly; it is dropped anyway
            log.warning("closing the consumer: %s", exc)

    def _consumer(self) -> Consumer:
        """A new member of the group, subscribed to the requests topic."""
        from confluent_kafka import Consumer

        consumer = Consumer({
            "bootstrap.servers": self.settings.kafka.bootstrap_servers,
            "group.id": self.settings.kafka.consumer_group,
            "client.id": client_id(self.worker_id),
            "group.instance.id": client_id(self.worker_id),
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            # Outlasts a broker restart (no fence); a worker gone for good holds its partitions this long.
            "session.timeout.ms": int(SESSION_TIMEOUT_SECONDS * 1000),
            "max.poll.interval.ms": int(MAX_POLL_INTERVAL_SECONDS * 1000),
        })
        consumer.subscribe([self.settings.kafka.topics.requests], on_assign=self._log_assignment)
        return consumer

    def _producer(self) -> Producer:
        from confluent_kafka import Producer

        return Producer({
            "bootstrap.servers": self.settings.kafka.bootstrap_servers,
            "client.id": client_id(self.worker_id),
            **PRODUCER_CONFIG,
            "compression.type": "zstd",
            "linger.ms": 5,
            "message.timeout.ms": int(DELIVERY_TIMEOUT_SECONDS * 1000),
        })

    def _log_assignment(self, consumer: Consumer, partitions: list) -> None:
        """Log the partitions the group gave this worker, with a warning when it got none: a partition
        goes to one member, so the workers beyond the request topic's partition count sit idle."""
        if partitions:
            log.info("worker %s assigned partitions %s", self.worker_id, sorted(p.partition for p in partitions))
            return
        kafka = self.settings.kafka
        log.warning("worker %s was assigned no partition of %s: the group %s has more workers than its %d "
                    "partitions (kafka.partitions.requests), so this one sits idle; raise the partitions "
                    "(`make up` adds them) or run fewer workers (workers.count)", self.worker_id,
                    kafka.topics.requests, kafka.consumer_group, kafka.partitions.requests)

    def _handle(self, message: Message, driver: Driver, redis: Redis, producer: Producer) -> None:
        """Process one request; returns once its outcome (signal or dead letter) is acknowledged.

        :raises DeliveryError: when not even the failure can be reported; the request stays uncommitted
        """
        try:
            request = ExtractionRequest.decode(message.value() or b"")
        except MessageError as exc:
            log.warning("dead letter: offset %s of partition %s: %s", message.offset(), message.partition(), exc)
            self._produce(producer, [self._dead_letter(message, str(exc))])
            return
        if (refusal := self._refusal(request, redis)) is not None:
            if refusal:
                log.warning("dead letter: run=%s batch=%d: %s", request.run_id, request.batch_id, refusal)
                self._produce(producer, [self._dead_letter(message, refusal, request)])
            return
        self.stats.current = f"{request.run_id}/{request.batch_id}"
        error = None
        if request.schema_version != (schema := catalogue_of(self.settings).schema_version):
            error = f"schema_version must be {schema} (this worker's catalogue). Got {request.schema_version}"
        attempt, delays = 0, retry_delays(self.backoff_seconds, self.settings.workers.retry_seconds)
        transient = False
        while error is None:
            attempt += 1
            try:
                self._extract(request, driver, redis, producer, attempt)
                break
            except Exception as exc:
                transient = is_transient(exc)
                delay = next(delays, None) if transient else None
                if delay is None:
                    error = f"{type(exc).__name__}: {exc} (attempt {attempt})"
                    log.exception("batch failed run=%s batch=%d", request.run_id, request.batch_id)
                else:
                    log.warning("retrying run=%s batch=%d in %.1fs (attempt %d): %s", request.run_id,
                                request.batch_id, delay, attempt, exc)
                    if self._stopping.wait(delay):
                        raise ColdStopError("stopped while retrying") from exc
        if error is not None:
            self._fail(request, message, producer, error, attempt, transient=transient)
        self.stats.current = None

    def _refusal(self, request: ExtractionRequest, redis: Redis) -> str | None:
        """Why the request must not be computed: a reason to dead-letter it, ``""`` to skip it with a log
        line (its run is over), or None to compute it. Only a batch of a running run's stored plan is
        computed, so a stale or forged request can never write into a run, published or not."""
        status, plan = RunRegistry(redis, self.keys).fields(request.run_id, "status", "plan")
        if status is None:
            return f"run {request.run_id} does not exist (no manifest at {self.keys.run(request.run_id)})"
        if plan != request.plan:
            return (f"request of plan {request.plan}, but run {request.run_id} has plan {plan} "
                    "(a stale or forged request)")
        if status != RunStatus.RUNNING:
            log.info("skipped run=%s batch=%d: the run is %s", request.run_id, request.batch_id, status)
            return ""
        planned = redis.get(self.keys.of_run(request.run_id).plan_batch(request.batch_id))
        if planned is None or json.loads(planned) != request.ids:
            return (f"the ids of batch {request.batch_id} differ from the run's stored plan "
                    f"({self.keys.of_run(request.run_id).plan_batch(request.batch_id)}): a forged request")
        return None

    def _extract(self, request: ExtractionRequest, driver: Driver, redis: Redis, producer: Producer,
                 attempt: int) -> None:
        """Read, compute and write one batch, then send its completion signal."""
        started = time.perf_counter()
        features = extract_batch(driver, self.settings, request.ids, request.as_of, self.windows.bind(request.run_id))
        extract_ms = (time.perf_counter() - started) * 1000
        writer = BatchWriter(redis, self.keys.of_run(request.run_id))
        signal = write_batch(writer, request, features, attempt=attempt, worker_id=self.worker_id,
                             timings_ms={"extract": round(extract_ms, 1)})
        sent = time.perf_counter()
        self._produce(producer, [self._signal(signal)], run_id=request.run_id)
        self.stats.batches += 1
        self.stats.accounts += signal.accounts
        self.stats.transfers += signal.transfers
        log.info(
            "batch done run=%s batch=%d accounts=%d transfers=%d extract_ms=%.0f write_ms=%.0f stats_ms=%.0f "
            "signal_ms=%.0f attempt=%d", request.run_id, request.batch_id, signal.accounts, signal.transfers,
            extract_ms, signal.timings_ms["write"], signal.timings_ms["stats"], (time.perf_counter() - sent) * 1000,
            attempt,
        )

    def _fail(self, request: ExtractionRequest, message: Message, producer: Producer, error: str,
              attempts: int, *, transient: bool = False) -> None:
        """Dead-letter the request and tell the DAG the batch failed (``transient``: by an outage only)."""
        signal = CompletionSignal(run_id=request.run_id, plan=request.plan, batch_id=request.batch_id,
                                  status=BatchStatus.FAILED, attempt=max(attempts, 1), worker_id=self.worker_id,
                                  error=error[:4000], transient=transient)
        self._produce(producer, [self._dead_letter(message, error, request), self._signal(signal)],
                      run_id=request.run_id)
        self.stats.failed += 1

    def _signal(self, signal: CompletionSignal) -> Outgoing:
        key = f"{signal.run_id}/{signal.batch_id}".encode()
        return self.settings.kafka.topics.results, key, signal.encode(), signal.headers()

    def _dead_letter(self, message: Message, reason: str, request: ExtractionRequest | None = None) -> Outgoing:
        self.stats.dead_letters += 1
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

    def _produce(self, producer: Producer, messages: list[Outgoing], run_id: str | None = None) -> None:
        """Produce and wait for the broker's acknowledgements.

        :raises DeliveryError: when a message was not acknowledged in time
        """
        errors = []

        def delivered(err: Any, _msg: Any) -> None:
            if err is not None:
                errors.append(err)

        for topic, key, value, headers in messages:
            producer.produce(topic, value=value, key=key, headers=headers, on_delivery=delivered)
            producer.poll(0)
        pending = producer.flush(DELIVERY_TIMEOUT_SECONDS)
        if errors or pending:
            where = f" of run {run_id}" if run_id else ""
            raise DeliveryError(f"{len(errors)} failed and {pending} unacknowledged of {len(messages)} messages"
                                f"{where}; first error: {errors[0] if errors else None}")

    def _commit(self, consumer: Consumer, message: Message) -> Consumer:
        """Commit past ``message``; losing the partition meanwhile only means a harmless redelivery.
        Returns the consumer to go on with: a new one when this one was fenced or failed fatally."""
        from confluent_kafka import KafkaException

        try:
            consumer.commit(message=message, asynchronous=False)
        except KafkaException as exc:
            log.warning("commit of offset %s failed (it will be redelivered): %s", message.offset(), exc)
            if is_fatal(exc.args[0]):
                log.error("fatal consumer error, rebuilding the consumer: %s", exc)
                return self._rebuild(consumer)
        return consumer

    def consuming(self) -> bool:
        """Whether the loop is alive: it polled recently, or it is inside a batch that may still finish."""
        quiet = time.monotonic() - self._polled
        return quiet < QUIET_POLL_SECONDS or (self.stats.current is not None and quiet < MAX_POLL_INTERVAL_SECONDS)

    def _keep_health(self, redis: Redis) -> None:
        """Rewrite the health key every interval with TTL interval + 1 s while the loop is consuming, so a
        stuck or stopped loop shows as unhealthy within seconds."""
        key = self.keys.worker_health(self.worker_id)
        ttl_ms = int((HEALTH_INTERVAL_SECONDS + 1) * 1000)
        while not self._stopping.is_set():
            if not self.consuming():
                log.warning("health key %s not refreshed: the loop has not polled for %.0fs", key,
                            time.monotonic() - self._polled)
                self._stopping.wait(HEALTH_INTERVAL_SECONDS)
                continue
            try:
                redis.set(key, json.dumps(asdict(self.stats) | {"updated": time.time()}), px=ttl_ms)
            except Exception as exc:
                log.warning("health key %s not written: %s", key, exc)
            self._stopping.wait(HEALTH_INTERVAL_SECONDS)


def serve(settings: Settings, worker_id: str, max_messages: int | None = None) -> None:
    """Run worker ``worker_id`` in this process's main thread, logging to stderr, until a stop signal."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    worker = Worker(settings, worker_id, max_messages=max_messages)
    install_signal_handlers(worker)
    worker.run()


def install_signal_handlers(worker: Worker) -> None:
    """The first SIGTERM/SIGINT stops warm; the handlers are then swapped so a second stops cold."""

    def cold(signum: int, _frame: Any) -> None:
        raise ColdStopError(signal.Signals(signum).name)

    def warm(signum: int, _frame: Any) -> None:
        log.info("%s: finishing the current batch (send again to abandon it)", signal.Signals(signum).name)
        worker.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, cold)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, warm)


def check_health(settings: Settings, worker_id: str) -> tuple[bool, str]:
    """Whether worker ``worker_id`` wrote its health key within the TTL, and what it says."""
    key = RedisKeys(settings.redis.prefix).worker_health(worker_id)
    value = open_redis(settings.redis).get(key)
    if value is None:
        return False, f"{key} is missing or expired"
    return True, value.decode()
