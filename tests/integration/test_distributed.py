"""The worker loop in-process against the real stack: a whole run, redelivery, and requests that must
not be computed (malformed, of an unknown run, of another plan, of an older catalogue)."""

from __future__ import annotations

import json
import random
from typing import TYPE_CHECKING

from confluent_kafka import Consumer, Producer, TopicPartition

from fx_workers.engine.catalogue import SCHEMA_VERSION
from fx_workers.engine.graph import open_driver
from fx_workers.protocol import (
    HEADER_KIND,
    READER_CONFIG,
    BatchStatus,
    CompletionSignal,
    DeadLetter,
    ExtractionRequest,
    header_value,
)
from fx_workers.steps.aggregate import aggregate_run
from fx_workers.steps.plan import Plan, make_plan, request_messages
from fx_workers.steps.promote import conclude
from fx_workers.steps.topics import end_offsets
from fx_workers.steps.verify import verify_run
from fx_workers.store.plan_store import PlanStore
from fx_workers.worker import Worker
from ops.fixtures import AS_OF, Slice

if TYPE_CHECKING:
    import redis
    from confluent_kafka import Message
    from neo4j import Driver

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


def plan_and_publish(piece: Slice, client: redis.Redis, copies: int = 1) -> Plan:
    """Plan a run and produce its requests ``copies`` times (a redelivery, as after a lost commit)."""
    settings = piece.settings
    consumer = reader(piece)
    with open_driver(settings.neo4j) as driver:
        plan, _ = make_plan(driver, client, settings, as_of=AS_OF, batch_size=100, mode="airflow",
                            partitions=settings.kafka.partitions.requests,
                            start_offsets=end_offsets(consumer, settings.kafka.topics.results))
    consumer.close()
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})
    for _ in range(copies):
        for key, value in request_messages(client, settings, plan.to_dict()):
            producer.produce(settings.kafka.topics.requests, key=key, value=value)
    assert producer.flush(30) == 0
    return plan


def finish(piece: Slice, client: redis.Redis, plan: Plan) -> dict:
    summary = aggregate_run(reader(piece), client, piece.settings, plan.to_dict())
    report = verify_run(piece.settings, client, plan.run_id, batches=plan.batches)
    conclude(piece.settings, client, report)
    assert report.ok, str(report)
    return summary


def test_worker_loop_matches_local_run_and_a_redelivered_batch_changes_nothing(
        piece: Slice, redis_client: redis.Redis, neo4j_driver: Driver) -> None:
    expected = piece.local_snapshot(redis_client)
    plan = plan_and_publish(piece, redis_client, copies=3)  # every request delivered three times
    graph = piece.settings.graph  # the graph lives on: an account arrives after the plan, and changes nothing
    neo4j_driver.execute_query(f"CREATE (:{graph.account_label} {{{graph.id_property}: 'arrived-late'}})",
                               database_=piece.settings.neo4j.database)

    worker = Worker(piece.settings, WORKER_ID, max_messages=3 * plan.batches)
    worker.run()
    assert (worker.stats.batches, worker.stats.failed) == (3 * plan.batches, 0)

    summary = finish(piece, redis_client, plan)
    assert (summary["batches_counted"], summary["duplicates"]) == (plan.batches, 2 * plan.batches)
    assert piece.registry(redis_client).latest() == plan.run_id
    assert piece.snapshot(redis_client) == expected


