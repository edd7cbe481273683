"""What a worker does with one request, as a plain function of the request, a graph and a sink.

Kafka stays out of it: :func:`handle` returns an :class:`Outcome` (a signal to send, a reason to
dead-letter the request, both, or neither) and the loop sends it and commits. The graph and the sink
are two small protocols, so a test hands it fakes and a worker its Neo4j reader and Redis writer.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from fx_workers.protocol import BatchStatus, CompletionSignal
from fx_workers.worker.transport import DeliveryError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator

    from fx_workers.engine.batch import BatchFeatures
    from fx_workers.protocol import ExtractionRequest

log = logging.getLogger(__name__)

MAX_BACKOFF_SECONDS = 15.0


class BatchReader(Protocol):
    """Reads a batch's neighbourhood and computes its features with catalogue ``schema_version``."""

    schema_version: str

    def read(self, request: ExtractionRequest) -> BatchFeatures: ...


@dataclass(frozen=True)
class Read:
    """A batch's features and the read's own time, in milliseconds, timed on the thread that read it."""

    features: BatchFeatures
    ms: float


class GraphReader(Protocol):
    """A :class:`BatchReader` that times its reads where they run (a read ahead runs while the job waits for
    another batch, so the job's wait for it is not its time)."""

    schema_version: str

    def read(self, request: ExtractionRequest) -> Read: ...


class FeatureSink(Protocol):
    """Where a run's features go: it refuses requests that must not write into it, and writes the rest."""

    def refusal(self, request: ExtractionRequest) -> str | None:
        """A reason to dead-letter ``request``, ``""`` to skip it (its run is over), None to compute it."""

    def write(self, request: ExtractionRequest, features: BatchFeatures, *, attempt: int = 1, worker_id: str = "",
              timings_ms: dict[str, float] | None = None) -> CompletionSignal:
        """Write ``features`` idempotently and return the signal that proves it."""


@dataclass(frozen=True)
class Outcome:
    """What became of a request: a ``signal`` to send, a reason to ``dead_letter`` it, both (a failed batch),
    or neither (skipped)."""

    signal: CompletionSignal | None = None
    dead_letter: str | None = None


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


def retry_delays(first: float, total: float, cap: float = MAX_BACKOFF_SECONDS) -> Iterator[float]:
    """Delays that double from ``first`` up to ``cap`` while their sum stays within ``total``."""
    spent, delay = 0.0, first
    while spent + delay <= total:
        yield delay
        spent += delay
        delay = min(delay * 2, cap)


def handle(request: ExtractionRequest, graph: GraphReader, sink: FeatureSink, *, worker_id: str = "",
           delays: Iterable[float] = (), pause: Callable[[float], None] = time.sleep) -> Outcome:
    """Compute and write one batch, retrying outages after each of ``delays``; never raises for a batch
    that fails, only for an error before it starts (the sink's refusal check) or from ``pause``.

    :param worker_id: named in the signal
    :param delays: the pauses before each retry of an outage; when they run out, the batch fails
    :param pause: waits between retries (the loop's raises to stop)
    """
    if (refusal := sink.refusal(request)) is not None:
        if refusal:
            log.warning("dead letter: run=%s batch=%d: %s", request.run_id, request.batch_id, refusal)
        return Outcome(dead_letter=refusal or None)
    if request.schema_version != graph.schema_version:
        return failed(request, f"schema_version must be {graph.schema_version} (this worker's catalogue). "
                               f"Got {request.schema_version}", worker_id, attempts=0)
    attempt, retries = 0, iter(delays)
    while True:
        attempt += 1
        try:
            started = time.perf_counter()
            read = graph.read(request)
            waited_ms = round((time.perf_counter() - started) * 1000, 1)
            return Outcome(signal=sink.write(request, read.features, attempt=attempt, worker_id=worker_id,
                                             timings_ms={"extract": read.ms, "extract_wait": waited_ms}))
        except Exception as exc:
            delay = next(retries, None) if (transient := is_transient(exc)) else None
            if delay is None:
                log.exception("batch failed run=%s batch=%d", request.run_id, request.batch_id)
                return failed(request, f"{type(exc).__name__}: {exc} (attempt {attempt})", worker_id, attempt,
                              transient=transient)
            log.warning("retrying run=%s batch=%d in %.1fs (attempt %d): %s", request.run_id, request.batch_id,
                        delay, attempt, exc)
            pause(delay)


def failed(request: ExtractionRequest, error: str, worker_id: str, attempts: int, *,
           transient: bool = False) -> Outcome:
    """Dead-letter the request and tell the DAG the batch failed (``transient``: by an outage only)."""
    signal = CompletionSignal(run_id=request.run_id, plan=request.plan, batch_id=request.batch_id,
                              status=BatchStatus.FAILED, attempt=max(attempts, 1), worker_id=worker_id,
                              error=error[:4000], transient=transient)
    return Outcome(signal=signal, dead_letter=error)
