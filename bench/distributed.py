"""The distributed path without Airflow: k worker processes and the package's run steps, as the DAG calls them.

Each measurement gets its own topics and consumer group (``fxbench-<tag>-...``), so the stack's
workers never see its requests and a stale request of an earlier run can never reach its workers.
The clock starts, once the workers hold every request partition, with the plan (``make_plan``),
then the requests are published (``request_messages``), the completion signals counted into a
``SignalLedger`` as the DAG's trigger does, the run aggregated from that ledger (``aggregate_run``),
verified (``verify_run``) and published (``conclude`` flips ``latest``); it stops when the run is live.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING

import fx_workers.steps.aggregate
import fx_workers.steps.verify
import fx_workers.store.plan_store
import fx_workers.store.reader
from bench.measure import BenchError, Measurement, PhaseClock, wait_with_rss
from fx_workers.config import REPO_ROOT, load_settings
from fx_workers.engine.graph import open_driver
from fx_workers.protocol import READER_CONFIG
from fx_workers.steps.aggregate import aggregate_run
from fx_workers.steps.plan import Plan, make_plan, request_messages
from fx_workers.steps.promote import conclude
from fx_workers.steps.topics import end_offsets, ensure_topics
from fx_workers.steps.verify import verify_run
from fx_workers.store.client import open_redis
from fx_workers.store.signals import SignalLedger
from fx_workers.tools.doctor import topic_partitions
from ops.fixtures import kafka_overrides

if TYPE_CHECKING:
    from collections.abc import Iterator

    from confluent_kafka import Consumer
    from confluent_kafka.admin import AdminClient

    from fx_workers.config import Settings

PREFIX = "fxbench-"
RUN_PHASES = [
    (fx_workers.steps.aggregate, "_record", "aggregate: manifest"),
    (fx_workers.steps.verify, "extract_batch", "verify: recompute"),
    (fx_workers.store.reader.FeatureReader, "raw", "verify: re-read"),
    (fx_workers.store.plan_store.PlanStore, "batches", "verify: plan"),
]
"""Inside ``aggregate_run`` (whose own remaining time is reading the signals that came after the ledger's
last) and ``verify_run`` (whose own remaining time is counting and comparing): the manifest and drift
written; the sample and whole batches recomputed from Neo4j, records re-read from Redis, the plan read
back. The signals are decoded once, while the workers run."""
LOGS = REPO_ROOT / "bench" / "results" / "logs"
READY_TIMEOUT_SECONDS = 60.0
IDLE_TIMEOUT_SECONDS = 120.0
POLL_SECONDS = 0.1
"""``consume()`` waits this long unless it has a full batch of messages: the bench's own latency."""


def remove_leftovers(admin: AdminClient) -> None:
    """Delete the topics and (empty) consumer groups of earlier measurements."""
    topics = [name for name in admin.list_topics(timeout=10).topics if name.startswith(PREFIX)]
    if topics:
        for future in admin.delete_topics(topics, operation_timeout=30).values():
            future.result()
    groups = [g.group_id for g in admin.list_consumer_groups().result().valid if g.group_id.startswith(PREFIX)]
    if groups:
        for future in admin.delete_consumer_groups(groups).values():
            future.exception()  # a group whose members have not timed out yet goes next time


@contextmanager
def worker_pool(count: int, env: dict[str, str], tag: str, peak_rss: list[int]) -> Iterator[None]:
    """``count`` workers (``python -m fx_workers --worker-id N``); on exit a warm stop, and their peak RSS."""
    LOGS.mkdir(parents=True, exist_ok=True)
    processes = []
    with ExitStack() as logs:
        try:
            for worker_id in range(count):
                log = logs.enter_context((LOGS / f"{tag}-worker-{worker_id}.log").open("w"))
                processes.append(subprocess.Popen([sys.executable, "-m", "fx_workers", "--worker-id", str(worker_id)],
                                                  env=env, stdout=log, stderr=log))
            yield
        finally:
            for process in processes:
                process.send_signal(signal.SIGTERM)
            for process in processes:
                code, rss = wait_with_rss(process)
                peak_rss.append(rss)
                if code != 0:
                    raise BenchError(f"worker {process.args} exited {code}; see {LOGS}/{tag}-worker-*.log")


def wait_until_assigned(admin: AdminClient, settings: Settings, workers: int) -> None:
    """Block until ``workers`` members of the group hold every request partition.

    :raises BenchError: after :data:`READY_TIMEOUT_SECONDS`
    """
    from confluent_kafka import ConsumerGroupState

    group, wanted = settings.kafka.consumer_group, settings.kafka.partitions.requests
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        description = admin.describe_consumer_groups([group])[group].result()
        assigned = sum(len(m.assignment.topic_partitions) for m in description.members)
        if description.state == ConsumerGroupState.STABLE and len(description.members) == workers \
                and assigned == wanted:
            return
        time.sleep(0.2)
    raise BenchError(f"{workers} workers did not join group {group} within {READY_TIMEOUT_SECONDS:.0f}s")


