"""The capacity model's rates, measured on this machine, and its check against real runs, in one run.

``python -m bench.capacity`` (``make bench-capacity``) loads a generated graph (100,000 transactions by
default) and AMLSim's under labels of their own (private slices of the shared stack: labels, topics,
consumer group and Redis prefix, all dropped at the end; the stack's own graph is never replaced),
starts a standalone Redis and a 3-master Redis Cluster of its own on free loopback ports (with
``ops``' functions, configured as ``make up`` configures the stack's), and measures:

- Neo4j: the workers' batch reads (``read_graph``) at 500, 1000 and 2000 accounts per batch, as wall
  time and as the server's own time (each query's ``result_available_after + result_consumed_after``);
- the feature engine alone on the inputs read (one core);
- the workers' write path (``BatchWriter``) and the floor's redis-py pipelines with 1 and 2 writer
  processes, into the standalone server and into the cluster: records/s, each server's own time per
  ``HSET`` (``INFO commandstats``) and memory per node and per transfer record (``used_memory``);
- Kafka: the size of a batch's request and signal, and a signal's round trip (``acks=all``);
- ``distributed-1/2/4`` (bench.run's mode) on the stack, and ``distributed-2`` into our own
  standalone server and into our own cluster, interleaved.

It writes ``bench/results/capacity-<time>.json`` (the measurements, the rates of :mod:`bench.model`,
its predictions and checks) and ``docs/scaling.png``; ``--render JSON`` redraws the picture and
prints the tables of docs/scaling.md's "Capacity model" from a results file.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
import redis

from bench.floor import load_records, prepare_records, write_redis_py
from bench.measure import BenchError
from bench.model import (
    Deployment,
    Rates,
    Workload,
    fair_share,
    predict,
    shards_for_memory,
    workers_to_saturate,
    write_throughput,
)
from bench.run import AMLSIM, AMLSIM_FILE, DOCS, RESULTS, BenchGraph, clear_prefix, commit, machine
from fx_workers.config import load_settings
from fx_workers.engine.catalogue import SCHEMA_VERSION, compute_features
from fx_workers.engine.extract import read_graph
from fx_workers.engine.graph import Cypher, open_driver, read_accounts
from fx_workers.protocol import PRODUCER_CONFIG, READER_CONFIG, ExtractionRequest
from fx_workers.steps.plan import lpt_batches
from fx_workers.steps.topics import ensure_topics
from fx_workers.steps.write import RedisSink
from fx_workers.store.client import open_redis
from fx_workers.store.keys import RedisKeys
from fx_workers.store.writer import BatchWriter
from fx_workers.tools.doctor import kafka_admin
from ops.fixtures import Slice, free_ports, redis_cluster
from ops.process import Layout, running, stop
from ops.redis import redis_service
from ops.stack import up

if TYPE_CHECKING:
    from collections.abc import Iterator

    from confluent_kafka import Consumer
    from neo4j import Driver, ManagedTransaction

    from fx_workers.config import Settings
    from fx_workers.engine.batch import BatchFeatures, BatchInput

BATCH_SIZES = (500, 1000, 2000)
BATCH_SIZE = 1000
"""The configured batch size: the rates of the model are taken at it."""
READ_PASSES = 2
WRITERS = (1, 2)
ROUND_TRIPS = 20
IDLE_SAMPLE_SECONDS = 5.0
SIZES = (10_000_000, 100_000_000, 1_000_000_000)
SHARD_BYTES = 25 * 10**9
"""Memory one shard may hold in the predictions (a 32 GB host with room for forks and fragmentation)."""
DEPLOYMENTS = {
    "this machine: 2 workers, 1 Redis, all on 2 cores": Deployment(2, 1, neo4j_cores=2, host_cores=2),
    "8 workers, 3 shards, Community (8 cores)": Deployment(8, 3),
    "32 workers, 12 shards, Community (8 cores)": Deployment(32, 12),
    "32 workers, 12 shards, 3 read servers (neo4j://)": Deployment(32, 12, neo4j_servers=3),
    "128 workers, 48 shards, 5 read servers (neo4j://)": Deployment(128, 48, neo4j_servers=5),
}
"""The deployments predicted at each size; a Neo4j server has 8 cores unless said otherwise."""


# ---- our own Redis servers and the private graphs ---------------------------------------------------

@contextmanager
def own_redis(root: Path, mode: str) -> Iterator[dict[str, str]]:
    """A standalone server or a 3-master cluster of our own on free loopback ports, started and stopped
    by PID with ``ops``' functions (ACL users, persistence as ``config.yaml`` says, like
    the stack's); yields the ``FX__`` variables that point fx at it."""
    if mode == "cluster":
        with redis_cluster(root) as cluster:
            yield cluster.env
        return
    env = {"FX__REDIS__PORT": str(free_ports(1)), "FX__REDIS__PASSWORD_FILE": str(root / "redis-password"),
           "FX__STACK__DIR": str(root / "stack")}
    own = load_settings(environ={**os.environ, **env})
    layout = Layout(own.stack.dir)
    service = redis_service(own, layout)
    try:
        up(own, layout, [service])
        yield env
    finally:
        stop(service.name, layout)


@contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    """``os.environ`` is ``env`` in the block (the bench's child processes inherit it)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextmanager
def private_graph(size: str, seed: int) -> Iterator[tuple[Slice, BenchGraph]]:
    """The graph of ``size`` loaded under a new slice's labels, the slice's variables in ``os.environ`` (the
    bench's child processes must never fall back to the stack's labels, prefix or topics); the slice's
    nodes, schema, topics and keys dropped afterwards."""
    piece = Slice.create()
    graph = BenchGraph(piece.settings, size, seed, AMLSIM_FILE)
    print(f"{size}: loading under {piece.settings.graph.account_label}", file=sys.stderr)
    try:
        with environment(piece.env):
            graph.load()
            yield piece, graph
    finally:
        with open_driver(piece.settings.neo4j) as driver:
            piece.drop(open_redis(piece.settings.redis), kafka_admin(piece.settings.kafka), driver)


@dataclass(frozen=True)
class OwnServers:
    """The nodes of our own standalone server or cluster: a plain client of each (each master), for
    ``INFO``, and its process, for the CPU it spends (protocol parsing and the append-only file included,
    which ``INFO commandstats`` leaves out)."""

    nodes: list[redis.Redis]
    processes: list[psutil.Process]

    @classmethod
    def of(cls, settings: Settings) -> OwnServers:
        r = settings.redis
        layout = Layout(settings.stack.dir)
        if r.mode == "cluster":
            addresses, names = r.addresses(), [f"redis-{port}" for _, port in r.addresses()]
        else:
            addresses, names = [(r.host, r.port)], ["redis"]
        processes = [running(layout, name) for name in names]
        if None in processes:
            raise BenchError(f"our own Redis under {settings.stack.dir} is not running ({', '.join(names)})")
        nodes = [redis.Redis(host=host, port=port, username=r.user, password=r.secret()) for host, port in addresses]
        return cls(nodes, processes)

    def totals(self) -> dict[str, float]:
        """``used_memory``, the microseconds of record writes (``SET``, ``MSET``; ``HSET`` for the hash layout),
        and CPU seconds, summed over the nodes."""
        totals = {"memory": 0.0, "write_usec": 0.0, "cpu_s": 0.0}
        for node, process in zip(self.nodes, self.processes, strict=True):
            stats = node.info("commandstats")
            totals["memory"] += node.info("memory")["used_memory"]
            totals["write_usec"] += sum(stats.get(f"cmdstat_{c}", {}).get("usec", 0) for c in ("set", "mset", "hset"))
            cpu = process.cpu_times()
            totals["cpu_s"] += cpu.user + cpu.system
        return totals


def server_cost(before: dict[str, float], after: dict[str, float], records: int) -> dict[str, float]:
    """What the servers spent per record between two :meth:`OwnServers.totals`."""
    return {"server_usec_per_record": (after["write_usec"] - before["write_usec"]) / records,
            "server_cpu_us_per_record": (after["cpu_s"] - before["cpu_s"]) / records * 1e6}


# ---- per-unit measurements ----------------------------------------------------------------------------

def server_seconds(driver: Driver, settings: Settings, ids: list[str], as_of: int) -> float:
    """Neo4j's own time for one batch's queries (as ``read_batch`` runs them without a run's cache, in one
    read transaction): the sum of each result's ``result_available_after`` and ``result_consumed_after``.
    ``as_of`` counts every transfer, so the neighbour counts are the degree store's, as ``read_batch`` then
    reads them."""
    cypher = Cypher(settings.graph)
    queries = (cypher.edges, cypher.transfers_after, cypher.neighbour_counts(every_transfer_counts=True))

    def run(tx: ManagedTransaction) -> float:
        milliseconds, params = 0, {"ids": ids, "as_of": as_of, "others": []}
        for query in queries:
            result = tx.run(query, params)
            rows = list(result)
            if query == cypher.edges:  # the batch's counterparties, whose counts the last query reads
                params["others"] = sorted(set(rows[0]["other"]))
            summary = result.consume()
            milliseconds += (summary.result_available_after or 0) + (summary.result_consumed_after or 0)
        return milliseconds / 1000

    with driver.session(database=settings.neo4j.database) as session:
        return session.execute_read(run)


def measure_reads(settings: Settings,
                  graph: BenchGraph) -> tuple[list[dict[str, Any]], list[BatchInput], list[list[str]]]:
    """Every batch read as a worker reads it (``read_graph``: wall and thread time), each followed by the
    same queries again for the server's own time, at each of :data:`BATCH_SIZES`, :data:`READ_PASSES` times (the
    fastest pass counts: the machine is shared). Returns the table, and the inputs and batches at
    :data:`BATCH_SIZE`."""
    rows, kept, kept_batches = [], [], []
    with open_driver(settings.neo4j) as driver:
        ids, costs = read_accounts(driver, Cypher(settings.graph), settings.neo4j.database)
        for batch_size in BATCH_SIZES:
            batches = lpt_batches(ids, costs, batch_size)
            passes = []
            for _ in range(READ_PASSES):
                inputs, wall, cpu, server = [], 0.0, 0.0, 0.0
                for batch in batches:
                    started, used = time.perf_counter(), time.thread_time()
                    inputs.append(read_graph(driver, settings, batch, graph.as_of))
                    wall += time.perf_counter() - started
                    cpu += time.thread_time() - used
                    server += server_seconds(driver, settings, batch, graph.as_of)
                passes.append((wall, cpu, server, inputs))
            wall, cpu, server, inputs = min(passes, key=lambda p: p[0])
            rows.append({"batch_size": batch_size, "batches": len(batches), "wall_s": wall, "client_cpu_s": cpu,
                         "server_s": server, "passes_wall_s": [p[0] for p in passes],
                         "transfers_per_s_wall": graph.transactions / wall,
                         "transfers_per_s_client_cpu": graph.transactions / cpu,
                         "transfers_per_s_server": graph.transactions / server})
            print(f"  reads at {batch_size}: {wall:.2f} s wall, {cpu:.2f} s of our CPU, {server:.2f} s in Neo4j",
                  file=sys.stderr)
            if batch_size == BATCH_SIZE:
                kept, kept_batches = inputs, batches
    return rows, kept, kept_batches


def measure_compute(inputs: list[BatchInput]) -> tuple[dict[str, Any], list[BatchFeatures]]:
    """The feature engine alone on inputs already read: accounts per second of one core (thread time)."""
    features, seconds, cpu = [], 0.0, 0.0
    for batch in inputs:
        started, used = time.perf_counter(), time.thread_time()
        features.append(compute_features(batch))
        seconds += time.perf_counter() - started
        cpu += time.thread_time() - used
    accounts = sum(len(f.node_ids) for f in features)
    return {"accounts": accounts, "seconds": seconds, "cpu_s": cpu, "accounts_per_s": accounts / cpu}, features


def measure_batch_writer(settings: Settings, features: list[BatchFeatures]) -> dict[str, Any]:
    """The workers' write path, one client: every batch through ``BatchWriter`` into a new run."""
    client, servers = open_redis(settings.redis), OwnServers.of(settings)
    keys = RedisKeys(settings.redis.prefix).of_run(f"cap{uuid.uuid4().hex[:6]}")
    before = servers.totals()
    started, used = time.perf_counter(), time.thread_time()
    for batch in features:
        BatchWriter(client, keys).write(batch)
    seconds, cpu = time.perf_counter() - started, time.thread_time() - used
    records = sum(len(f.node_ids) + len(f.tx_ids) for f in features)
    cost = server_cost(before, servers.totals(), records)
    clear_prefix(client, settings.redis.prefix)
    return {"records": records, "seconds": seconds, "records_per_s": records / seconds,
            "client_cpu_us_per_record": cpu / records * 1e6, **cost}


