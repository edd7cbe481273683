"""The step every batch goes through, on a worker or in ``fx extract --local``: write its features
into the run's namespace, then describe what was written in a completion signal. :class:`RedisSink`
is the worker's :class:`~fx_workers.worker.job.FeatureSink`: it also refuses a request that must not
write into a run at all."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from fx_workers.engine.stats import part_stats
from fx_workers.protocol import BatchStatus, CompletionSignal
from fx_workers.store.plan_store import PlanStore
from fx_workers.store.runs import RunRegistry, RunStatus
from fx_workers.store.writer import BatchWriter

if TYPE_CHECKING:
    from redis import Redis

    from fx_workers.engine.batch import BatchFeatures
    from fx_workers.protocol import ExtractionRequest
    from fx_workers.store.keys import RedisKeys

log = logging.getLogger(__name__)


class RedisSink:
    """Batches of any run, written into that run's namespace in Redis."""

    def __init__(self, redis: Redis, keys: RedisKeys) -> None:
        self.redis = redis
        self.keys = keys

    def refusal(self, request: ExtractionRequest) -> str | None:
        """Why the request must not be computed: a reason to dead-letter it, ``""`` to skip it with a log
        line (its run is over), or None to compute it. Only a batch of a running run's stored plan is
        computed, so a stale or forged request can never write into a run, published or not."""
        status, plan = RunRegistry(self.redis, self.keys).fields(request.run_id, "status", "plan")
        if status is None:
            return f"run {request.run_id} does not exist (no manifest at {self.keys.run(request.run_id)})"
        if plan != request.plan:
            return (f"request of plan {request.plan}, but run {request.run_id} has plan {plan} "
                    "(a stale or forged request)")
        if status != RunStatus.RUNNING:
            log.info("skipped run=%s batch=%d: the run is %s", request.run_id, request.batch_id, status)
            return ""
        if PlanStore(self.redis, self.keys, request.run_id).batch(request.batch_id) != request.ids:
            return (f"the ids of batch {request.batch_id} differ from the run's stored plan "
                    f"({self.keys.of_run(request.run_id).plan_batch(request.batch_id)}): a forged request")
        return None

    def write(self, request: ExtractionRequest, features: BatchFeatures, *, attempt: int = 1, worker_id: str = "",
              timings_ms: dict[str, float] | None = None) -> CompletionSignal:
        """Write ``features`` (idempotent: the same batch writes the same bytes) and return the proof."""
        started = time.perf_counter()
        checksum = BatchWriter(self.redis, self.keys.of_run(request.run_id)).write(features)
        written = time.perf_counter()
        return CompletionSignal(
            run_id=request.run_id, plan=request.plan, batch_id=request.batch_id, status=BatchStatus.OK,
            attempt=attempt, worker_id=worker_id, accounts=len(features.node_ids), transfers=len(features.tx_ids),
            checksum=checksum, nodes=part_stats(features.node_values), edges=part_stats(features.edge_values),
            timings_ms={**(timings_ms or {}), "write": round((written - started) * 1000, 1),
                        "stats": round((time.perf_counter() - written) * 1000, 1)},
        )