def wait_for_batches(consumer: Consumer, topic: str, plan: Plan, worker_seconds: dict[str, float]) -> SignalLedger:
    """Count this run's completion signals into a ledger, as the DAG's trigger does, until every batch has
    one; add the workers' own timings (``timings_ms`` of each signal) to ``worker_seconds``, in seconds.

    :raises BenchError: when a batch failed, or nothing arrived for :data:`IDLE_TIMEOUT_SECONDS`
    """
    from confluent_kafka import TopicPartition

    consumer.assign([TopicPartition(topic, int(p), o) for p, o in plan.start_offsets.items()])
    ledger = SignalLedger(run_id=plan.run_id, plan=plan.fingerprint, batches=plan.batches,
                          offsets={int(p): o for p, o in plan.start_offsets.items()})
    last_seen = time.monotonic()
    while not ledger.complete:
        messages = consumer.consume(num_messages=500, timeout=POLL_SECONDS)
        if messages:
            last_seen = time.monotonic()
        elif time.monotonic() - last_seen > IDLE_TIMEOUT_SECONDS:
            raise BenchError(f"no signals for {IDLE_TIMEOUT_SECONDS:.0f}s; {len(ledger.counted)} of {plan.batches} "
                             "batches done")
        for message in messages:
            if (signal := ledger.take(message)) is not None:
                for name, ms in signal.timings_ms.items():
                    worker_seconds[f"worker {name}"] += ms / 1000
        if failed := ledger.failed | ledger.retryable:
            raise BenchError(f"batches failed: {failed}")
    return ledger


def run_distributed(*, as_of: int, run_id: str, workers: int) -> Measurement:
    """One distributed run with ``workers`` workers, timed from the plan to the run verified and live.

    :param run_id: names the log files of this measurement's workers
    :raises BenchError: when a step fails, or the verification does
    """
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient

    tag = uuid.uuid4().hex[:8]
    env = os.environ | kafka_overrides(f"{PREFIX}{tag}")  # a measurement's own topics and group
    settings = load_settings(environ=env)
    kafka = {"bootstrap.servers": settings.kafka.bootstrap_servers}
    admin = AdminClient(kafka)
    remove_leftovers(admin)
    ensure_topics(admin, settings)
    client = open_redis(settings.redis)
    results = settings.kafka.topics.results
    reader = Consumer(kafka | READER_CONFIG | {"group.id": f"{PREFIX}{tag}-reader"})
    watcher = Consumer(kafka | READER_CONFIG | {"group.id": f"{PREFIX}{tag}-watcher"})
    producer = Producer(kafka | {"linger.ms": 5})
    worker_rss: list[int] = []
    clock = PhaseClock()
    worker_seconds: dict[str, float] = defaultdict(float)
    try:
        with worker_pool(workers, env, f"{run_id}-{tag}", worker_rss), open_driver(settings.neo4j) as driver:
            wait_until_assigned(admin, settings, workers)
            started = time.perf_counter()
            plan, _ = make_plan(driver, client, settings, as_of=as_of, batch_size=settings.extraction.batch_size,
                                mode="bench", partitions=settings.kafka.partitions.requests,
                                start_offsets=end_offsets(reader, results))
            for key, value in request_messages(client, settings, plan.to_dict()):
                producer.produce(settings.kafka.topics.requests, key=key, value=value)
            producer.flush(30)
            published = time.perf_counter()
            ledger = wait_for_batches(watcher, results, plan, worker_seconds)
            computed = time.perf_counter()
            with clock.patch(RUN_PHASES):
                summary = clock.wrap("aggregate: kafka", aggregate_run)(reader, client, settings, plan.to_dict(),
                                                                        {"ledger": ledger.model_dump(mode="json")})
                aggregated = time.perf_counter()
                report = clock.wrap("verify: counts", verify_run)(settings, client, plan.run_id)
            verified = time.perf_counter()
            conclude(settings, client, report, compute_seconds=round(computed - started, 3))
            live = time.perf_counter()
    finally:
        reader.close()
        watcher.close()
        for future in admin.delete_topics(list(topic_partitions(settings.kafka)), operation_timeout=30).values():
            future.exception()
    if not report.ok:
        raise BenchError(str(report))
    phases = {"plan + publish": published - started, "workers": computed - published, **clock.seconds,
              "publish": live - verified, **{f"{k} (sum)": v for k, v in worker_seconds.items()}}
    return Measurement(live - started, plan.accounts, summary["transfers"], phases, verified - aggregated,
                       worker_rss)