def test_requests_that_must_not_be_computed_go_to_the_dead_letter_topic(piece: Slice,
                                                                       redis_client: redis.Redis) -> None:
    settings = piece.settings
    topics = settings.kafka.topics
    plan = plan_and_publish(piece, redis_client, copies=0)
    batches = dict(PlanStore(redis_client, piece.keys, plan.run_id).batches(plan.batches))
    valid = ExtractionRequest(run_id=plan.run_id, plan=plan.fingerprint, batch_id=0, batches=plan.batches,
                              as_of=AS_OF, schema_version=SCHEMA_VERSION, ids=batches[0])
    unknown_run = valid.model_copy(update={"run_id": "00000000"})
    other_plan = valid.model_copy(update={"plan": "fedcba9876543210"})
    forged_ids = valid.model_copy(update={"ids": ["A000001", "x') DETACH DELETE n //"]})
    stale_schema = valid.model_copy(update={"schema_version": "old", "batch_id": 1, "ids": batches[1]})
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})
    for key, value in ((b"junk", b"\x00 not a request"), (b"unknown", unknown_run.encode()),
                       (b"other", other_plan.encode()), (b"forged", forged_ids.encode()),
                       (b"stale", stale_schema.encode()), (b"ok", valid.encode())):
        producer.produce(topics.requests, key=key, value=value)
    assert producer.flush(30) == 0

    worker = Worker(settings, WORKER_ID, max_messages=6)
    worker.run()
    assert (worker.stats.dead_letters, worker.stats.failed, worker.stats.batches) == (5, 1, 1)

    letters = [DeadLetter.decode(m.value()) for m in read_topic(piece, topics.dead_letter)]
    reasons = {original: letter.reason for letter, original in letters}
    assert "invalid ExtractionRequest" in reasons[b"\x00 not a request"]
    assert "run 00000000 does not exist" in reasons[unknown_run.encode()]
    assert "a stale or forged request" in reasons[other_plan.encode()]
    assert "differ from the run's stored plan" in reasons[forged_ids.encode()]
    assert "schema_version must be" in reasons[stale_schema.encode()]
    assert all(letter.topic == topics.requests and letter.worker_id == WORKER_ID for letter, _ in letters)

    signals = [CompletionSignal.decode(m.value()) for m in read_topic(piece, topics.results)
               if header_value(m.headers(), HEADER_KIND) == "completion"]
    outcomes = {(s.batch_id, s.status, s.accounts) for s in signals if s.run_id == plan.run_id}
    assert outcomes == {(0, BatchStatus.OK, len(batches[0])), (1, BatchStatus.FAILED, 0)}
    assert not list(redis_client.scan_iter(piece.keys.of_run("00000000").pattern))