def _write_share(settings: Settings, path: Path, run_id: str, share: int, writers: int,
                 barrier: Any, out: Any) -> None:
    """A writer process: its share of the prepared records, loaded, then written once all are ready."""
    records = load_records(path, settings.redis.prefix, run_id)[0][share::writers]
    barrier.wait()
    started, used = time.perf_counter(), time.thread_time()
    write_redis_py(settings, records)
    out.put((started, time.perf_counter(), len(records), time.thread_time() - used))


def measure_floor_writes(settings: Settings, path: Path, writers: int) -> dict[str, Any]:
    """The floor's redis-py pipelines from ``writers`` processes, each a share of the same records; with one
    writer, nodes then transfers, so the memory of each kind shows."""
    client, servers = open_redis(settings.redis), OwnServers.of(settings)
    run_id = f"cap{uuid.uuid4().hex[:6]}"
    result: dict[str, Any] = {"writers": writers}
    if writers == 1:
        records, accounts, transfers = load_records(path, settings.redis.prefix, run_id)
        before = servers.totals()
        started, used = time.perf_counter(), time.thread_time()
        write_redis_py(settings, records[:accounts])
        middle = servers.totals()
        write_redis_py(settings, records[accounts:])
        seconds, cpu = time.perf_counter() - started, time.thread_time() - used
        after = servers.totals()
        result |= {"node_bytes": (middle["memory"] - before["memory"]) / accounts,
                   "edge_bytes": (after["memory"] - middle["memory"]) / transfers}
        count = len(records)
    else:
        context = multiprocessing.get_context("fork")
        barrier, out = context.Barrier(writers), context.Queue()
        before = servers.totals()
        processes = [context.Process(target=_write_share, args=(settings, path, run_id, share, writers, barrier, out))
                     for share in range(writers)]
        for process in processes:
            process.start()
        spans = [out.get(timeout=600) for _ in processes]
        for process in processes:
            process.join()
        after = servers.totals()
        seconds = max(span[1] for span in spans) - min(span[0] for span in spans)
        count, cpu = sum(span[2] for span in spans), sum(span[3] for span in spans)
    clear_prefix(client, settings.redis.prefix)
    return result | {"records": count, "seconds": seconds, "records_per_s": count / seconds,
                     "client_cpu_us_per_record": cpu / count * 1e6, **server_cost(before, after, count)}


