"""Extraction: cost-balanced batches, one batch end to end, and the single-process pipeline.

The workers and ``fx extract --local`` both call :func:`extract_batch`, so the distributed and
single-process runs cannot disagree.
"""

from __future__ import annotations

import heapq
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from fx_workers.engine.features import SCHEMA_VERSION, compute_features
from fx_workers.engine.graph import Cypher, open_driver, read_accounts, read_batch
from fx_workers.progress import ProgressFactory, no_progress
from fx_workers.sink import RedisSink, open_redis
from fx_workers.store.keys import RedisKeys

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from neo4j import Driver

    from fx_workers.config import Settings
    from fx_workers.engine.batch import BatchFeatures, BatchInput
    from fx_workers.verify import VerifyReport

T = TypeVar("T")
R = TypeVar("R")


def plan_batches(ids: np.ndarray, costs: np.ndarray, batch_size: int) -> list[list[str]]:
    """Split accounts into ``ceil(len/batch_size)`` batches of about equal cost.

    An account costs 1 plus its transfer count; the heaviest go first, each to the cheapest batch
    so far that has room (longest-processing-time rule), so one hub does not make one batch ten
    times slower. ``batch_size`` is the average; no batch gets more than twice it, which leaves room
    to balance and bounds a request's size. Deterministic for the same inputs (ties broken by id),
    ids sorted within each batch.
    """
    if len(ids) == 0:
        return []
    n_batches = -(-len(ids) // batch_size)
    order = np.lexsort((ids, -(costs.astype(np.int64) + 1)))
    heap = [(0, b) for b in range(n_batches)]
    members: list[list[str]] = [[] for _ in range(n_batches)]
    for i in order.tolist():
        load, b = heapq.heappop(heap)  # never empty: n_batches * batch_size >= len(ids)
        members[b].append(str(ids[i]))
        if len(members[b]) < 2 * batch_size:
            heapq.heappush(heap, (load + int(costs[i]) + 1, b))
    return [sorted(batch) for batch in members if batch]


def extract_batch(driver: Driver, settings: Settings, ids: list[str], as_of: int) -> BatchFeatures:
    """Read one batch's neighbourhood from Neo4j and compute its features."""
    return compute_features(read_graph(driver, settings, ids, as_of))


def read_graph(driver: Driver, settings: Settings, ids: list[str], as_of: int) -> BatchInput:
    """The batch's graph, read with the configured model's queries."""
    return read_batch(driver, Cypher(settings.graph), ids, as_of, settings.neo4j.database)


def prefetched(read: Callable[[T], R], items: Sequence[T]) -> Iterator[tuple[T, R]]:
    """``(item, read(item))`` in order, reading the next item in a thread while the caller works on
    this one: Neo4j's response time overlaps computing and writing the previous batch."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="fx-read") as pool:
        pending = pool.submit(read, items[0]) if items else None
        for i, item in enumerate(items):
            result = pending.result()
            if i + 1 < len(items):
                pending = pool.submit(read, items[i + 1])
            yield item, result


def new_run_id(mode: str) -> str:
    """Readable and unique: ``local-20261125T164000-1a2b3c``."""
    return f"{mode}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class RunSummary:
    run_id: str
    as_of: int
    accounts: int
    transfers: int
    batches: int
    seconds: float
    verification: VerifyReport

    def __str__(self) -> str:
        rate = self.accounts / self.seconds if self.seconds else 0.0
        verdict = "passed" if self.verification.ok else "FAILED"
        return (
            f"run {self.run_id}: {self.accounts} accounts, {self.transfers} transfers in {self.batches} batches, "
            f"{self.seconds:.2f} s ({rate:,.0f} accounts/s, {self.transfers / max(self.seconds, 1e-9):,.0f} "
            f"transfers/s); verification: {verdict}"
        )


def run_local(settings: Settings, *, as_of: int, batch_size: int | None = None,
              progress: ProgressFactory = no_progress, run_id: str | None = None) -> RunSummary:
    """The single-process pipeline: Neo4j -> features -> Redis, then verify, then ``latest``."""
    from fx_workers.verify import verify_run

    run_id = run_id or new_run_id("local")
    batch_size = batch_size or settings.extraction.batch_size
    client = open_redis(settings.redis)
    sink = RedisSink(client, RedisKeys(settings.redis.prefix))
    started = time.perf_counter()
    manifest: dict[str, object] = {"status": "running", "mode": "local", "as_of": as_of, "schema": SCHEMA_VERSION,
                                   "started_at": datetime.now(UTC).isoformat(timespec="seconds")}
    sink.write_manifest(run_id, manifest)
    transfers = 0
    with open_driver(settings.neo4j) as driver:
        ids, costs = read_accounts(driver, Cypher(settings.graph), settings.neo4j.database)
        batches = plan_batches(ids, costs, batch_size)
        with progress("extracting", len(ids)) as advance:
            for batch, graph in prefetched(lambda ids: read_graph(driver, settings, ids, as_of), batches):
                features = compute_features(graph)
                sink.write(features, run_id=run_id, as_of=as_of, schema=SCHEMA_VERSION)
                transfers += len(features.tx_ids)
                advance(len(batch))
    seconds = time.perf_counter() - started
    manifest |= {"status": "computed", "accounts": len(ids), "transfers": transfers, "batches": len(batches),
                 "seconds": round(seconds, 3)}
    sink.write_manifest(run_id, manifest)
    report = verify_run(settings, run_id, progress=progress)
    sink.write_manifest(run_id, {"status": "verified" if report.ok else "failed",
                                 "finished_at": datetime.now(UTC).isoformat(timespec="seconds")})
    if report.ok:
        sink.set_latest(run_id)
    return RunSummary(run_id, as_of, len(ids), transfers, len(batches), seconds, report)
