"""The distributed run's steps, as package code the ``fx_extract`` DAG wires together.

- :func:`plan_run`: read accounts and costs, cut cost-balanced batches, summarise them (XCom-sized).
- :func:`request_messages`: the plan's requests, re-derived from the same Neo4j read so a retry
  republishes the same batches; a digest recorded by the plan guards against a changed graph.
- :func:`aggregate_run`: this run's results from the recorded offsets into Redis, de-duplicated.
- :func:`finish_run`: manifest, verification, ``latest``.

Kafka clients are passed in (the DAG builds them from its connections); no Airflow import here.
"""

from __future__ import annotations

import hashlib
import logging
import time
import zlib
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fx_workers.engine.features import SCHEMA_VERSION
from fx_workers.engine.graph import Cypher, read_accounts
from fx_workers.extract import plan_batches
from fx_workers.messages import (
    HEADER_KIND,
    HEADER_RUN,
    BatchStatus,
    CompletionSignal,
    ExtractionRequest,
    FeatureResult,
    MessageError,
    MessageKind,
    header_value,
    join_features,
)
from fx_workers.tools.doctor import topic_partitions

if TYPE_CHECKING:
    from collections.abc import Iterator

    import numpy as np
    from confluent_kafka import Consumer, Message
    from confluent_kafka.admin import AdminClient
    from neo4j import Driver

    from fx_workers.config import Settings
    from fx_workers.sink import FeatureSink
    from fx_workers.verify import VerifyReport

log = logging.getLogger(__name__)

READER_CONFIG = {"group.id": "fx-readers", "enable.auto.commit": False, "enable.auto.offset.store": False,
                 "auto.offset.reset": "earliest"}
"""A consumer that reads by ``assign()`` from recorded offsets: it never joins a group or commits."""