def measure_kafka(settings: Settings, features: BatchFeatures, ids: list[str], as_of: int) -> dict[str, Any]:
    """A batch's request and signal as the workers send them, and the signal's round trip through the
    slice's results topic (produced with fx's producer settings, then consumed)."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    request = ExtractionRequest(run_id="capacity", plan="0" * 16, batch_id=0, batches=1, as_of=as_of,
                                schema_version=SCHEMA_VERSION, ids=ids)
    client = open_redis(settings.redis)
    signal = RedisSink(client, RedisKeys(settings.redis.prefix)).write(request, features)
    clear_prefix(client, settings.redis.prefix)
    payload = signal.encode()
    kafka = {"bootstrap.servers": settings.kafka.bootstrap_servers}
    ensure_topics(kafka_admin(settings.kafka), settings)
    topic = settings.kafka.topics.results
    producer = Producer(kafka | PRODUCER_CONFIG)
    consumer = Consumer(kafka | READER_CONFIG | {"group.id": f"{topic}-capacity"})
    consumer.assign([TopicPartition(topic, 0, end_offset(consumer, topic))])
    trips = []
    try:
        for _ in range(ROUND_TRIPS):
            started = time.perf_counter()
            producer.produce(topic, value=payload, partition=0)
            producer.flush(10)
            while (message := consumer.poll(10)) is None or message.error():
                pass
            trips.append(time.perf_counter() - started)
    finally:
        consumer.close()
    return {"accounts": len(ids), "transfers": len(features.tx_ids), "request_bytes": len(request.encode()),
            "signal_bytes": len(payload), "round_trip_s_median": statistics.median(trips),
            "round_trip_s_max": max(trips)}


def end_offset(consumer: Consumer, topic: str, attempts: int = 50) -> int:
    """Partition 0's end offset, once the new topic has a leader (the first asks may find none).

    :raises BenchError: when it still has none after ``attempts`` tries, 0.2 s apart
    """
    from confluent_kafka import KafkaException, TopicPartition

    problem = "never asked"
    for _ in range(attempts):
        try:
            return consumer.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)[1]
        except KafkaException as exc:
            problem = str(exc)
            time.sleep(0.2)
    raise BenchError(f"{topic}: no end offset after {attempts} tries: {problem}")


def others_runnable(seconds: float = IDLE_SAMPLE_SECONDS) -> float:
    """Runnable threads of the machine's other users while this bench waits (the shared stack's idle load,
    other engineers' tests): the mean of ``/proc/loadavg``'s running count, less this sampling thread."""
    samples = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        samples.append(int(Path("/proc/loadavg").read_text().split()[3].split("/")[0]) - 1)
        time.sleep(0.05)
    return statistics.mean(samples)


# ---- the model from the measurements -------------------------------------------------------------------

def median_of(runs: list[dict[str, Any]], mode: str, value: Any) -> float:
    return statistics.median(value(run) for run in runs if run["mode"] == mode)


def batch_overhead(run: dict[str, Any], batch_size: int = BATCH_SIZE) -> float:
    """Per batch, what the workers' phase took beyond their loop's own timings (one worker).

    The loop's time for a read is its wait for it (``extract_wait``): a batch read ahead was read while the
    one before was written, so the reads' own time (``extract``) overlaps the writes. A run measured before
    the workers sent ``extract_wait`` falls back on ``extract``.
    """
    phases = run["phases"]
    wait = phases.get("worker extract_wait (sum)", phases.get("worker extract (sum)", 0.0))
    own = wait + sum(phases.get(f"worker {name} (sum)", 0.0) for name in ("write", "stats"))
    batches = -(-run["accounts"] // batch_size)
    return (phases["workers"] - own) / batches


def tail(run: dict[str, Any]) -> float:
    """A distributed run's time after its workers: aggregate, verify, publish."""
    return run["seconds"] - run["phases"]["plan + publish"] - run["phases"]["workers"]


