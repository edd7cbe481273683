"""The worker loop in-process against the real stack: a whole run, and a malformed request."""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING

from confluent_kafka import Consumer, Producer, TopicPartition

from fx_workers.engine.features import SCHEMA_VERSION
from fx_workers.engine.graph import open_driver
from fx_workers.messages import HEADER_KIND, CompletionSignal, DeadLetter, ExtractionRequest, header_value
from fx_workers.pipeline import READER_CONFIG, aggregate_run, end_offsets, finish_run, plan_run, request_messages
from fx_workers.sink import RedisSink
from fx_workers.store.keys import RedisKeys
from fx_workers.worker import Worker
from tests.integration.pipeline_env import AS_OF, Slice

if TYPE_CHECKING:

    import redis
    from confluent_kafka import Message

WORKER_ID = "in-process"
"""One id for every in-process worker here: the next one takes over the static membership at once."""


def reader(piece: Slice) -> Consumer:
    return Consumer({"bootstrap.servers": piece.settings.kafka.bootstrap_servers} | READER_CONFIG)


def read_topic(piece: Slice, topic: str) -> list[Message]:
    """Everything currently in ``topic``."""
    consumer = reader(piece)
    end = end_offsets(consumer, topic)
    consumer.assign([TopicPartition(topic, p, 0) for p in end])
    messages: list[Message] = []
    while sum(1 for m in messages if not m.error()) < sum(end.values()):
        messages += consumer.consume(100, timeout=5) or []
    consumer.close()
    return [m for m in messages if not m.error()]


def test_worker_loop_matches_local_run(piece: Slice, redis_client: redis.Redis) -> None:
    expected = piece.local_snapshot(redis_client)
    settings, consumer = piece.settings, reader(piece)
    with open_driver(settings.neo4j) as driver:
        plan = plan_run(driver, consumer, settings, run_id="worker-loop", as_of=AS_OF, batch_size=100).to_dict()
        producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})
        for key, value in request_messages(driver, settings, plan):
            producer.produce(settings.kafka.topics.requests, key=key, value=value)
        assert producer.flush(30) == 0

    worker = Worker(settings, WORKER_ID, max_messages=plan["batches"])
    worker.run()
    assert (worker.stats.batches, worker.stats.failed) == (plan["batches"], 0)

    sink = RedisSink(redis_client, RedisKeys(settings.redis.prefix))
    summary = aggregate_run(consumer, sink, settings, plan)
    assert summary.batch_ids == list(range(plan["batches"]))
    report = finish_run(settings, sink, plan, [asdict(summary)])
    assert report.ok, str(report)
    assert piece.snapshot(redis_client) == expected


def test_bad_requests_go_to_the_dead_letter_topic_and_the_worker_goes_on(piece: Slice) -> None:
    settings = piece.settings
    topics = settings.kafka.topics
    valid = ExtractionRequest(run_id="after-junk", batch_id=0, batches=1, as_of=AS_OF,
                              schema_version=SCHEMA_VERSION, ids=["A000001", "A000002"])
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})
    stale = valid.model_copy(update={"run_id": "stale-schema", "schema_version": "old"})
    producer.produce(topics.requests, key=b"junk", value=b"\x00 not a request")
    producer.produce(topics.requests, key=b"stale", value=stale.encode())
    producer.produce(topics.requests, key=b"valid", value=valid.encode())
    assert producer.flush(30) == 0

    worker = Worker(settings, WORKER_ID, max_messages=3)
    worker.run()
    assert (worker.stats.dead_letters, worker.stats.failed, worker.stats.batches) == (2, 1, 1)

    letters = [DeadLetter.decode(m.value()) for m in read_topic(piece, topics.dead_letter)]
    junk = [letter for letter in letters if letter.original == b"\x00 not a request"]
    assert len(junk) == 1
    assert "invalid ExtractionRequest" in junk[0].reason
    assert (junk[0].topic, junk[0].worker_id) == (topics.requests, WORKER_ID)

    assert [letter.run_id for letter in letters if "schema_version must be" in letter.reason] == ["stale-schema"]

    completions = [CompletionSignal.decode(m.value()) for m in read_topic(piece, topics.results)
                   if header_value(m.headers(), HEADER_KIND) == "completion"]
    outcomes = {(c.run_id, c.status, c.accounts) for c in completions if c.run_id in ("after-junk", "stale-schema")}
    assert outcomes == {("after-junk", "ok", 2), ("stale-schema", "failed", 0)}
