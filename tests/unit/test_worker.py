"""The worker loop's rules without a broker: retry budget, health, and that no message can crash it."""

from __future__ import annotations

import time

import pytest

from fx_workers.config import load_settings
from fx_workers.worker import DeliveryError, Worker, is_transient, retry_delays


def test_retry_delays_double_up_to_the_cap_within_the_budget() -> None:
    assert list(retry_delays(1, 0)) == []
    assert list(retry_delays(1, 10)) == [1, 2, 4]
    delays = list(retry_delays(1, 180))
    assert delays[:5] == [1, 2, 4, 8, 15] and set(delays[4:]) == {15} and sum(delays) <= 180
    assert sum(delays) > 180 - 15  # the budget is used: a service restart of a minute or two is outlasted


def test_transient_errors_are_service_outages() -> None:
    import redis
    from neo4j.exceptions import ServiceUnavailable

    assert is_transient(ServiceUnavailable("neo4j restarting"))
    assert is_transient(redis.ConnectionError("refused")) and is_transient(redis.BusyLoadingError("loading"))
    assert is_transient(DeliveryError("not acknowledged"))
    assert not is_transient(ValueError("a bug")) and not is_transient(KeyError("x"))


def test_health_goes_stale_when_the_loop_stops_polling() -> None:
    worker = Worker(load_settings(), "w")
    assert worker.consuming()
    worker._polled = time.monotonic() - 60
    assert not worker.consuming()
    worker.stats.current = "run/3"  # a long batch is still progress
    assert worker.consuming()


class Message:
    def __init__(self, value: bytes | None) -> None:
        self._value = value

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes:
        return b"k"

    def topic(self) -> str:
        return "feature-extraction"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return 41


@pytest.mark.parametrize("value", [None, b"", b"\xff" * 10, b"{" * 100_000, b'{"v": 2, "kind": "request"}'])
def test_a_message_that_cannot_be_handled_is_dead_lettered_not_raised(value: bytes | None) -> None:
    worker = Worker(load_settings(), "w")
    produced: list = []
    worker._produce = lambda producer, messages, run_id=None: produced.extend(messages)  # type: ignore[method-assign]
    assert worker._process(Message(value), driver=None, redis=None, producer=None)  # type: ignore[arg-type]
    assert [m[0] for m in produced] == ["feature-extraction-dlq"] and worker.stats.dead_letters == 1


def test_an_unexpected_error_is_dead_lettered_and_an_outage_is_read_again() -> None:
    worker = Worker(load_settings(), "w")
    produced: list = []
    worker._produce = lambda producer, messages, run_id=None: produced.extend(messages)  # type: ignore[method-assign]

    def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    worker._handle = broken  # type: ignore[method-assign]
    assert worker._process(Message(b"x"), None, None, None)  # type: ignore[arg-type]
    assert b"unexpected error: RuntimeError: a bug" in produced[0][2]

    def outage(*args: object) -> None:
        import redis

        raise redis.ConnectionError("redis restarting")

    worker._handle = outage  # type: ignore[method-assign]
    worker._stopping.set()  # no pause in the test
    assert not worker._process(Message(b"x"), None, None, None)  # type: ignore[arg-type]
    assert len(produced) == 1


def test_a_fenced_static_member_is_fatal() -> None:
    from confluent_kafka import KafkaError

    from fx_workers.worker import is_fatal

    assert is_fatal(KafkaError(KafkaError._FATAL, "Fatal error: Static consumer fenced"))
    assert is_fatal(KafkaError(KafkaError.FENCED_INSTANCE_ID, "Commit failed"))
    assert is_fatal(KafkaError(KafkaError.UNKNOWN, "x", fatal=True))
    assert not is_fatal(KafkaError(KafkaError._TRANSPORT, "broker down"))


def test_a_worker_without_a_partition_warns_that_it_sits_idle(caplog: pytest.LogCaptureFixture) -> None:
    from confluent_kafka import TopicPartition

    worker = Worker(load_settings(), "w")
    with caplog.at_level("INFO", logger="fx_workers.worker"):
        worker._log_assignment(None, [TopicPartition("feature-extraction", 1)])  # type: ignore[arg-type]
        worker._log_assignment(None, [])  # type: ignore[arg-type]
    first, second = caplog.records
    assert (first.levelname, first.getMessage()) == ("INFO", "worker w assigned partitions [1]")
    assert second.levelname == "WARNING"
    assert "worker w was assigned no partition of feature-extraction" in second.getMessage()
    assert "more workers than its 4 partitions (kafka.partitions.requests)" in second.getMessage()


def test_a_static_member_outlasts_a_broker_restart(monkeypatch: pytest.MonkeyPatch) -> None:
    """With 10 s librdkafka gave its membership up during a broker restart (15-40 s on the stack) and the
    next commit was fenced (FENCED_INSTANCE_ID), so both workers rebuilt their consumers every time."""
    import confluent_kafka

    configs: list[dict] = []

    class Recorder:
        def __init__(self, config: dict) -> None:
            configs.append(config)

        def subscribe(self, topics: list[str], on_assign: object = None) -> None:
            pass

    monkeypatch.setattr(confluent_kafka, "Consumer", Recorder)
    Worker(load_settings(), "7")._consumer()
    [config] = configs
    assert config["group.instance.id"] == "fx-worker-7"
    assert config["session.timeout.ms"] == 45_000  # Kafka's default; a broker's group.max.session.timeout.ms is 30 min