def from_bench(results_dir: Path = RESULTS) -> dict[str, Any]:
    """What this module takes from ``make bench``'s newest results rather than measure again: what Airflow
    adds (the medians of ``dag`` and ``distributed-2`` at the size that has both), and the plan's rate
    at the largest size ``distributed-2`` ran at (below about 1M accounts its fixed cost hides the rate).

    :raises BenchError: when no results have them
    """
    found: dict[str, Any] = {}
    for path in sorted(results_dir.glob("bench-*.json"), reverse=True):
        for size in json.loads(path.read_text())["sizes"]:
            modes = {run["mode"] for run in size["runs"]}
            if "distributed-2" not in modes:
                continue
            dist = median_of(size["runs"], "distributed-2", lambda r: r["seconds"])
            if "dag" in modes and "airflow" not in found:
                dag = median_of(size["runs"], "dag", lambda r: r["seconds"])
                found["airflow"] = {"file": path.name, "transactions": size["transactions"], "dag_s": dag,
                                    "distributed_2_s": dist, "seconds": dag - dist}
            if size["transactions"] > found.get("plan", {}).get("transactions", 0):
                plan = median_of(size["runs"], "distributed-2", lambda r: r["phases"]["plan + publish"])
                found["plan"] = {"file": path.name, "transactions": size["transactions"], "accounts": size["accounts"],
                                 "seconds": plan, "accounts_per_s": size["accounts"] / plan}
    if {"airflow", "plan"} - set(found):
        raise BenchError(f"no bench results in {results_dir} with dag and distributed-2; run make bench")
    return found


