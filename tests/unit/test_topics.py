"""``ensure_topics``, the one rule for fx's topics (create, grow, warn of fewer replicas), and
``end_offsets`` asking again while a new topic's metadata settles; on stand-in Kafka clients."""

from __future__ import annotations

import logging
from concurrent.futures import Future
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from fx_workers.config import load_settings
from fx_workers.steps.topics import PipelineError, end_offsets, ensure_topics

if TYPE_CHECKING:
    from fx_workers.config import Settings


def described(partitions: int, replicas: int = 1) -> SimpleNamespace:
    return SimpleNamespace(error=None, partitions={p: SimpleNamespace(replicas=list(range(replicas)), isrs=[])
                                                   for p in range(partitions)})


def done(error: KafkaError | None = None) -> Future[None]:
    future: Future[None] = Future()
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(KafkaException(error))
    return future


class FakeAdmin:
    """An admin client over fixed metadata that records what it is asked to create and grow."""

    def __init__(self, brokers: int, topics: dict[str, SimpleNamespace], refuse: KafkaError | None = None) -> None:
        self.metadata = SimpleNamespace(brokers=dict.fromkeys(range(brokers)), topics=topics)
        self.created: dict[str, tuple[int, int]] = {}
        self.grown: dict[str, int] = {}
        self.refuse = refuse

    def list_topics(self, timeout: float) -> SimpleNamespace:
        return self.metadata

    def create_topics(self, topics: list[Any], operation_timeout: float) -> dict[str, Future[None]]:
        self.created.update({t.topic: (t.num_partitions, t.replication_factor) for t in topics})
        return {t.topic: done(self.refuse) for t in topics}

    def create_partitions(self, grow: list[Any], operation_timeout: float) -> dict[str, Future[None]]:
        self.grown.update({g.topic: g.new_total_count for g in grow})
        return {g.topic: done() for g in grow}


def three_brokers() -> Settings:
    return load_settings(environ={"FX__STACK__KAFKA_BROKERS": "3",
                                  "FX__KAFKA__BOOTSTRAP_SERVERS": "127.0.0.1:9092,127.0.0.1:9094,127.0.0.1:9096"})


def test_missing_topics_are_created_and_too_few_partitions_grown() -> None:
    settings = load_settings(environ={})
    names = settings.kafka.topics
    admin = FakeAdmin(1, {names.requests: described(2), names.dead_letter: described(3)})
    assert ensure_topics(admin, settings) == sorted([names.requests, names.results])
    assert admin.created == {names.results: (4, -1)}  # the brokers' default replication factor
    assert admin.grown == {names.requests: 4}  # and a topic with more partitions than configured is left alone


def test_an_existing_topic_with_fewer_replicas_is_kept_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    """Kafka keeps a topic's replication factor: topics made with one broker stay single copies with three."""
    settings = three_brokers()
    names = settings.kafka.topics
    admin = FakeAdmin(3, {names.requests: described(4, 1), names.results: described(4, 3),
                          names.dead_letter: described(1, 3)})
    with caplog.at_level(logging.WARNING):
        assert ensure_topics(admin, settings) == []
    assert [record.getMessage() for record in caplog.records] == [
        f"topic {names.requests} has replication factor 1, config wants 3 (stack.kafka_brokers): Kafka keeps a "
        "topic's replication factor as it was created: raise it with kafka-reassign-partitions.sh, or delete the "
        "topic (`make clean-stack` on the local stack), then `make up`"]


def test_topics_wait_for_every_broker_and_a_topic_made_meanwhile_is_fine() -> None:
    settings = three_brokers()
    with pytest.raises(PipelineError, match="1 of 3 brokers registered"):
        ensure_topics(FakeAdmin(1, {}), settings)
    raced = FakeAdmin(3, {}, refuse=KafkaError(KafkaError.TOPIC_ALREADY_EXISTS))
    assert ensure_topics(raced, settings) == []
    refused = FakeAdmin(3, {}, refuse=KafkaError(KafkaError.INVALID_REPLICATION_FACTOR, "not enough brokers"))
    with pytest.raises(PipelineError, match="not enough brokers"):
        ensure_topics(refused, settings)


class SettlingConsumer:
    """A consumer whose watermark requests fail with ``errors`` first, then answer 7 for partition 0."""

    def __init__(self, *errors: int) -> None:
        self.errors = list(errors)
        self.asked = 0

    def list_topics(self, topic: str, timeout: float) -> SimpleNamespace:
        return SimpleNamespace(topics={topic: described(1)})

    def get_watermark_offsets(self, partition: Any, timeout: float, cached: bool) -> tuple[int, int]:
        self.asked += 1
        if self.errors:
            raise KafkaException(KafkaError(self.errors.pop(0)))
        return 0, 7


def test_end_offsets_ask_again_while_a_new_topics_leaders_settle() -> None:
    consumer = SettlingConsumer(KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE)
    assert end_offsets(consumer, "t", settle_seconds=10) == {0: 7}
    assert consumer.asked == 3


def test_end_offsets_give_up_after_their_budget_and_at_once_on_other_errors() -> None:
    stuck = SettlingConsumer(*[KafkaError.NOT_LEADER_FOR_PARTITION] * 1000)
    with pytest.raises(PipelineError, match="topic t: Broker: Not leader for partition"):
        end_offsets(stuck, "t", settle_seconds=0)
    assert stuck.asked == 1
    denied = SettlingConsumer(KafkaError.TOPIC_AUTHORIZATION_FAILED)
    with pytest.raises(PipelineError, match="topic t: Broker: Topic authorization failed"):
        end_offsets(denied, "t", settle_seconds=10)
    assert denied.asked == 1
