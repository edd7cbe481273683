"""The worker's loop, as rq's ``work()``: check stop, poll, handle, send the outcome, commit, repeat.

At least once: an offset is committed only after the broker acknowledged its outcome (a signal, a dead
letter), so a worker killed mid-batch leaves it to be redelivered and rewritten with the same bytes.
While a batch is written, the next request, if already fetched and of the run and plan this worker just
computed (a request of another run or plan is never read ahead), is read on the read thread; it is
committed after the current one, and rewound with it, so nothing read ahead is ever skipped. The first
SIGTERM/SIGINT is a warm stop (finish what was taken), the second a cold stop (abandon it uncommitted).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from fx_workers.engine.graph import open_driver
from fx_workers.protocol import BatchStatus, ExtractionRequest, MessageError
from fx_workers.steps.write import RedisSink
from fx_workers.store.client import open_redis
from fx_workers.store.keys import RedisKeys
from fx_workers.worker.health import WorkerStats, record_health
from fx_workers.worker.job import MAX_BACKOFF_SECONDS, Outcome, handle, is_transient, retry_delays
from fx_workers.worker.reads import Neo4jGraph, Prefetched, ReadAhead
from fx_workers.worker.transport import DeliveryError, KafkaTransport

if TYPE_CHECKING:
    from confluent_kafka import Message

    from fx_workers.config import Settings
    from fx_workers.worker.job import FeatureSink, GraphReader

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class ColdStopError(BaseException):
    """Raised by the second stop signal to abandon the current batch (not an ``Exception``)."""


@dataclass(frozen=True)
class Polled:
    """A message taken from the consumer: its request and the reader of its batch, or why it does not
    decode."""

    message: Message
    request: ExtractionRequest | None
    graph: GraphReader
    error: str = ""


class Worker:
    """One member of the ``kafka.consumer_group``; :meth:`run` until stopped or ``max_messages``.

    :param settings: the fx settings
    :param worker_id: the stable id that becomes the static group membership (a container's hostname)
    :param max_messages: exit after this many requests, defaults to never (tests use it)
    :param backoff_seconds: the first retry delay, doubled on each retry (up to 15 s) while the
        delays stay within ``workers.retry_seconds``, defaults to 1
    """

    def __init__(self, settings: Settings, worker_id: str, *, max_messages: int | None = None,
                 backoff_seconds: float = 1.0) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.max_messages = max_messages
        self.backoff_seconds = backoff_seconds
        self.stats = WorkerStats(worker_id)
        self.keys = RedisKeys(settings.redis.prefix)
        self.handled = 0
        self._polled = time.monotonic()
        """When the loop last polled; the health key is only refreshed while this is recent."""
        self._computed: tuple[str, str] | None = None
        """The run and plan of the last batch computed: only their requests are read ahead."""
        self._stopping = threading.Event()

    def stop(self) -> None:
        """Warm stop: finish what was taken, then leave the loop."""
        self._stopping.set()

    def run(self) -> None:
        """Consume until :meth:`stop`, ``max_messages`` or a :class:`ColdStopError`; always close cleanly.
        No message stops the loop: what cannot be processed is dead-lettered, what cannot be concluded is
        read again after a pause, and a fatal consumer error (a fenced static member) rebuilds the consumer.
        """
        transport = KafkaTransport(self.settings, self.worker_id)
        # The worker's own backoff (workers.retry_seconds, logged per attempt) is the one retry budget:
        # the driver's 30 s of retries inside every managed transaction would stretch it many times over.
        driver = open_driver(self.settings.neo4j, max_transaction_retry_time=0)
        redis = open_redis(self.settings.redis)
        reads = ReadAhead(Neo4jGraph(driver, self.settings))
        health = threading.Thread(target=record_health, name="health", daemon=True, args=(
            redis, self.keys.worker_health(self.worker_id), self.stats, lambda: time.monotonic() - self._polled,
            self._stopping))
        health.start()
        log.info("worker %s started: group=%s topic=%s", self.worker_id, self.settings.kafka.consumer_group,
                 self.settings.kafka.topics.requests)
        try:
            self.consume(transport, reads, RedisSink(redis, self.keys))
        except ColdStopError:
            log.warning("cold stop: abandoning batch %s uncommitted", self.stats.current)
        finally:
            self._stopping.set()
            reads.close()
            transport.close()
            driver.close()
            health.join()
            log.info("worker %s stopped after %d messages: %s", self.worker_id, self.handled, asdict(self.stats))

    def consume(self, transport: KafkaTransport, reads: ReadAhead, sink: FeatureSink) -> None:
        """Take, conclude and commit messages with these parts until stopped or ``max_messages``."""
        queued: Polled | None = None
        while queued is not None or self._may_take(0):
            current, queued = queued or self._take(transport.poll(1.0), reads), None
            if current is None:
                continue
            if isinstance(current.graph, Prefetched) and self._may_take(1):  # behind a read already started
                queued = self._take(transport.poll(0), reads)
            if self._process(current, transport, sink):
                transport.commit(current.message)
                self.handled += 1
            else:
                transport.rewind(*(p.message for p in (current, queued) if p is not None))
                queued = None

    def _may_take(self, taken: int) -> bool:
        """Whether another message may be taken beside ``taken`` not yet concluded."""
        return not self._stopping.is_set() and (self.max_messages is None or self.handled + taken < self.max_messages)

    def _take(self, message: Message | None, reads: ReadAhead) -> Polled | None:
        """Decode ``message``; begin reading its batch now if it belongs to the run being computed."""
        self._polled = time.monotonic()
        if message is None:
            return None
        try:
            request = ExtractionRequest.decode(message.value() or b"")
        except MessageError as exc:
            return Polled(message, None, reads, error=str(exc))
        ahead = (request.run_id, request.plan) == self._computed and request.schema_version == reads.schema_version
        return Polled(message, request, reads.start(request) if ahead else reads)

    def _process(self, polled: Polled, transport: KafkaTransport, sink: FeatureSink) -> bool:
        """Conclude one message whatever it holds; False when it must be read again (nothing was concluded)."""
        message, request = polled.message, polled.request
        try:
            if request is None:
                log.warning("dead letter: offset %s of partition %s: %s", message.offset(), message.partition(),
                            polled.error)
                outcome = Outcome(dead_letter=polled.error)
            else:
                self.stats.current = f"{request.run_id}/{request.batch_id}"
                outcome = handle(request, polled.graph, sink, worker_id=self.worker_id, pause=self._pause,
                                 delays=retry_delays(self.backoff_seconds, self.settings.workers.retry_seconds))
            self._send(transport, polled, outcome)
            return True
        except Exception as exc:
            if is_transient(exc):
                log.warning("offset %s of partition %s will be read again in %.0fs: %s", message.offset(),
                            message.partition(), MAX_BACKOFF_SECONDS, exc)
                self._stopping.wait(MAX_BACKOFF_SECONDS)
                return False
            log.exception("unexpected error on offset %s of partition %s", message.offset(), message.partition())
            try:
                transport.send([transport.dead_letter(message, f"unexpected error: {type(exc).__name__}: {exc}")])
            except DeliveryError:
                return False
            self.stats.count(None, dead_letters=1)
            return True
        finally:
            self.stats.current = None

    def _send(self, transport: KafkaTransport, polled: Polled, outcome: Outcome) -> None:
        """Send the outcome's messages and wait for the broker; then count it."""
        messages = []
        if outcome.dead_letter is not None:
            messages.append(transport.dead_letter(polled.message, outcome.dead_letter, polled.request))
        if (done := outcome.signal) is not None:
            messages.append(transport.signal(done))
        if not messages:
            return
        sent = time.perf_counter()
        transport.send(messages, run_id=polled.request.run_id if polled.request else None)
        self.stats.count(done, dead_letters=outcome.dead_letter is not None)
        if done is not None and done.status is BatchStatus.OK:
            self._computed = done.run_id, done.plan
            log.info("batch done run=%s batch=%d accounts=%d transfers=%d extract_ms=%.0f (waited %.0f) write_ms=%.0f "
                     "stats_ms=%.0f signal_ms=%.0f attempt=%d", done.run_id, done.batch_id, done.accounts,
                     done.transfers, done.timings_ms["extract"], done.timings_ms["extract_wait"],
                     done.timings_ms["write"], done.timings_ms["stats"], (time.perf_counter() - sent) * 1000,
                     done.attempt)

    def _pause(self, seconds: float) -> None:
        """Wait before a retry; a stop meanwhile abandons the batch uncommitted."""
        if self._stopping.wait(seconds):
            raise ColdStopError("stopped while retrying")


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