def rates_from(measured: dict[str, Any]) -> Rates:
    """The model's rates from one run's measurements (the generated graph's, standalone Redis)."""
    reads = next(row for row in measured["reads"] if row["batch_size"] == BATCH_SIZE)
    standalone = measured["writes"]["standalone"]
    floor = next(w for w in standalone["floor"] if w["writers"] == 1)
    runs = measured["scaling"]["runs"]
    one = [run for run in runs if run["mode"] == "distributed-1"]
    return Rates(
        neo4j_transfers_per_s=reads["transfers_per_s_server"],
        read_transfers_per_s=reads["transfers_per_s_client_cpu"],
        compute_accounts_per_s=measured["compute"]["accounts_per_s"],
        write_records_per_s=1e6 / standalone["batch_writer"]["client_cpu_us_per_record"],
        redis_records_per_s=1e6 / standalone["batch_writer"]["server_cpu_us_per_record"],
        batch_overhead_s=statistics.median(batch_overhead(run) for run in one),
        plan_accounts_per_s=measured["bench"]["plan"]["accounts_per_s"],
        tail_s=statistics.median(tail(run) for run in runs),
        airflow_s=measured["bench"]["airflow"]["seconds"],
        node_bytes=floor["node_bytes"],
        edge_bytes=floor["edge_bytes"],
    )


def checks(measured: dict[str, Any], rates: Rates) -> dict[str, Any]:
    """The model against what this run measured: distributed-K walls, and write throughput by shards."""
    graph = measured["graph"]
    load = Workload(graph["transfers"], graph["accounts"])
    cores = measured["machine"]["cores"]
    others = measured["scaling"]["others_runnable"]
    workers = []
    for k in measured["scaling"]["workers"]:
        mode = f"distributed-{k}"
        seen = [run["seconds"] for run in measured["scaling"]["runs"] if run["mode"] == mode]
        where = Deployment(k, 1, neo4j_cores=cores, host_cores=cores, airflow=False)
        share = fair_share(cores, k + 1, others)
        workers.append({"workers": k, "measured_s": seen, "median_s": statistics.median(seen),
                        "predicted_s": predict(rates, load, where).seconds, "fair_share_cores": share,
                        "predicted_shared_s": predict(rates, load, replace(where, host_cores=share)).seconds,
                        "bottleneck": predict(rates, load, where).bottleneck})
    shards = []
    for mode, count in (("standalone", 1), ("cluster", 3)):
        one = next(w for w in measured["writes"][mode]["floor"] if w["writers"] == 1)
        # a record costs one shard what the nodes spent per record together
        client, shard = 1e6 / one["client_cpu_us_per_record"], 1e6 / one["server_cpu_us_per_record"]
        for floor in measured["writes"][mode]["floor"]:
            n = floor["writers"]
            share = fair_share(cores, n + 1, measured["writes"]["others_runnable"])
            shards.append({"redis": mode, "shards": count, "writers": n,
                           "measured_records_per_s": floor["records_per_s"],
                           "predicted_records_per_s": write_throughput(client, shard, n, count, cores),
                           "fair_share_cores": share,
                           "predicted_shared_records_per_s": write_throughput(client, shard, n, count, share)})
    return {"others_runnable": others, "workers": workers, "shards": shards}


def predictions(rates: Rates, transfers_per_account: float) -> list[dict[str, Any]]:
    """The table of docs/scaling.md: every size on every deployment of :data:`DEPLOYMENTS`."""
    rows = []
    for transfers in SIZES:
        load = Workload.like(transfers, transfers_per_account)
        for name, where in DEPLOYMENTS.items():
            guess = predict(rates, load, where)
            server = max(("neo4j", "redis"), key=guess.stages.__getitem__)
            rows.append({"transfers": transfers, "accounts": load.accounts, "deployment": name, **asdict(where),
                         "seconds": guess.seconds, "stages": guess.stages, "bottleneck": guess.bottleneck,
                         "memory_bytes": guess.memory_bytes,
                         "per_shard_bytes": guess.per_shard_bytes(where.shards),
                         "shards_for_memory": shards_for_memory(guess, SHARD_BYTES),
                         "next_server": server, "workers_to_saturate": workers_to_saturate(rates, load, where)})
    return rows


# ---- the picture ---------------------------------------------------------------------------------------