def hostile_requests(plan: Plan, count: int, seed: int) -> list[bytes]:
    """Malformed, oversized, mistyped and forged requests, ``count`` of them, reproducible by ``seed``."""
    rng = random.Random(seed)
    valid = json.loads(ExtractionRequest(run_id=plan.run_id, plan=plan.fingerprint, batch_id=0, batches=plan.batches,
                                         as_of=AS_OF, schema_version=SCHEMA_VERSION, ids=["A000001"]).encode())
    cypher = ["x' }) DETACH DELETE n //", 'a"b', "{x}", "\\u0000", "MATCH (n) DETACH DELETE n", "ü:é", "*"]
    makers = [
        lambda: rng.randbytes(rng.randint(0, 3000)),
        lambda: json.dumps(valid).encode()[: rng.randint(0, 120)],
        lambda: json.dumps(valid | {"v": rng.choice([0, 1, 3, "2", None])}).encode(),
        lambda: json.dumps(valid | {rng.choice(["extra", "priority", "__proto__"]): 1}).encode(),
        lambda: json.dumps(valid | {"batches": rng.choice([-1, 0, 10**18, 2**63])}).encode(),
        lambda: json.dumps(valid | {"batch_id": rng.choice([-5, 10**12, 1.5, "0"])}).encode(),
        lambda: json.dumps(valid | {"ids": [f"A{i}" for i in range(50_001)]}).encode(),
        lambda: json.dumps(valid | {"ids": ["x" * 5000]}).encode(),
        lambda: json.dumps(valid | {"ids": rng.sample(cypher, 3)}).encode(),  # the live run's plan, forged ids
        lambda: json.dumps(valid | {"run_id": rng.choice(["nope", "' OR 1=1", "deadbeef"])}).encode(),
        lambda: json.dumps(valid | {"plan": f"{rng.getrandbits(64):016x}"}).encode(),
        lambda: json.dumps(valid | {"schema_version": rng.choice(["", "old", "🙂" * 40])}).encode(),
        lambda: json.dumps([valid] * 3).encode(),
        lambda: b'{"v": 2, "ids": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    ]
    return [rng.choice(makers)() for _ in range(count)]


def test_a_thousand_hostile_requests_crash_nothing_and_the_run_beside_them_is_right(
        piece: Slice, redis_client: redis.Redis, neo4j_driver: Driver) -> None:
    settings, topics = piece.settings, piece.settings.kafka.topics
    graph = settings.graph
    count_query = f"MATCH (a:{graph.account_label}) OPTIONAL MATCH (a)-[t:{graph.transfer_type}]->() " \
                  "RETURN count(DISTINCT a) AS accounts, count(t) AS transfers"
    before = neo4j_driver.execute_query(count_query, database_=settings.neo4j.database).records[0].data()
    expected = piece.local_snapshot(redis_client)
    letters_before = len(read_topic(piece, topics.dead_letter))
    plan = plan_and_publish(piece, redis_client, copies=0)
    seed = random.randrange(2**32)
    print(f"hostile requests seed={seed}")
    hostile = hostile_requests(plan, 1000, seed)
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers, "message.max.bytes": 1_000_000})
    real = list(request_messages(redis_client, settings, plan.to_dict()))
    for i, value in enumerate(hostile):
        producer.produce(topics.requests, key=str(i).encode(), value=value)
        if i == len(hostile) // 2:
            for key, request in real:
                producer.produce(topics.requests, key=key, value=request)
    forged = CompletionSignal(run_id=plan.run_id, plan=f"{1:016x}", batch_id=0, status=BatchStatus.FAILED, error="x")
    producer.produce(topics.results, key=b"forged", value=forged.encode(), headers=forged.headers())
    producer.produce(topics.results, key=b"junk", value=b"\x00junk", headers=[(HEADER_KIND, b"completion")])
    assert producer.flush(60) == 0

    worker = Worker(settings, WORKER_ID, max_messages=len(hostile) + len(real))
    worker.run()  # raises if any message crashed the loop
    assert (worker.stats.batches, worker.stats.dead_letters) == (plan.batches, len(hostile)), f"seed={seed}"
    assert len(read_topic(piece, topics.dead_letter)) - letters_before == len(hostile)

    finish(piece, redis_client, plan)
    assert piece.snapshot(redis_client) == expected
    after = neo4j_driver.execute_query(count_query, database_=settings.neo4j.database).records[0].data()
    assert after == before


def test_a_run_of_another_catalogue_is_refused_by_name_and_nothing_is_written(piece: Slice,
                                                                             redis_client: redis.Redis) -> None:
    """A run planned without the pattern family (``extraction.patterns: false``) reaches workers that compute
    it: every batch fails, naming both schema versions, and the run's namespace holds no feature record."""
    from fx_workers.config import load_settings
    from fx_workers.engine.catalogue import WITHOUT_PATTERNS

    without = Slice(load_settings(environ={**piece.env, "FX__EXTRACTION__PATTERNS": "false"}), piece.env)
    plan = plan_and_publish(without, redis_client)
    assert plan.schema_version == WITHOUT_PATTERNS.schema_version != SCHEMA_VERSION

    worker = Worker(piece.settings, WORKER_ID, max_messages=plan.batches)
    worker.run()
    assert (worker.stats.batches, worker.stats.failed) == (0, plan.batches)
    since_plan = [m for m in read_topic(piece, piece.settings.kafka.topics.results)
                  if m.offset() >= plan.start_offsets[str(m.partition())]]  # not the other tests' junk
    signals = [CompletionSignal.decode(m.value()) for m in since_plan
               if header_value(m.headers(), HEADER_KIND) == "completion"]
    errors = {s.batch_id: s.error for s in signals if s.run_id == plan.run_id}
    assert sorted(errors) == list(range(plan.batches))
    assert all(SCHEMA_VERSION in error and WITHOUT_PATTERNS.schema_version in error for error in errors.values())
    namespace = piece.keys.of_run(plan.run_id)
    assert not [k for k in redis_client.scan_iter(namespace.pattern) if b":plan:" not in k]
