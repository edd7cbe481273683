"""The worker without a broker, Neo4j or Redis: the job with a fake graph and sink, the loop with a fake
transport (commits in order, a read ahead rewound with its batch), the retry budget and the Kafka rules."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import redis

from fx_workers.config import load_settings
from fx_workers.engine.stats import part_stats
from fx_workers.protocol import BatchStatus, CompletionSignal, ExtractionRequest
from fx_workers.worker import Worker
from fx_workers.worker.health import MAX_POLL_INTERVAL_SECONDS, QUIET_POLL_SECONDS, is_alive
from fx_workers.worker.job import Outcome, handle, is_transient, retry_delays
from fx_workers.worker.reads import ReadAhead
from fx_workers.worker.transport import DeliveryError, consumer_config, is_fatal, log_assignment

if TYPE_CHECKING:
    from collections.abc import Callable

SCHEMA = "s1"


def request(batch_id: int, run_id: str = "run1", schema: str = SCHEMA) -> ExtractionRequest:
    return ExtractionRequest(run_id=run_id, plan="0123456789abcdef", batch_id=batch_id, batches=100, as_of=1,
                             schema_version=schema, ids=[f"A{batch_id}", f"B{batch_id}"])


class FakeGraph:
    """Features of one column per account; ``failures`` are raised first, one per read; a read takes ``delay``
    seconds."""

    schema_version = SCHEMA

    def __init__(self, *failures: Exception, delay: float = 0.0) -> None:
        self.failures = list(failures)
        self.delay = delay
        self.reads: list[tuple[int, str]] = []
        self.read_started = {i: threading.Event() for i in range(10)}
        self.read_ended = {i: threading.Event() for i in range(10)}

    def read(self, req: ExtractionRequest) -> Any:
        self.reads.append((req.batch_id, threading.current_thread().name))
        self.read_started[req.batch_id].set()
        time.sleep(self.delay)
        self.read_ended[req.batch_id].set()
        if self.failures:
            raise self.failures.pop(0)
        return SimpleNamespace(node_ids=np.array(req.ids), node_values=np.ones((len(req.ids), 1)),
                               tx_ids=np.array([], dtype=str), edge_values=np.zeros((0, 1)))


class FakeSink:
    """Refuses by ``refuse`` (which may raise); ``write`` records the batch after ``before_write`` returns."""

    def __init__(self, refuse: Callable[[ExtractionRequest], str | None] = lambda req: None,
                 before_write: Callable[[ExtractionRequest], None] = lambda req: None) -> None:
        self.refuse = refuse
        self.before_write = before_write
        self.written: list[int] = []

    def refusal(self, req: ExtractionRequest) -> str | None:
        return self.refuse(req)

    def write(self, req: ExtractionRequest, features: Any, *, attempt: int = 1, worker_id: str = "",
              timings_ms: dict[str, float] | None = None) -> CompletionSignal:
        self.before_write(req)
        self.written.append(req.batch_id)
        return CompletionSignal(run_id=req.run_id, plan=req.plan, batch_id=req.batch_id, status=BatchStatus.OK,
                                attempt=attempt, worker_id=worker_id, accounts=len(features.node_ids),
                                checksum="0" * 32, nodes=part_stats(features.node_values),
                                edges=part_stats(features.edge_values),
                                timings_ms={**(timings_ms or {}), "write": 0.0, "stats": 0.0})


class Message:
    def __init__(self, value: bytes | None, offset: int) -> None:
        self._value, self._offset = value, offset

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes:
        return b"k"

    def topic(self) -> str:
        return "feature-extraction"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


class FakeTransport:
    """One partition: polls in offset order, rewinds by seeking back; ``fail_send`` raises on sends."""

    def __init__(self, values: list[bytes | None], fail_send: Any = None) -> None:
        self.log = [Message(value, offset) for offset, value in enumerate(values)]
        self.position = 0
        self.fail_send = fail_send
        self.sent: list[tuple[str, bytes]] = []
        self.committed: list[int] = []
        self.rewound: list[list[int]] = []

    def poll(self, timeout: float) -> Message | None:
        if self.position >= len(self.log):
            return None
        self.position += 1
        return self.log[self.position - 1]

    def send(self, messages: list, run_id: str | None = None) -> None:
        if self.fail_send is not None:
            self.fail_send()
        self.sent += [(topic, value) for topic, _key, value, _headers in messages]

    def commit(self, message: Message) -> None:
        assert message.offset() == (self.committed[-1] + 1 if self.committed else 0), "commits out of order"
        self.committed.append(message.offset())

    def rewind(self, *messages: Message) -> None:
        self.rewound.append([m.offset() for m in messages])
        self.position = min(m.offset() for m in messages)

    def signal(self, signal: CompletionSignal) -> tuple:
        return "results", None, signal.encode(), []

    def dead_letter(self, message: Message, reason: str, req: ExtractionRequest | None = None) -> tuple:
        return "dlq", message.key(), reason.encode(), []


def handled(req: ExtractionRequest, graph: FakeGraph, sink: FakeSink, **kwargs: Any) -> Outcome:
    """:func:`handle` with ``graph`` read (and timed) on a read thread, as the worker reads."""
    reads = ReadAhead(graph)
    try:
        return handle(req, reads, sink, **kwargs)
    finally:
        reads.close()


def consume(transport: FakeTransport, graph: FakeGraph, sink: FakeSink, **kwargs: Any) -> Worker:
    worker = Worker(load_settings(), "w", **kwargs)
    reads = ReadAhead(graph)
    try:
        worker.consume(transport, reads, sink)  # type: ignore[arg-type]
    finally:
        reads.close()
    return worker


def test_retry_delays_double_up_to_the_cap_within_the_budget() -> None:
    assert list(retry_delays(1, 0)) == []
    assert list(retry_delays(1, 10)) == [1, 2, 4]
    delays = list(retry_delays(1, 180))
    assert delays[:5] == [1, 2, 4, 8, 15] and set(delays[4:]) == {15} and sum(delays) <= 180
    assert sum(delays) > 180 - 15  # the budget is used: a service restart of a minute or two is outlasted


def test_transient_errors_are_service_outages() -> None:
    from neo4j.exceptions import ServiceUnavailable

    assert is_transient(ServiceUnavailable("neo4j restarting"))
    assert is_transient(redis.ConnectionError("refused")) and is_transient(redis.BusyLoadingError("loading"))
    assert is_transient(DeliveryError("not acknowledged"))
    assert not is_transient(ValueError("a bug")) and not is_transient(KeyError("x"))


def test_health_goes_stale_when_the_loop_stops_polling() -> None:
    assert is_alive(0, None) and not is_alive(QUIET_POLL_SECONDS, None)
    assert is_alive(QUIET_POLL_SECONDS, "run/3")  # a long batch is still progress
    assert not is_alive(MAX_POLL_INTERVAL_SECONDS, "run/3")


def test_a_batch_is_read_written_and_proved() -> None:
    sink = FakeSink()
    outcome = handled(request(3), FakeGraph(), sink, worker_id="w")
    assert outcome.dead_letter is None and sink.written == [3]
    assert outcome.signal is not None
    assert (outcome.signal.status, outcome.signal.accounts, outcome.signal.attempt) == (BatchStatus.OK, 2, 1)
    assert outcome.signal.worker_id == "w" and {"extract", "extract_wait"} <= outcome.signal.timings_ms.keys()


def test_a_batch_read_ahead_is_timed_by_its_read_not_by_the_wait_for_it() -> None:
    """``extract`` is the read's own time, on the read thread; ``extract_wait`` the job's wait for it, which is
    about nothing for a batch read while another was written (the bench and the capacity model tell them
    apart: the reads' sum, and the loop's time)."""
    graph = FakeGraph(delay=0.3)
    reads = ReadAhead(graph)
    try:
        ahead = reads.start(request(1))
        assert graph.read_ended[1].wait(30)
        time.sleep(0.05)  # the read thread hands the result over
        timings = handle(request(1), ahead, FakeSink()).signal.timings_ms  # type: ignore[union-attr]
        assert timings["extract"] >= 300 and timings["extract_wait"] < 150

        timings = handle(request(2), reads, FakeSink()).signal.timings_ms  # type: ignore[union-attr]
        assert timings["extract_wait"] >= timings["extract"] >= 300  # not read ahead: the wait is the read
    finally:
        reads.close()


@pytest.mark.parametrize(("refusal", "expected"), [("forged", Outcome(dead_letter="forged")), ("", Outcome())])
def test_a_refused_request_is_neither_read_nor_written(refusal: str, expected: Outcome) -> None:
    graph, sink = FakeGraph(), FakeSink(lambda req: refusal)
    assert handled(request(0), graph, sink) == expected
    assert graph.reads == [] and sink.written == []


def test_a_request_of_another_catalogue_fails_by_name_without_a_read() -> None:
    graph = FakeGraph()
    outcome = handled(request(0, schema="old"), graph, FakeSink())
    assert outcome.signal is not None and outcome.signal.status is BatchStatus.FAILED
    assert outcome.dead_letter == outcome.signal.error == "schema_version must be s1 (this worker's catalogue). Got old"
    assert graph.reads == []


def test_an_outage_is_retried_after_each_delay_and_fails_transient_when_they_run_out() -> None:
    paused: list[float] = []
    outcome = handled(request(0), FakeGraph(redis.ConnectionError("down")), FakeSink(), delays=[1.0, 2.0],
                     pause=paused.append)
    assert outcome.signal is not None and (outcome.signal.status, outcome.signal.attempt) == (BatchStatus.OK, 2)
    assert paused == [1.0]

    outcome = handled(request(0), FakeGraph(*[redis.ConnectionError("down")] * 3), FakeSink(), delays=[1.0, 2.0],
                     pause=paused.append)
    assert outcome.signal is not None and outcome.signal.status is BatchStatus.FAILED and outcome.signal.transient
    assert outcome.signal.attempt == 3 and paused == [1.0, 1.0, 2.0]
    assert "ConnectionError: down (attempt 3)" in (outcome.dead_letter or "")


def test_a_bug_fails_the_batch_at_once() -> None:
    paused: list[float] = []
    outcome = handled(request(0), FakeGraph(ValueError("a bug")), FakeSink(), delays=[1.0], pause=paused.append)
    assert outcome.signal is not None and outcome.signal.status is BatchStatus.FAILED
    assert not outcome.signal.transient and paused == []


@pytest.mark.parametrize("value", [None, b"", b"\xff" * 10, b"{" * 100_000, b'{"v": 2, "kind": "request"}'])
def test_a_message_that_cannot_be_handled_is_dead_lettered_and_committed(value: bytes | None) -> None:
    transport = FakeTransport([value])
    worker = consume(transport, FakeGraph(), FakeSink(), max_messages=1)
    assert [topic for topic, _ in transport.sent] == ["dlq"] and transport.committed == [0]
    assert worker.stats.dead_letters == 1


def test_an_unexpected_error_is_dead_lettered_and_an_outage_is_read_again() -> None:
    def bug(req: ExtractionRequest) -> None:
        raise RuntimeError("a bug")

    transport = FakeTransport([request(0).encode()])
    consume(transport, FakeGraph(), FakeSink(bug), max_messages=1)
    assert transport.sent == [("dlq", b"unexpected error: RuntimeError: a bug")] and transport.committed == [0]

    worker = Worker(load_settings(), "w")

    def outage(req: ExtractionRequest) -> None:
        worker.stop()  # no pause in the test: the loop ends after the rewind
        raise redis.ConnectionError("redis restarting")

    transport = FakeTransport([request(0).encode()])
    reads = ReadAhead(FakeGraph())
    worker.consume(transport, reads, FakeSink(outage))  # type: ignore[arg-type]
    reads.close()
    assert transport.sent == [] and transport.committed == [] and transport.rewound == [[0]]


def test_the_next_batch_is_read_while_this_one_is_written_and_committed_after_it() -> None:
    graph = FakeGraph()

    def wait_for_the_next_read(req: ExtractionRequest) -> None:
        if req.batch_id == 1:  # the first batch of the run is read alone; from then on one is read ahead
            assert graph.read_started[2].wait(30), "batch 2 was not read while batch 1 was written"

    transport = FakeTransport([request(i).encode() for i in range(4)])
    worker = consume(transport, graph, FakeSink(before_write=wait_for_the_next_read), max_messages=4)
    assert [batch for batch, _ in graph.reads] == [0, 1, 2, 3]
    assert {thread for _, thread in graph.reads} == {"fx-read_0"}  # one thread: the run's window is not shared
    assert transport.committed == [0, 1, 2, 3] and worker.stats.batches == 4


def test_a_batch_not_delivered_is_read_again_with_the_one_read_ahead_and_neither_is_committed() -> None:
    graph = FakeGraph()
    worker = Worker(load_settings(), "w")

    def broker_down_at_batch_1() -> None:
        if len(transport.committed) == 1:
            worker.stop()  # no pause in the test: the loop ends after the rewind
            raise DeliveryError("not acknowledged")

    transport = FakeTransport([request(i).encode() for i in range(4)], fail_send=broker_down_at_batch_1)
    reads = ReadAhead(graph)
    worker.consume(transport, reads, FakeSink())  # type: ignore[arg-type]
    reads.close()
    assert transport.committed == [0] and transport.rewound == [[1, 2]]
    assert transport.position == 1  # batch 1 is read next, then batch 2


def test_no_more_than_max_messages_are_taken() -> None:
    transport = FakeTransport([request(i).encode() for i in range(5)])
    consume(transport, FakeGraph(), FakeSink(), max_messages=2)
    assert transport.committed == [0, 1] and transport.position == 2


def test_a_request_of_another_run_is_not_read_ahead() -> None:
    graph = FakeGraph()
    messages = [request(0).encode(), request(1).encode(), request(2, run_id="stale").encode(), request(3).encode()]
    sink = FakeSink(lambda req: "no such run" if req.run_id == "stale" else None)
    transport = FakeTransport(messages)
    consume(transport, graph, sink, max_messages=4)
    assert [batch for batch, _ in graph.reads] == [0, 1, 3] and transport.committed == [0, 1, 2, 3]


def test_a_fenced_static_member_is_fatal() -> None:
    from confluent_kafka import KafkaError

    assert is_fatal(KafkaError(KafkaError._FATAL, "Fatal error: Static consumer fenced"))
    assert is_fatal(KafkaError(KafkaError.FENCED_INSTANCE_ID, "Commit failed"))
    assert is_fatal(KafkaError(KafkaError.UNKNOWN, "x", fatal=True))
    assert not is_fatal(KafkaError(KafkaError._TRANSPORT, "broker down"))


def test_a_worker_without_a_partition_warns_that_it_sits_idle(caplog: pytest.LogCaptureFixture) -> None:
    from confluent_kafka import TopicPartition

    with caplog.at_level("INFO", logger="fx_workers.worker.transport"):
        log_assignment(load_settings(), "w", [TopicPartition("feature-extraction", 1)])
        log_assignment(load_settings(), "w", [])
    first, second = caplog.records
    assert (first.levelname, first.getMessage()) == ("INFO", "worker w assigned partitions [1]")
    assert second.levelname == "WARNING"
    assert "worker w was assigned no partition of feature-extraction" in second.getMessage()
    assert "more workers than its 4 partitions (kafka.partitions.requests)" in second.getMessage()


def test_a_static_member_outlasts_a_broker_restart() -> None:
    """With 10 s librdkafka gave its membership up during a broker restart (15-40 s on the stack) and the
    next commit was fenced (FENCED_INSTANCE_ID), so both workers rebuilt their consumers every time."""
    config = consumer_config(load_settings(), "7")
    assert config["group.instance.id"] == "fx-worker-7" and config["enable.auto.commit"] is False
    assert config["session.timeout.ms"] == 45_000  # Kafka's default; a broker's group.max.session.timeout.ms is 30 min


def test_closing_the_reads_waits_for_the_one_running() -> None:
    """The worker closes the Neo4j driver right after the reads: a read still running then would fail
    inside the driver (``BufferError``), so close waits for it, and drops the reads not begun."""
    started, release = threading.Event(), threading.Event()
    finished = []

    class SlowGraph:
        schema_version = "v"

        def read(self, request: Any) -> Any:
            started.set()
            release.wait(10)
            finished.append(request)
            return request

    reads = ReadAhead(SlowGraph())
    reads.start("running")
    reads.start("queued")
    assert started.wait(10)
    threading.Timer(0.2, release.set).start()
    reads.close()
    assert finished == ["running"]
