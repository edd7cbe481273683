"""The one reader and writer of a run's plan: its batches' account ids in Redis, and its fingerprint.

A plan is written once, with its run, and never changes: publishing, sending a batch again, the
worker's check of a request, verification and export all read the same ids back, so none of them
reads Neo4j again and a graph that changes during the run cannot change its plan. The fingerprint
names exactly this plan; it travels in every request and completion signal.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

from fx_workers.store.runs import RunError

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    import redis

    from fx_workers.store.keys import RedisKeys

READ_CHUNK = 100
"""Batches fetched per round trip."""


def fingerprint(run_id: str, as_of: int, schema: str, batches: Sequence[Sequence[str]]) -> str:
    """16 hex digits naming exactly this plan: the run, the instant, the catalogue and the batches."""
    digest = hashlib.blake2b(f"{run_id}\0{as_of}\0{schema}\0".encode(), digest_size=8)
    for batch in batches:
        digest.update(json.dumps(list(batch)).encode())
    return digest.hexdigest()


class PlanStore:
    """The stored batches of one run (one STRING per batch, a JSON list of account ids)."""

    def __init__(self, client: redis.Redis, keys: RedisKeys, run_id: str) -> None:
        self.client = client
        self.run_id = run_id
        self.namespace = keys.of_run(run_id)

    def save(self, batches: Sequence[Sequence[str]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for batch_id, batch in enumerate(batches):
            pipe.set(self.namespace.plan_batch(batch_id), json.dumps(list(batch)))
        pipe.execute()

    def batch(self, batch_id: int) -> list[str] | None:
        """One batch's ids, or None when the plan has no such batch (or the run was deleted)."""
        raw = self.client.get(self.namespace.plan_batch(batch_id))
        return None if raw is None else json.loads(raw)

    def batches(self, count: int, only: Sequence[int] | None = None) -> Iterator[tuple[int, list[str]]]:
        """``(batch_id, ids)`` of the plan's ``count`` batches (or of its batches ``only``), in order.

        :raises RunError: when a batch is gone (the run was deleted)
        """
        wanted = range(count) if only is None else sorted(only)
        for start in range(0, len(wanted), READ_CHUNK):
            batch_ids = wanted[start : start + READ_CHUNK]
            pipe = self.client.pipeline(transaction=False)
            for batch_id in batch_ids:
                pipe.get(self.namespace.plan_batch(batch_id))
            for batch_id, raw in zip(batch_ids, pipe.execute(), strict=True):
                if raw is None:
                    raise RunError(f"run {self.run_id}: batch {batch_id} of the plan is not in Redis "
                                   f"({self.namespace.plan_batch(batch_id)}); the run was deleted, trigger a new one")
                yield batch_id, json.loads(raw)