def plot(results: dict[str, Any], path: Path) -> None:
    """Measured against predicted: wall time by workers, write throughput by shards and writers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    check = results["checks"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.8))
    ks = [row["workers"] for row in check["workers"]]
    for row in check["workers"]:
        left.scatter([row["workers"]] * len(row["measured_s"]), row["measured_s"], color="tab:blue", alpha=0.5)
    left.plot(ks, [row["median_s"] for row in check["workers"]], "o-", color="tab:blue", label="measured (median)")
    left.plot(ks, [row["predicted_s"] for row in check["workers"]], "s--", color="tab:orange",
              label=f"model, {results['machine']['cores']} cores")
    left.plot(ks, [row["predicted_shared_s"] for row in check["workers"]], "^:", color="tab:red",
              label=f"model, fair share of the cores beside {check['others_runnable']:.1f} others' threads")
    graph = results["graph"]
    left.set(xlabel="workers", ylabel="plan to verified and live, s", xticks=ks, ylim=(0, None),
             title=f"distributed-K, {graph['transfers']:,} transfers")
    left.legend()
    labels = [f"{row['redis']}\n{row['writers']} writer{'s' if row['writers'] > 1 else ''}" for row in check["shards"]]
    xs = range(len(labels))
    width = 0.27
    for offset, key, label in ((-width, "measured_records_per_s", "measured"),
                               (0.0, "predicted_records_per_s", "model, 2 cores"),
                               (width, "predicted_shared_records_per_s", "model, fair share")):
        right.bar([x + offset for x in xs], [row[key] for row in check["shards"]], width, label=label)
    right.set(xticks=list(xs), xticklabels=labels, ylabel="records/s (redis-py pipelines)",
              title="1 standalone vs 3-master cluster")
    right.legend()
    figure.suptitle(f"fx capacity model on this machine ({results['machine']['cores']} cores, shared)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def tables(results: dict[str, Any]) -> str:
    """The markdown tables of docs/scaling.md's "Capacity model" from a results file: the checks and the
    predictions (the rates are quoted in its prose)."""
    lines = ["| workers | measured s (median) | model, 2 cores | model, fair share | bottleneck |",
             "| ---: | ---: | ---: | ---: | --- |"]
    lines += [f"| {r['workers']} | {', '.join(f'{x:.1f}' for x in r['measured_s'])} ({r['median_s']:.1f}) | "
              f"{r['predicted_s']:.1f} | {r['predicted_shared_s']:.1f} ({r['fair_share_cores']:.2f} cores) | "
              f"{r['bottleneck']} |" for r in results["checks"]["workers"]]
    lines += ["", "| Redis | shards | writers | measured records/s | model, 2 cores | model, fair share |",
              "| --- | ---: | ---: | ---: | ---: | ---: |"]
    lines += [f"| {r['redis']} | {r['shards']} | {r['writers']} | {r['measured_records_per_s']:,.0f} | "
              f"{r['predicted_records_per_s']:,.0f} | {r['predicted_shared_records_per_s']:,.0f} "
              f"({r['fair_share_cores']:.2f} cores) |" for r in results["checks"]["shards"]]
    lines += ["", "| transfers | deployment | wall | worker / Neo4j / Redis s | bottleneck | then, past N workers "
              "| Redis peak (3 runs) | per shard | shards at 25 GB |",
              "| ---: | --- | ---: | --- | --- | --- | ---: | ---: | ---: |"]
    for r in results["predictions"]:
        stages = " / ".join(f"{r['stages'][k]:,.0f}" for k in ("worker", "neo4j", "redis"))
        lines.append(f"| {r['transfers']:,} | {r['deployment']} | {duration(r['seconds'])} | {stages} | "
                     f"{r['bottleneck']} | {r['next_server']}, {r['workers_to_saturate']:,.0f} | "
                     f"{r['memory_bytes'] / 1e9:,.0f} GB | {r['per_shard_bytes'] / 1e9:,.1f} GB | "
                     f"{r['shards_for_memory']} |")
    return "\n".join(lines) + "\n"


def duration(seconds: float) -> str:
    """``42 s``, ``12 min`` or ``3.4 h``."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


# ---- the run -------------------------------------------------------------------------------------------

def measure_graph(piece: Slice, graph: BenchGraph, targets: dict[str, Settings], records: Path) -> dict[str, Any]:
    """The per-unit measurements on one loaded graph."""
    reads, inputs, batches = measure_reads(piece.settings, graph)
    compute, features = measure_compute(inputs)
    prepare_records(piece.settings, graph.as_of, records)
    writes: dict[str, Any] = {"others_runnable": others_runnable()}
    for mode, settings in targets.items():
        print(f"  writes into our own {mode} Redis", file=sys.stderr)
        writes[mode] = {"batch_writer": measure_batch_writer(settings, features),
                        "floor": [measure_floor_writes(settings, records, n) for n in WRITERS]}
    records.unlink()
    kafka = measure_kafka(targets["standalone"], features[0], batches[0], graph.as_of)
    return {"graph": {"size": graph.size, "transfers": graph.transactions, "accounts": graph.accounts,
                      "load_seconds": graph.load_seconds},
            "reads": reads, "compute": compute, "writes": writes, "kafka": kafka}


