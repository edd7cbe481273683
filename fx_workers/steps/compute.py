"""The step every batch goes through, on a worker or in ``fx extract --local``: write the batch's
features into the run's namespace, then describe what was written in a completion signal."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from fx_workers.engine.stats import part_stats
from fx_workers.protocol import BatchStatus, CompletionSignal

if TYPE_CHECKING:
    from fx_workers.engine.batch import BatchFeatures
    from fx_workers.protocol import ExtractionRequest
    from fx_workers.store.writer import BatchWriter


def write_batch(writer: BatchWriter, request: ExtractionRequest, features: BatchFeatures, *, attempt: int = 1,
                worker_id: str = "", timings_ms: dict[str, float] | None = None) -> CompletionSignal:
    """Write ``features`` (idempotent: the same batch writes the same bytes) and return the proof."""
    started = time.perf_counter()
    checksum = writer.write(features)
    written = time.perf_counter()
    return CompletionSignal(
        run_id=request.run_id, plan=request.plan, batch_id=request.batch_id, status=BatchStatus.OK,
        attempt=attempt, worker_id=worker_id, accounts=len(features.node_ids), transfers=len(features.tx_ids),
        checksum=checksum, nodes=part_stats(features.node_values), edges=part_stats(features.edge_values),
        timings_ms={**(timings_ms or {}), "write": round((written - started) * 1000, 1),
                    "stats": round((time.perf_counter() - written) * 1000, 1)},
    )