class PipelineError(RuntimeError):
    """A step of the distributed run cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class Plan:
    """What every later step needs to know about a run; small enough for XCom (no node ids)."""

    run_id: str
    as_of: int
    schema_version: str
    batch_size: int
    batches: int
    accounts: int
    cost: int
    digest: str
    partitions: int
    start_offsets: dict[str, int]
    """Per results partition (as a string, for JSON), the end offset before anything was published."""
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        return cls(**data)


def missing_topics(admin: AdminClient, settings: Settings) -> list[tuple[str, int, int]]:
    """The topics to create, as ``(name, partitions, replication factor)`` (-1: the broker's default).

    :raises PipelineError: when a topic exists with fewer partitions than configured (workers would idle)
    """
    existing = admin.list_topics(timeout=10).topics
    missing = []
    for name, wanted in topic_partitions(settings.kafka).items():
        if name not in existing:
            missing.append((name, wanted, -1))
        elif (found := len(existing[name].partitions)) < wanted:
            raise PipelineError(f"topic {name} must have at least {wanted} partitions (config). Got {found}")
    return missing


def balanced_batches(ids: np.ndarray, costs: np.ndarray, batch_size: int, partitions: int) -> list[list[str]]:
    """Cost-balanced batches of about ``batch_size`` accounts (see :func:`plan_batches`), their count
    raised towards a multiple of ``partitions`` so every request partition, hence every worker, gets
    about the same load."""
    count = -(-len(ids) // batch_size)
    count = min(-(-count // partitions) * partitions, len(ids))
    return plan_batches(ids, costs, -(-len(ids) // count)) if count else []


def batches_digest(batches: list[list[str]]) -> str:
    """A fingerprint of the batches, in order, to check a re-derived plan is the same plan."""
    digest = hashlib.sha256()
    for batch in batches:
        digest.update("\0".join(batch).encode())
        digest.update(b"\1")
    return digest.hexdigest()[:16]


def _derive_batches(driver: Driver, settings: Settings, batch_size: int) -> tuple[list[list[str]], int]:
    ids, costs = read_accounts(driver, Cypher(settings.graph), settings.neo4j.database)
    batches = balanced_batches(ids, costs, batch_size, settings.kafka.partitions.requests)
    return batches, int(costs.sum())


def plan_run(driver: Driver, reader: Consumer, settings: Settings, *, run_id: str, as_of: int,
             batch_size: int) -> Plan:
    """Read the accounts, cut the batches and record where this run's results will start.

    :raises PipelineError: when the graph has no accounts
    """
    batches, cost = _derive_batches(driver, settings, batch_size)
    if not batches:
        raise PipelineError(f"no :{settings.graph.account_label} nodes in Neo4j; load a graph first (fx load)")
    offsets = end_offsets(reader, settings.kafka.topics.results)
    return Plan(
        run_id=run_id, as_of=as_of, schema_version=SCHEMA_VERSION, batch_size=batch_size, batches=len(batches),
        accounts=sum(len(b) for b in batches), cost=cost, digest=batches_digest(batches),
        partitions=len(offsets), start_offsets={str(p): o for p, o in offsets.items()},
    )


def request_key(batch_id: int, partitions: int) -> bytes:
    """A message key that librdkafka's default partitioner (CRC-32 of the key modulo the partition
    count) sends to partition ``batch_id % partitions``: batches go round-robin, not by hash luck."""
    salt = 0
    while zlib.crc32(key := f"{batch_id}.{salt}".encode()) % partitions != batch_id % partitions:
        salt += 1
    return key


def request_messages(driver: Driver, settings: Settings, plan: dict[str, Any]) -> Iterator[tuple[bytes, bytes]]:
    """The plan's requests as ``(key, value)``, re-derived deterministically from Neo4j.

    :raises PipelineError: when the graph changed since the plan (a different digest)
    """
    run = Plan.from_dict(plan)
    batches, _ = _derive_batches(driver, settings, run.batch_size)
    if batches_digest(batches) != run.digest:
        raise PipelineError(
            f"the accounts changed since the plan of run {run.run_id} (digest {batches_digest(batches)}, "
            f"planned {run.digest}); clear the whole DAG run to plan again"
        )
    partitions = settings.kafka.partitions.requests
    for batch_id, ids in enumerate(batches):
        request = ExtractionRequest(run_id=run.run_id, batch_id=batch_id, batches=run.batches, as_of=run.as_of,
                                    schema_version=run.schema_version, ids=ids)
        yield request_key(batch_id, partitions), request.encode()
    log.info("produced %d requests for run %s (%d accounts)", len(batches), run.run_id, run.accounts)


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


POLL_SECONDS = 0.1
"""``consume()`` waits this long when fewer than a full batch of messages is left: short, so the
tail of a run is not read one second at a time."""


def read_run(consumer: Consumer, topic: str, run_id: str, start: dict[int, int], end: dict[int, int],
             idle_seconds: float = 60.0) -> Iterator[Message]:
    """Every message of ``run_id`` between the ``start`` and ``end`` offsets, in partition order.

    :raises PipelineError: on a consumer error, or when nothing arrives for ``idle_seconds``
    """
    from confluent_kafka import TopicPartition

    remaining = {p for p in start if start[p] < end[p]}
    consumer.incremental_assign([TopicPartition(topic, p, start[p]) for p in remaining])
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
                consumer.incremental_unassign([TopicPartition(topic, partition)])
            if message.offset() < end[partition] and header_value(message.headers(), HEADER_RUN) == run_id:
                yield message


@dataclass
class AggregateSummary:
    """What one aggregation wrote: batch ids, counts, and how many duplicate messages it skipped."""

    batch_ids: list[int] = field(default_factory=list)
    accounts: int = 0
    transfers: int = 0
    messages: int = 0
    duplicates: int = 0
    incomplete: int = 0
    seconds: float = 0.0


def aggregate_run(consumer: Consumer, sink: FeatureSink, settings: Settings, plan: dict[str, Any]) -> AggregateSummary:
    """Write this run's results to Redis, each batch once.

    A batch's chunks and completion share a key, hence a partition and an order: the chunks are
    gathered until their completion, checked whole against it, then written. Chunks of a batch that
    was already written (a redelivery) are dropped; an incomplete copy is skipped, and if no whole
    copy follows, :func:`finish_run` reports the batch as missing.
    """
    started = time.perf_counter()
    run = Plan.from_dict(plan)
    topic = settings.kafka.topics.results
    start = {int(p): o for p, o in run.start_offsets.items()}
    end = end_offsets(consumer, topic)
    summary = AggregateSummary()
    pending: dict[int, dict[int, FeatureResult]] = defaultdict(dict)
    written: set[int] = set()
    for message in read_run(consumer, topic, run.run_id, start, end):
        summary.messages += 1
        kind = header_value(message.headers(), HEADER_KIND)
        if kind == MessageKind.RESULT:
            result = FeatureResult.decode(message.value())
            pending[result.batch_id][result.chunk] = result
        elif kind == MessageKind.COMPLETION:
            signal = CompletionSignal.decode(message.value())
            chunks = pending.pop(signal.batch_id, {})
            if signal.status is not BatchStatus.OK or signal.batch_id in written:
                summary.duplicates += len(chunks) + 1
                continue
            try:
                features = join_features(list(chunks.values()), signal)
            except MessageError as exc:  # e.g. a chunk lost to a delivery timeout; a retried copy may follow
                log.warning("skipped an incomplete copy of batch %d: %s", signal.batch_id, exc)
                summary.incomplete += 1
                continue
            sink.write(features, run_id=run.run_id, as_of=run.as_of, schema=run.schema_version)
            written.add(signal.batch_id)
            summary.accounts += signal.accounts
            summary.transfers += signal.transfers
    summary.batch_ids = sorted(written)
    summary.seconds = round(time.perf_counter() - started, 3)
    log.info("aggregated run=%s partitions=%s batches=%d accounts=%d transfers=%d messages=%d duplicates=%d "
             "incomplete=%d seconds=%.1f", run.run_id, sorted(start), len(summary.batch_ids), summary.accounts,
             summary.transfers, summary.messages, summary.duplicates, summary.incomplete, summary.seconds)
    return summary


def finish_run(settings: Settings, sink: FeatureSink, plan: dict[str, Any],
               summaries: list[dict[str, Any]], **manifest: Any) -> VerifyReport:
    """Check every batch was written, write the manifest, verify, and on success set ``latest``.

    :param manifest: extra manifest fields (timings, the DAG run)
    :raises PipelineError: when a batch is missing; the report's ``ok`` says whether verification passed
    """
    from fx_workers.verify import verify_run

    run = Plan.from_dict(plan)
    written = sorted(b for s in summaries for b in s["batch_ids"])
    missing = sorted(set(range(run.batches)) - set(written))
    if missing:
        raise PipelineError(f"run {run.run_id}: no results for batches {missing} of {run.batches}")
    fields = {
        "status": "computed", "mode": "airflow", "as_of": run.as_of, "schema": run.schema_version,
        "started_at": run.started_at, "batches": run.batches,
        "accounts": sum(s["accounts"] for s in summaries), "transfers": sum(s["transfers"] for s in summaries),
        **manifest,
    }
    sink.write_manifest(run.run_id, fields)
    report = verify_run(settings, run.run_id)
    sink.write_manifest(run.run_id, {"status": "verified" if report.ok else "failed",
                                     "finished_at": datetime.now(UTC).isoformat(timespec="seconds")})
    if report.ok:
        sink.set_latest(run.run_id)
    return report