def measure_scaling(piece: Slice, graph: BenchGraph, targets: dict[str, dict[str, str]], workers: list[int],
                    repeats: int) -> dict[str, Any]:
    """distributed-K on the stack's Redis, and distributed-2 into our standalone server and our cluster,
    interleaved, ``repeats`` times."""
    client = open_redis(piece.settings.redis)
    others = [others_runnable()]
    runs = []
    for repeat in range(repeats):
        for k in workers:
            print(f"  repeat {repeat + 1}: distributed-{k}", file=sys.stderr)
            runs.append({"repeat": repeat, "redis": "stack", **graph.measure(f"distributed-{k}", client, [])})
        for mode, env in targets.items():
            print(f"  repeat {repeat + 1}: distributed-2 into our {mode} Redis", file=sys.stderr)
            with environment({**piece.env, **env}):
                run = graph.measure("distributed-2", client, [])
            runs.append({"repeat": repeat, "redis": mode, **run, "redis_bytes": None, "redis_peak_bytes": None})
    others.append(others_runnable())
    return {"workers": workers, "repeats": repeats, "others_runnable": statistics.mean(others),
            "runs": [run for run in runs if run["redis"] == "stack"],
            "shards_runs": [run for run in runs if run["redis"] != "stack"]}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.capacity", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--transactions", default="100000", help="the generated graph's size")
    parser.add_argument("--workers", default="1,2,4", help="distributed worker counts, comma separated")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each distributed mode")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-amlsim", action="store_true", help="skip the per-unit measurements on AMLSim")
    parser.add_argument("--render", type=Path, metavar="JSON", help="only redraw the picture from a results file")
    args = parser.parse_args(argv)
    args.workers = [int(k) for k in args.workers.split(",") if k]
    return args


def finish(results: dict[str, Any]) -> None:
    """Rates, checks and predictions from the measurements (kept in ``results``), and the picture."""
    rates = rates_from(results)
    graph = results["graph"]
    results["rates"] = asdict(rates)
    results["checks"] = checks(results, rates)
    results["predictions"] = predictions(rates, graph["transfers"] / graph["accounts"])
    plot(results, DOCS / "scaling.png")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        results = json.loads(args.render.read_text())
        finish(results)
        args.render.write_text(json.dumps(results, indent=1))
        print(tables(results))
        print(f"rendered {args.render} into {DOCS / 'scaling.png'}", file=sys.stderr)
        return 0
    started = datetime.now(UTC)
    base = load_settings()
    results: dict[str, Any] = {
        "command": " ".join(["python -m bench.capacity", *(sys.argv[1:] if argv is None else argv)]),
        "started_at": started.isoformat(timespec="seconds"), "commit": commit(), "machine": machine(base),
        "load_average_at_start": os.getloadavg(), "bench": from_bench(),
    }
    path = RESULTS / f"capacity-{started:%Y%m%dT%H%M%S}.json"
    with tempfile.TemporaryDirectory(prefix="fx-capacity-") as tmp, \
            own_redis(Path(tmp) / "standalone", "standalone") as standalone, \
            own_redis(Path(tmp) / "cluster", "cluster") as cluster:
        envs = {"standalone": standalone, "cluster": cluster}
        for size in [args.transactions, *([] if args.no_amlsim else [AMLSIM])]:
            with private_graph(size, args.seed) as (piece, graph):
                targets = {mode: load_settings(environ={**piece.env, **env}) for mode, env in envs.items()}
                records = RESULTS / "data" / f"records-capacity-{piece.settings.redis.prefix}.npz"
                part = measure_graph(piece, graph, targets, records)
                if size == AMLSIM:
                    results["amlsim"] = part
                else:
                    results |= part
                    results["scaling"] = measure_scaling(piece, graph, envs, args.workers, args.repeats)
                path.write_text(json.dumps(results, indent=1))
    results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    finish(results)
    path.write_text(json.dumps(results, indent=1))
    print(f"results: {path}; picture: {DOCS / 'scaling.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
