"""The capacity model's arithmetic (docs/scaling.md, "Capacity model"): pure, so its numbers can be
checked by hand. :mod:`bench.capacity` measures the rates and feeds them in.

A run is a plan, then batches flowing through three stages at once (Neo4j serving reads, the
workers reading, computing and writing, Redis storing records), then a fixed tail (aggregate,
verify, publish, Airflow's scheduling). The batches' part takes as long as its slowest stage, so

    wall = fixed + accounts / plan rate + max(worker, neo4j, redis[, host])

where a worker's chain per batch is sequential (its read waits for Neo4j, its write for Redis),
K workers divide it, Neo4j's server time is divided by the cores of its read servers, Redis's by
its shards; ``host`` exists only when everything shares one machine's cores (this one), and then
every CPU second of every party counts against them. Memory is the run's records times the runs
Redis holds at the peak: the retained ones plus the one being written.

The rates are CPU time (the workers' own thread time, Redis's process time) or Neo4j's own time per
query, not wall time, so that they hold on a machine whose cores other processes share: contention
is the ``host`` stage's business, with the cores the run really gets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

STAGES = ("worker", "neo4j", "redis", "host")


@dataclass(frozen=True)
class Rates:
    """Per-unit rates, each of one core or one stream as measured (seconds per unit are 1 / rate)."""

    neo4j_transfers_per_s: float
    """Neo4j's own time (the server's ``result_available_after + result_consumed_after``) for the workers'
    batch reads, as transfers of the graph per second: one query stream, one core."""
    read_transfers_per_s: float
    """A worker's CPU for its read (``read_graph``'s thread time: the driver decoding rows into arrays)."""
    compute_accounts_per_s: float
    """The feature engine's CPU (``compute_features``' thread time), no I/O."""
    write_records_per_s: float
    """A worker's CPU for its write path (``BatchWriter.write``'s thread time: encode, checksum, redis-py)."""
    redis_records_per_s: float
    """One shard's CPU per record (its process time: protocol, ``HSET``, the append-only file), one core."""
    batch_overhead_s: float
    """Per batch, outside the read, compute and write: Kafka's request and signal, the worker's checks."""
    plan_accounts_per_s: float
    """The plan and the publication of its requests, per account (one process, before any worker starts)."""
    tail_s: float
    """Aggregate, verify and publish: about constant (a fixed sample is recomputed)."""
    airflow_s: float
    """What a run through Airflow adds to the same run without it (scheduling, task start-up, deferral)."""
    node_bytes: float
    """Redis memory per account record (its hash of 62 features)."""
    edge_bytes: float
    """Redis memory per transfer record (its hash of 11 features)."""


@dataclass(frozen=True)
class Workload:
    """A graph to extract: its transfers and accounts (each gets a record)."""

    transfers: int
    accounts: int

    @property
    def records(self) -> int:
        return self.transfers + self.accounts

    @classmethod
    def like(cls, transfers: int, transfers_per_account: float) -> Workload:
        """A graph of ``transfers`` shaped like a measured one (its transfers per account)."""
        return cls(transfers, math.ceil(transfers / transfers_per_account))


@dataclass(frozen=True)
class Deployment:
    """Where a run executes."""

    workers: int
    shards: int
    neo4j_cores: int = 8
    """Cores of each Neo4j server that answers reads (a query stream uses one)."""
    neo4j_servers: int = 1
    """Servers answering reads: 1 for Community; a cluster's primaries and read replicas with ``neo4j://``."""
    host_cores: float | None = None
    """Everything on one host of this many cores (this machine), or None: each party has its own."""
    batch_size: int = 1000
    retained_runs: int = 2
    airflow: bool = True


@dataclass(frozen=True)
class Prediction:
    seconds: float
    stages: dict[str, float]
    """Seconds each concurrent stage needs on its own; the largest sets the pace."""
    bottleneck: str
    memory_bytes: float
    """Redis at the peak: every retained run plus the one being written."""

    def per_shard_bytes(self, shards: int) -> float:
        return self.memory_bytes / shards


def worker_chain_seconds(rates: Rates, load: Workload, batch_size: int) -> float:
    """One worker doing every batch in turn: read (and wait for Neo4j), compute, write (and wait for Redis)."""
    batches = math.ceil(load.accounts / batch_size)
    return (load.transfers / rates.read_transfers_per_s + load.transfers / rates.neo4j_transfers_per_s
            + load.accounts / rates.compute_accounts_per_s
            + load.records / rates.write_records_per_s + load.records / rates.redis_records_per_s
            + batches * rates.batch_overhead_s)


def stage_seconds(rates: Rates, load: Workload, where: Deployment) -> dict[str, float]:
    """Seconds each stage of the batches' part would take alone (see the module's docstring)."""
    chain = worker_chain_seconds(rates, load, where.batch_size)
    stages = {
        "worker": chain / where.workers,
        "neo4j": load.transfers / (rates.neo4j_transfers_per_s * where.neo4j_cores * where.neo4j_servers),
        "redis": load.records / (rates.redis_records_per_s * where.shards),
    }
    if where.host_cores is not None:
        # The chain is the workers' CPU plus the servers' CPU they wait for; Kafka's share is mostly waiting.
        batches = math.ceil(load.accounts / where.batch_size)
        stages["host"] = (chain - batches * rates.batch_overhead_s) / where.host_cores
    return stages


def predict(rates: Rates, load: Workload, where: Deployment) -> Prediction:
    """Wall time, the stage that sets it and Redis's peak memory for one run."""
    stages = stage_seconds(rates, load, where)
    bottleneck = max(stages, key=stages.__getitem__)
    fixed = load.accounts / rates.plan_accounts_per_s + rates.tail_s + (rates.airflow_s if where.airflow else 0.0)
    memory = (load.accounts * rates.node_bytes + load.transfers * rates.edge_bytes) * (where.retained_runs + 1)
    return Prediction(fixed + stages[bottleneck], stages, bottleneck, memory)


def write_throughput(client_records_per_s: float, shard_records_per_s: float, clients: int, shards: int,
                     host_cores: float | None) -> float:
    """Records per second that ``clients`` writer processes get from ``shards`` shards: the write part of
    the model alone, as the 1-to-3-shard check measures it.

    :param client_records_per_s: one writer's CPU rate
    :param shard_records_per_s: one shard's CPU rate
    :param host_cores: clients and shards share this many cores, or None
    """
    both = 1 / client_records_per_s + 1 / shard_records_per_s  # a writer waits for each reply
    per_record = {"clients": both / clients, "redis": 1 / (shard_records_per_s * shards)}
    if host_cores is not None:
        per_record["host"] = both / host_cores
    return 1 / max(per_record.values())


def shards_for_memory(prediction: Prediction, shard_bytes: float) -> int:
    """The fewest shards whose memory holds the run's peak."""
    return max(1, math.ceil(prediction.memory_bytes / shard_bytes))


def workers_to_saturate(rates: Rates, load: Workload, where: Deployment) -> float:
    """Workers past which adding more stops helping: the chain divided by the slowest server stage."""
    stages = stage_seconds(rates, load, replace(where, workers=1, host_cores=None))
    return stages["worker"] / max(stages["neo4j"], stages["redis"])


def fair_share(cores: float, ours: int, others: float) -> float:
    """Cores a run's ``ours`` runnable processes get beside ``others`` runnable threads of other users,
    when the kernel shares the cores evenly among all runnable ones (never more than ``cores``)."""
    return cores * min(1.0, ours / (ours + others)) if ours + others > cores else float(min(cores, ours))
