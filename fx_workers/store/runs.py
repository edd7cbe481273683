"""The registry of runs: manifests, the ``latest`` pointer, rollback, and retention.

A run is ``running`` from its plan until verification says ``verified`` or ``failed``. Only a
verified run can become ``latest``, by one ``SET``; readers resolve ``latest`` first, so they switch
from one whole run to the next. Retention keeps the ``latest`` run and the most recently promoted
others up to ``retention.runs``, and deletes the rest (superseded, failed, and abandoned runs) with
``SCAN`` + ``UNLINK``, never ``KEYS``.

Every command names one key (no transaction, no multi-key command), so all of it works on a Redis
Cluster, where ``SCAN`` runs on every master and each ``UNLINK`` goes to its key's slot.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from fx_workers.store.client import is_cluster
from fx_workers.store.keys import RedisKeys, RunKeys

if TYPE_CHECKING:
    from collections.abc import Mapping

    import redis

SCAN_COUNT = 5000
"""Keys per ``SCAN`` step when deleting a namespace."""
SIZE_SAMPLE = 20
"""Records whose ``MEMORY USAGE`` estimates a run's size."""
HISTORY = 20
"""Manifests of deleted runs kept, newest first, so ``fx runs list`` still says what happened to them."""


class RunStatus(StrEnum):
    RUNNING = "running"
    VERIFIED = "verified"
    FAILED = "failed"


class RunError(LookupError):
    """A run is missing or in the wrong state for what was asked; the message says which."""


def new_run_id() -> str:
    """Eight random hex digits: short keys, and never a fixed key name."""
    return secrets.token_hex(4)


@dataclass(frozen=True)
class RunInfo:
    """A row of ``fx runs list``."""

    run_id: str
    manifest: dict[str, str]
    latest: bool

    def get(self, name: str, default: str = "") -> str:
        return self.manifest.get(name, default)

    @property
    def status(self) -> str:
        """The manifest's status, with ``(deleted)`` once retention removed the records."""
        status = self.get("status")
        return f"{status} (deleted)" if self.get("deleted") else status


