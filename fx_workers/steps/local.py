"""``fx extract --local``: every step of a run in this process, without Kafka and Airflow.

The same plan, batch writer, signals, aggregation, verification and publication as the DAG; only
the transport differs (signals are handed over in memory), so both modes give the same records.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from fx_workers.engine.extract import catalogue_of, read_graph
from fx_workers.engine.graph import WindowCache, open_driver
from fx_workers.progress import ProgressFactory, no_progress
from fx_workers.protocol import ExtractionRequest
from fx_workers.steps.aggregate import record_aggregate
from fx_workers.steps.plan import make_plan
from fx_workers.steps.promote import conclude, retire
from fx_workers.steps.verify import VerifyReport, verify_run
from fx_workers.steps.write import RedisSink
from fx_workers.store.client import open_redis
from fx_workers.store.keys import RedisKeys
from fx_workers.store.signals import SignalLedger

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from fx_workers.config import Settings
    from fx_workers.engine.batch import BatchInput

T = TypeVar("T")
R = TypeVar("R")


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
        verdict = "passed, published" if self.verification.ok else "FAILED, not published"
        return (
            f"run {self.run_id}: {self.accounts} accounts, {self.transfers} transfers in {self.batches} batches, "
            f"{self.seconds:.2f} s ({rate:,.0f} accounts/s, {self.transfers / max(self.seconds, 1e-9):,.0f} "
            f"transfers/s); verification: {verdict}"
        )


def run_local(settings: Settings, *, as_of: int, batch_size: int | None = None,
              progress: ProgressFactory = no_progress) -> RunSummary:
    """Plan, compute and write every batch, aggregate, verify, publish, retire old runs."""
    batch_size = batch_size or settings.extraction.batch_size
    client = open_redis(settings.redis)
    started = time.perf_counter()
    with open_driver(settings.neo4j) as driver:
        plan, batches = make_plan(driver, client, settings, as_of=as_of, batch_size=batch_size, mode="local")
        sink = RedisSink(client, RedisKeys(settings.redis.prefix))
        tally = SignalLedger(run_id=plan.run_id, plan=plan.fingerprint, batches=plan.batches)
        compute, windows = catalogue_of(settings).compute, WindowCache().bind(plan.run_id)
        with progress("extracting", plan.accounts) as advance:
            def read(item: tuple[int, list[str]]) -> BatchInput:
                return read_graph(driver, settings, item[1], as_of, windows)

            for (batch_id, ids), graph in prefetched(read, list(enumerate(batches))):
                request = ExtractionRequest(run_id=plan.run_id, plan=plan.fingerprint, batch_id=batch_id,
                                            batches=plan.batches, as_of=as_of, schema_version=plan.schema_version,
                                            ids=ids)
                tally.add(sink.write(request, compute(graph)))
                advance(len(ids))
    seconds = time.perf_counter() - started
    summary = record_aggregate(settings, client, plan, tally)
    report = verify_run(settings, client, plan.run_id, progress=progress)
    conclude(settings, client, report, compute_seconds=round(seconds, 3))
    retire(settings, client)
    return RunSummary(plan.run_id, as_of, plan.accounts, summary["transfers"], plan.batches, seconds, report)
