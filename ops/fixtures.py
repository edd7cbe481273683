"""What bench and tests start of their own next to the shared stack, through the functions of ``make up``.

A :class:`Slice` is a private slice of the shared stack: other engineers' tests and the stack's own
workers use the same Neo4j, Kafka and Redis, so a slice gets its own graph labels, topics, consumer
group and Redis prefix through ``FX__*`` overrides. Nothing it writes is visible to anyone else.
:func:`redis_cluster` starts a Redis Cluster of its own on free loopback ports.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fx_workers.config import REPO_ROOT, load_settings
from fx_workers.store.keys import RedisKeys
from fx_workers.store.runs import RunRegistry
from fx_workers.tools.load import delete_graph
from ops.process import Layout, stop
from ops.redis_cluster import redis_cluster_services
from ops.stack import up

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    import redis
    from confluent_kafka.admin import AdminClient
    from neo4j import Driver

    from fx_workers.config import Settings

GENERATED_TRANSACTIONS = 5_000
AS_OF = 1_735_000_000
"""Inside the generated graph's time range, so some transfers are after it."""


def kafka_overrides(name: str) -> dict[str, str]:
    """``FX__`` overrides giving ``name`` topics and a consumer group of its own."""
    return {
        "FX__KAFKA__TOPICS__REQUESTS": f"{name}-requests",
        "FX__KAFKA__TOPICS__RESULTS": f"{name}-results",
        "FX__KAFKA__TOPICS__DEAD_LETTER": f"{name}-dlq",
        "FX__KAFKA__CONSUMER_GROUP": name,
    }


def overrides(tag: str) -> dict[str, str]:
    """A test slice's own graph labels, topics, consumer group and Redis prefix."""
    return {
        "FX__GRAPH__ACCOUNT_LABEL": f"T{tag}Account",
        "FX__GRAPH__TRANSFER_TYPE": f"T{tag}_TRANSFER",
        **kafka_overrides(f"fx-test-{tag}"),
        "FX__REDIS__PREFIX": f"fxtest{tag}",
    }


@dataclass
class Slice:
    """Settings and a subprocess environment that point at this slice."""

    settings: Settings
    env: dict[str, str]

    @classmethod
    def create(cls) -> Slice:
        extra = overrides(uuid.uuid4().hex[:8])
        env = {**os.environ, **extra}
        return cls(load_settings(environ=env), env)

    def start_worker(self, worker_id: int, log: Path, extra: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """A worker of the slice; ``extra`` overrides its environment (a broken endpoint, say)."""
        with log.open("ab") as out:
            return subprocess.Popen((sys.executable, "-m", "fx_workers", "--worker-id", str(worker_id)),
                                    env={**self.env, **(extra or {})}, stdout=out, stderr=subprocess.STDOUT,
                                    cwd=REPO_ROOT)

    @property
    def keys(self) -> RedisKeys:
        return RedisKeys(self.settings.redis.prefix)

    def registry(self, client: redis.Redis) -> RunRegistry:
        return RunRegistry(client, self.keys)

    def load_graph(self, folder: Path, admin: AdminClient, csv: Path | None = None) -> None:
        """A graph under the slice's labels (generated unless ``csv`` is given), and the slice's topics."""
        from fx_workers.steps.topics import ensure_topics
        from fx_workers.tools.generate import write_csv
        from fx_workers.tools.load import load_csv

        if csv is None:
            csv = folder / "graph.csv"
            write_csv(csv, transactions=GENERATED_TRANSACTIONS, seed=11)
        load_csv(csv, self.settings, replace=True)
        ensure_topics(admin, self.settings)

    def local_snapshot(self, client: redis.Redis, as_of: int = AS_OF) -> dict[str, bytes]:
        """What ``fx extract --local`` writes for ``as_of``, as :meth:`snapshot` shows it."""
        from fx_workers.steps.local import run_local

        summary = run_local(self.settings, as_of=as_of)
        assert summary.verification.ok, str(summary.verification)
        return self.snapshot(client, summary.run_id)

    def snapshot(self, client: redis.Redis, run_id: str | None = None) -> dict[str, bytes]:
        """Every record of a run (default: the published one) as stored (packed bytes), keyed without the
        run's namespace, so two runs of the same graph and as_of compare equal exactly when they stored the
        same bytes."""
        run_id = run_id or self.registry(client).latest()
        assert run_id is not None, "no published run"
        namespace = self.keys.of_run(run_id)
        head = len(namespace.namespace) + 1
        keys = sorted(k for k in client.scan_iter(namespace.pattern, count=10_000)
                      if not k.decode()[head:].startswith("plan:"))
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
        return {key.decode()[head:]: values for key, values in zip(keys, pipe.execute(), strict=True)}

    def drop(self, client: redis.Redis, admin: AdminClient, driver: Driver) -> None:
        """Remove everything the slice wrote: Redis keys, topics, nodes, their constraints and index."""
        keys = list(client.scan_iter(f"{self.settings.redis.prefix}:*", count=10_000))  # the prefix is the slice's
        for start in range(0, len(keys), 10_000):
            client.delete(*keys[start : start + 10_000])
        topics = self.settings.kafka.topics
        admin.delete_topics([topics.requests, topics.results, topics.dead_letter])
        graph = self.settings.graph
        database = self.settings.neo4j.database
        delete_graph(driver, self.settings)
        for name in (f"{graph.account_label}_{graph.id_property}_unique",
                     f"{graph.transfer_type}_{graph.tx_id_property}_unique"):
            driver.execute_query(f"DROP CONSTRAINT {name} IF EXISTS", database_=database)
        driver.execute_query(f"DROP INDEX {graph.transfer_type}_{graph.ts_property} IF EXISTS", database_=database)


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive loopback ports that are free, each with its cluster bus port
    (+10000) free too."""
    def free(port: int) -> bool:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return False
        return True

    for _ in range(200):
        base = random.randrange(21000, 29000)
        if all(free(port) and free(port + 10000) for port in range(base, base + count)):
            return base
    raise RuntimeError("no free ports for a Redis Cluster in 21000..29000")


@dataclass(frozen=True)
class OwnCluster:
    """A Redis Cluster of our own: the ``FX__*`` variables that point fx at it, and where its nodes keep
    their files."""

    env: dict[str, str]
    root: Path

    def slice_of(self, base: Slice) -> Slice:
        """``base``'s graph, topics and prefix, with the online store on this cluster."""
        env = {**base.env, **self.env}
        return Slice(load_settings(environ=env), env)


@contextmanager
def redis_cluster(root: Path, replicas: int = 0) -> Iterator[OwnCluster]:
    """Three masters (and ``replicas`` replicas each) under ``root``, stopped by PID afterwards."""
    masters = 3
    base = free_ports(masters * (1 + replicas))
    env = {
        "FX__REDIS__MODE": "cluster",
        "FX__REDIS__NODES": ",".join(f"127.0.0.1:{base + i}" for i in range(masters)),
        "FX__REDIS__PASSWORD_FILE": str(root / "redis-password"),
        "FX__STACK__DIR": str(root / "stack"),
        "FX__STACK__REDIS_REPLICAS": str(replicas),
    }
    own = load_settings(environ={**os.environ, **env})
    layout = Layout(own.stack.dir)
    services = redis_cluster_services(own, layout)
    try:
        up(own, layout, services)
        yield OwnCluster(env, own.stack.dir)
    finally:
        for service in reversed(services):
            stop(service.name, layout)