class RunRegistry:
    """Manifests and the ``latest`` pointer under one prefix."""

    def __init__(self, client: redis.Redis, keys: RedisKeys) -> None:
        self.client = client
        self.keys = keys

    def namespace(self, run_id: str) -> RunKeys:
        return self.keys.of_run(run_id)

    def create(self, run_id: str, manifest: Mapping[str, object]) -> None:
        """Register a new running run.

        :raises RunError: when the id is taken
        """
        created = time.time()
        topology = self.topology()
        fields = {"status": RunStatus.RUNNING, "created": f"{created:.3f}", **manifest,
                  **({"topology": topology} if topology else {})}
        if not self.client.hsetnx(self.keys.run(run_id), "run_id", run_id):
            raise RunError(f"run {run_id} exists already")
        self.update(run_id, fields)
        self.client.zadd(self.keys.runs, {run_id: created})

    def topology(self) -> str | None:
        """Cluster mode: each slot range's master, as ``start-end=node@config_epoch``; None on one server.

        A failover gives a range a new master (a replica, with its own id and a new epoch). Replication
        is asynchronous, so the old master may have acknowledged writes its replica never got.
        """
        if not is_cluster(self.client):
            return None
        masters = [(int(start), int(end), f"{node['node_id'][:12]}@{node['epoch']}")
                   for node in self.client.cluster_nodes().values()
                   if "master" in node["flags"].split(",") for start, end in node["slots"]]
        return " ".join(f"{start}-{end}={master}" for start, end, master in sorted(masters))

    def topology_change(self, run_id: str) -> str | None:
        """Why the run's records may be incomplete though every worker reported them written: the cluster
        failed over since the run was created. None when its masters are the same (or on one server)."""
        (then,) = self.fields(run_id, "topology")
        now = self.topology()
        if then is None or now == then:
            return None
        return (f"the Redis Cluster failed over during the run (masters {then} are now {now}): a lost master may "
                "have acknowledged records its replica never got; trigger a new run")

    def update(self, run_id: str, fields: Mapping[str, object]) -> None:
        self.client.hset(self.keys.run(run_id), mapping={k: str(v) for k, v in fields.items()})

    def manifest(self, run_id: str) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.client.hgetall(self.keys.run(run_id)).items()}

    def fields(self, run_id: str, *names: str) -> list[str | None]:
        return [None if v is None else v.decode() for v in self.client.hmget(self.keys.run(run_id), names)]

    def latest(self) -> str | None:
        value = self.client.get(self.keys.latest)
        return value.decode() if value is not None else None

    def promote(self, run_id: str) -> None:
        """Point ``latest`` at a verified run (also a rollback or roll-forward to a retained one).

        :raises RunError: when the run does not exist, is not verified, or its records are in an encoding this
            fx cannot read (a run of an older fx: readers would refuse every record)
        """
        from fx_workers.store.records import RecordSchema  # not at the top: records imports this module

        manifest = self.manifest(run_id)
        status, deleted = manifest.get("status"), manifest.get("deleted")
        if status is None:
            raise RunError(f"run {run_id} does not exist (fx runs list shows the retained runs)")
        if status != RunStatus.VERIFIED or deleted:
            raise RunError(f"run {run_id} is {status}{' and deleted' if deleted else ''}; only a retained "
                           "verified run can be promoted")
        RecordSchema.from_manifest(run_id, manifest)
        self.update(run_id, {"promoted_at": f"{time.time():.3f}"})
        self.client.set(self.keys.latest, run_id)

    def list(self) -> list[RunInfo]:
        """Every registered run, newest first."""
        latest = self.latest()
        ids = [v.decode() for v in self.client.zrevrange(self.keys.runs, 0, -1)]
        pipe = self.client.pipeline(transaction=False)
        for run_id in ids:
            pipe.hgetall(self.keys.run(run_id))
        manifests = [{k.decode(): v.decode() for k, v in m.items()} for m in pipe.execute()]
        return [RunInfo(run_id, manifest, run_id == latest) for run_id, manifest in zip(ids, manifests, strict=True)]

    def size_estimate(self, run_id: str, node_ids: list[str], tx_ids: list[str], accounts: int,
                      transfers: int) -> int:
        """Bytes of the run's records: the mean ``MEMORY USAGE`` of a few of each kind, times their counts."""
        namespace = self.namespace(run_id)
        total = 0
        for keys, count in (([namespace.node(i) for i in node_ids[:SIZE_SAMPLE]], accounts),
                            ([namespace.edge(t) for t in tx_ids[:SIZE_SAMPLE]], transfers)):
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.memory_usage(key, samples=0)
            sizes = [s for s in pipe.execute() if s] if keys else []
            total += int(sum(sizes) / len(sizes) * count) if sizes else 0
        return total

    def retire(self, keep: int, stale_seconds: float) -> list[str]:
        """Delete the records of every run but ``latest``, the ``keep - 1`` other most recently promoted
        verified runs, and runs running for less than ``stale_seconds``; returns the ids deleted now.
        Manifests stay (marked deleted) for the :data:`HISTORY` newest deleted runs."""
        latest, now = self.latest(), time.time()
        runs = [r for r in self.list() if not r.get("deleted")]
        promoted = sorted((r for r in runs if r.get("status") == RunStatus.VERIFIED and r.get("promoted_at")
                            and not r.latest), key=lambda r: float(r.get("promoted_at")), reverse=True)
        kept = {latest} | {r.run_id for r in promoted[: max(keep - 1, 0)]}
        doomed = [r.run_id for r in runs if r.run_id not in kept and not (
            r.get("status") == RunStatus.RUNNING and now - float(r.get("created", "0")) < stale_seconds)]
        for run_id in doomed:
            self.delete(run_id)
        for old in [r.run_id for r in self.list() if r.get("deleted")][HISTORY:]:
            self.client.delete(self.keys.run(old))
            self.client.zrem(self.keys.runs, old)
        return doomed

    def delete(self, run_id: str) -> int:
        """Unlink every key of the run's namespace and mark its manifest deleted; returns the keys unlinked."""
        self.update(run_id, {"deleted": f"{time.time():.3f}"})  # promote() refuses it from here on
        deleted = 0
        batch: list[bytes] = []
        for key in self.client.scan_iter(match=self.namespace(run_id).pattern, count=SCAN_COUNT):
            batch.append(key)
            if len(batch) >= SCAN_COUNT:
                deleted += self._unlink(batch)
                batch = []
        return deleted + self._unlink(batch)

    def _unlink(self, keys: list[bytes]) -> int:
        if not keys:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.unlink(key)  # one key per command: a cluster pipeline routes each to its slot's node
        return sum(pipe.execute())
