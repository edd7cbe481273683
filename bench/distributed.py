"""The distributed path without Airflow: k worker processes, the package's plan, publish and aggregate steps.

Each measurement gets its own topics and consumer group (``fxbench-<tag>-...``), so the stack's
workers never see its requests and a stale request of an earlier run can never reach its workers.
The clock starts when the workers hold every request partition and stops when the last batch is in
Redis; the verification that follows (``finish_run``) is timed apart. As in the ``fx_extract`` DAG,
one aggregation reads every result once all batches are done.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from contextlib import ExitStack, contextmanager
from dataclasses import asdict
from typing import TYPE_CHECKING

import fx_workers.pipeline
import fx_workers.sink
from bench.measure import BenchError, Measurement, PhaseClock, wait_with_rss
from fx_workers.config import REPO_ROOT, load_settings
from fx_workers.engine.graph import open_driver
from fx_workers.messages import HEADER_KIND, HEADER_RUN, BatchStatus, CompletionSignal, MessageKind, header_value
from fx_workers.pipeline import (
    READER_CONFIG,
    Plan,
    aggregate_run,
    finish_run,
    missing_topics,
    plan_run,
    request_messages,
)
from fx_workers.sink import RedisSink, open_redis
from fx_workers.store.keys import RedisKeys
from fx_workers.tools.doctor import topic_partitions

if TYPE_CHECKING:
    from collections.abc import Iterator

    from confluent_kafka import Consumer
    from confluent_kafka.admin import AdminClient

    from fx_workers.config import Settings

PREFIX = "fxbench-"
AGGREGATE_PHASES = [
    (fx_workers.pipeline.FeatureResult, "decode", "aggregate: decode"),
    (fx_workers.pipeline, "join_features", "aggregate: decode"),
    (fx_workers.sink.RedisSink, "write", "aggregate: encode"),
    (fx_workers.sink.RedisSink, "_send", "aggregate: redis"),
]
"""Inside ``aggregate_run``, whose own remaining time is reading Kafka: results into arrays, arrays into
RESP, and the Redis round trips."""
LOGS = REPO_ROOT / "bench" / "results" / "logs"
READY_TIMEOUT_SECONDS = 60.0
IDLE_TIMEOUT_SECONDS = 120.0
POLL_SECONDS = 0.05
"""``consume()`` waits this long unless it has a full batch of messages: the bench's own latency."""


def bench_environment(tag: str) -> dict[str, str]:
    """``FX__`` overrides giving a measurement its own topics and consumer group."""
    return {
        "FX__KAFKA__TOPICS__REQUESTS": f"{PREFIX}{tag}-requests",
        "FX__KAFKA__TOPICS__RESULTS": f"{PREFIX}{tag}-results",
        "FX__KAFKA__TOPICS__DEAD_LETTER": f"{PREFIX}{tag}-dlq",
        "FX__KAFKA__CONSUMER_GROUP": f"{PREFIX}{tag}",
    }


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


def create_topics(admin: AdminClient, settings: Settings) -> None:
    """The measurement's topics, as the DAG's plan task creates them."""
    from confluent_kafka.admin import NewTopic

    new = [NewTopic(name, partitions, replication) for name, partitions, replication in missing_topics(admin, settings)]
    for future in admin.create_topics(new, operation_timeout=30).values():
        future.result()


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


def wait_for_batches(consumer: Consumer, topic: str, plan: Plan) -> tuple[int, int]:
    """Count this run's completion signals until every batch has one; its accounts and transfers.

    :raises BenchError: when a batch failed, or nothing arrived for :data:`IDLE_TIMEOUT_SECONDS`
    """
    from confluent_kafka import TopicPartition

    consumer.assign([TopicPartition(topic, int(p), o) for p, o in plan.start_offsets.items()])
    done: dict[int, CompletionSignal] = {}
    last_seen = time.monotonic()
    while len(done) < plan.batches:
        messages = consumer.consume(num_messages=500, timeout=POLL_SECONDS)
        if messages:
            last_seen = time.monotonic()
        elif time.monotonic() - last_seen > IDLE_TIMEOUT_SECONDS:
            raise BenchError(f"no results for {IDLE_TIMEOUT_SECONDS:.0f}s; {len(done)} of {plan.batches} batches done")
        for message in messages:
            if message.error() or header_value(message.headers(), HEADER_RUN) != plan.run_id \
                    or header_value(message.headers(), HEADER_KIND) != MessageKind.COMPLETION:
                continue
            completion = CompletionSignal.decode(message.value())
            if completion.status is not BatchStatus.OK:
                raise BenchError(f"batch {completion.batch_id} failed: {completion.error}")
            done[completion.batch_id] = completion
    return sum(c.accounts for c in done.values()), sum(c.transfers for c in done.values())


def run_distributed(*, as_of: int, run_id: str, workers: int) -> Measurement:
    """One distributed run with ``workers`` workers, timed from the plan to the last batch in Redis.

    :raises BenchError: when a step fails, or the verification does
    """
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient

    tag = uuid.uuid4().hex[:8]
    env = os.environ | bench_environment(tag)
    settings = load_settings(environ=env)
    kafka = {"bootstrap.servers": settings.kafka.bootstrap_servers}
    admin = AdminClient(kafka)
    remove_leftovers(admin)
    create_topics(admin, settings)
    sink = RedisSink(open_redis(settings.redis), RedisKeys(settings.redis.prefix))
    reader = Consumer(kafka | READER_CONFIG | {"group.id": f"{PREFIX}{tag}-reader"})
    watcher = Consumer(kafka | READER_CONFIG | {"group.id": f"{PREFIX}{tag}-watcher"})
    producer = Producer(kafka | {"linger.ms": 5})
    worker_rss: list[int] = []
    try:
        with worker_pool(workers, env, tag, worker_rss), open_driver(settings.neo4j) as driver:
            wait_until_assigned(admin, settings, workers)
            started = time.perf_counter()
            plan = plan_run(driver, reader, settings, run_id=run_id, as_of=as_of,
                            batch_size=settings.extraction.batch_size)
            for key, value in request_messages(driver, settings, plan.to_dict()):
                producer.produce(settings.kafka.topics.requests, key=key, value=value)
            producer.flush(30)
            published = time.perf_counter()
            wait_for_batches(watcher, settings.kafka.topics.results, plan)
            computed = time.perf_counter()
            clock = PhaseClock()
            with clock.patch(AGGREGATE_PHASES):
                summary = clock.wrap("aggregate: kafka", aggregate_run)(reader, sink, settings, plan.to_dict())
            written = time.perf_counter()
            report = finish_run(settings, sink, plan.to_dict(), [asdict(summary)], mode="bench")
            verified = time.perf_counter()
    finally:
        reader.close()
        watcher.close()
        for future in admin.delete_topics(list(topic_partitions(settings.kafka)), operation_timeout=30).values():
            future.exception()
    if not report.ok:
        raise BenchError(str(report))
    phases = {"plan + publish": published - started, "workers": computed - published, **clock.seconds}
    return Measurement(written - started, summary.accounts, summary.transfers, phases, verified - written,
                       worker_rss)
