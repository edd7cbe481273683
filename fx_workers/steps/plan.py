"""Plan a run: read the accounts once, cut cost-balanced batches, fingerprint them, and store them
under the run (:class:`~fx_workers.store.plan_store.PlanStore`), so publishing (and its retries) never
reads Neo4j again and a graph that changes during the run cannot change its plan.

The plan's fingerprint goes into every request and every completion signal: a request or signal
of another plan (a cleared and re-planned run, a forged message) is recognised and not counted.
"""

from __future__ import annotations

import heapq
import logging
import zlib
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from fx_workers.engine.extract import catalogue_of
from fx_workers.engine.graph import Cypher, read_accounts
from fx_workers.protocol import ExtractionRequest
from fx_workers.steps.topics import PipelineError
from fx_workers.store.keys import RedisKeys
from fx_workers.store.manifest import RunManifest
from fx_workers.store.plan_store import PlanStore, fingerprint
from fx_workers.store.records import RecordSchema
from fx_workers.store.runs import RunRegistry, new_run_id

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    import redis
    from neo4j import Driver

    from fx_workers.config import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """What every later step needs to know about a run; small enough for XCom (no account ids)."""

    run_id: str
    fingerprint: str
    mode: str
    as_of: int
    schema_version: str
    batch_size: int
    batches: int
    accounts: int
    cost: int
    start_offsets: dict[str, int] = field(default_factory=dict)
    """Per results partition (a string, for JSON), where this run's completion signals start."""
    dag_run_id: str | None = None
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        return cls(**data)


def lpt_batches(ids: np.ndarray, costs: np.ndarray, batch_size: int) -> list[list[str]]:
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


def balanced_batches(ids: np.ndarray, costs: np.ndarray, batch_size: int, partitions: int) -> list[list[str]]:
    """Cost-balanced batches of about ``batch_size`` accounts (see :func:`lpt_batches`), their count
    raised towards a multiple of ``partitions`` so every request partition, hence every worker, gets
    about the same load."""
    count = -(-len(ids) // batch_size)
    count = min(-(-count // partitions) * partitions, len(ids))
    return lpt_batches(ids, costs, -(-len(ids) // count)) if count else []


def make_plan(driver: Driver, client: redis.Redis, settings: Settings, *, as_of: int, batch_size: int, mode: str,
              partitions: int = 1, start_offsets: dict[int, int] | None = None, dag_run_id: str | None = None,
              run_id: str | None = None) -> tuple[Plan, list[list[str]]]:
    """Read the accounts, cut the batches, store them under a new run, and register the run.

    :raises PipelineError: when the graph has no accounts
    """
    ids, costs = read_accounts(driver, Cypher(settings.graph), settings.neo4j.database)
    batches = balanced_batches(ids, costs, batch_size, partitions)
    if not batches:
        raise PipelineError(f"no :{settings.graph.account_label} nodes in Neo4j; load a graph first (fx load)")
    run_id, features = run_id or new_run_id(), catalogue_of(settings)
    plan = Plan(
        run_id=run_id, fingerprint=fingerprint(run_id, as_of, features.schema_version, batches), mode=mode,
        as_of=as_of, schema_version=features.schema_version, batch_size=batch_size, batches=len(batches),
        accounts=sum(len(b) for b in batches), cost=int(costs.sum()),
        start_offsets={str(p): o for p, o in (start_offsets or {}).items()}, dag_run_id=dag_run_id,
    )
    keys = RedisKeys(settings.redis.prefix)
    PlanStore(client, keys, run_id).save(batches)
    manifest = RunManifest(
        run_id=run_id, mode=mode, as_of=as_of, schema_version=plan.schema_version, fingerprint=plan.fingerprint,
        batches=plan.batches, accounts=plan.accounts, batch_size=batch_size, started_at=plan.started_at,
        namespace=f"{keys.of_run(run_id).namespace}:", dag_run_id=dag_run_id,
        records=RecordSchema(features.node_names, features.edge_names))
    RunRegistry(client, keys).create(run_id, manifest.fields())
    log.info("planned run=%s plan=%s as_of=%d batches=%d accounts=%d cost=%d", run_id, plan.fingerprint, as_of,
             plan.batches, plan.accounts, plan.cost)
    return plan, batches


def request_key(batch_id: int, partitions: int) -> bytes:
    """A message key that librdkafka's default partitioner (CRC-32 of the key modulo the partition
    count) sends to partition ``batch_id % partitions``: batches go round-robin, not by hash luck."""
    salt = 0
    while zlib.crc32(key := f"{batch_id}.{salt}".encode()) % partitions != batch_id % partitions:
        salt += 1
    return key


def request_messages(client: redis.Redis, settings: Settings, plan: dict[str, Any],
                     only: Sequence[int] | None = None) -> Iterator[tuple[bytes, bytes]]:
    """The plan's requests (or those of its batches ``only``) as ``(key, value)``, from the plan stored in
    Redis: a retry, or a batch sent again after an outage, gets the same request."""
    run = Plan.from_dict(plan)
    partitions = settings.kafka.partitions.requests
    for batch_id, ids in PlanStore(client, RedisKeys(settings.redis.prefix), run.run_id).batches(run.batches, only):
        request = ExtractionRequest(run_id=run.run_id, plan=run.fingerprint, batch_id=batch_id, batches=run.batches,
                                    as_of=run.as_of, schema_version=run.schema_version, ids=ids)
        yield request_key(batch_id, partitions), request.encode()
    log.info("produced %d requests for run %s", run.batches if only is None else len(only), run.run_id)
