from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from unittest import mock

import pytest
from airflow.sdk.exceptions import TaskDeferred

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "plugins"))  # as Airflow does for plugins_folder

from fx_airflow.operators import MAX_RESENDS, BatchesFailedError, WaitForBatchesOperator
from fx_airflow.triggers import BatchCompletionTrigger, ledger_event, progress_line

from fx_workers.protocol import HEADER_KIND, BatchStatus, CompletionSignal, PartStats
from fx_workers.store.signals import SignalLedger

PLAN = "0123456789abcdef"
KWARGS: dict = {
    "run_id": "a1b2c3d4",
    "plan": PLAN,
    "topic": "features-computed",
    "start_offsets": {"0": 10, "1": 0},
    "batches": 3,
    "deadline": 1_800_000_000.0,
    "kafka_config_id": "fx_kafka",
    "progress_seconds": 5.0,
    "resent": {},
}


ONE_ROW = PartStats(rows=1, nan=[0], min=[1.0], max=[1.0], sum=[1.0], sumsq=[1.0], hist=[[0, 1]])


def signal(batch_id: int, status: BatchStatus = BatchStatus.OK, run_id: str = KWARGS["run_id"],
           plan: str = PLAN, *, transient: bool = False) -> CompletionSignal:
    if status is BatchStatus.FAILED:
        return CompletionSignal(run_id=run_id, plan=plan, batch_id=batch_id, status=status, error="boom",
                                worker_id="1", transient=transient)
    return CompletionSignal(run_id=run_id, plan=plan, batch_id=batch_id, status=status, worker_id="1", accounts=1,
                            transfers=1, checksum="a" * 32, nodes=ONE_ROW, edges=ONE_ROW)


class FakeMessage:
    def __init__(self, completion: CompletionSignal, kind: str = "completion") -> None:
        self._value = completion.model_dump_json().encode()
        self._headers = [(HEADER_KIND, kind.encode()) if k == HEADER_KIND else (k, v) for k, v in completion.headers()]

    def error(self) -> None:
        return None

    def headers(self) -> list[tuple[str, bytes]]:
        return self._headers

    def value(self) -> bytes:
        return self._value

    def offset(self) -> int:
        return 0

    def partition(self) -> int:
        return 0


class FakeConsumer:
    def __init__(self, messages: list[FakeMessage]) -> None:
        self.messages = messages
        self.assigned: list = []
        self.closed = False

    def assign(self, partitions: list) -> None:
        self.assigned = partitions

    def consume(self, num_messages: int, timeout: float) -> list[FakeMessage]:
        batch, self.messages = self.messages, []
        return batch

    def close(self) -> None:
        self.closed = True


def test_serialize_is_exact() -> None:
    trigger = BatchCompletionTrigger(**KWARGS)
    assert trigger.serialize() == ("fx_airflow.triggers.BatchCompletionTrigger", KWARGS)
    classpath, kwargs = trigger.serialize()
    assert BatchCompletionTrigger(**kwargs).serialize() == (classpath, kwargs)


async def first_event(trigger: BatchCompletionTrigger, consumer: FakeConsumer) -> dict:
    with mock.patch("fx_airflow.triggers.ResultsReaderHook") as hook:
        hook.return_value.get_conn = consumer
        events = trigger.run()
        event = await asyncio.wait_for(anext(events), timeout=10)
    await trigger.cleanup()
    return event.payload


def test_run_counts_distinct_batches_of_its_run() -> None:
    consumer = FakeConsumer([
        FakeMessage(signal(0)), FakeMessage(signal(0)), FakeMessage(signal(1, run_id="other")),
        FakeMessage(signal(1, plan="fedcba9876543210")), FakeMessage(signal(7)),
        FakeMessage(signal(1), kind="dead-letter"), FakeMessage(signal(1)), FakeMessage(signal(2)),
    ])
    payload = asyncio.run(first_event(BatchCompletionTrigger(**KWARGS), consumer))
    assert (payload["status"], payload["done"], payload["total"]) == ("done", 3, 3)
    assert sorted(tp.partition for tp in consumer.assigned) == [0, 1]
    assert consumer.closed


def test_the_event_carries_what_was_counted_for_aggregate() -> None:
    consumer = FakeConsumer([FakeMessage(s) for s in (signal(0), signal(0), signal(1, plan="fedcba9876543210"),
                                                      signal(1), signal(2))])
    payload = asyncio.run(first_event(BatchCompletionTrigger(**KWARGS), consumer))
    ledger = SignalLedger.model_validate(payload["ledger"])
    assert (sorted(ledger.counted), ledger.duplicates, ledger.foreign) == ([0, 1, 2], 1, 1)
    assert ledger.stats["nodes"].rows == 3 and ledger.offsets == {0: 1, 1: 0}


def test_run_fails_fast_on_a_failed_batch() -> None:
    consumer = FakeConsumer([FakeMessage(signal(0)), FakeMessage(signal(1, BatchStatus.FAILED))])
    payload = asyncio.run(first_event(BatchCompletionTrigger(**KWARGS), consumer))
    assert payload["status"] == "failed"
    assert payload["failed"] == {"1": "worker 1: boom"}
    assert "ledger" not in payload  # only a done run's event carries it: it grows with the batches


def test_a_redelivered_batch_that_fails_after_succeeding_does_not_fail_the_run() -> None:
    consumer = FakeConsumer([FakeMessage(signal(0)), FakeMessage(signal(0, BatchStatus.FAILED)),
                             FakeMessage(signal(1)), FakeMessage(signal(2))])
    payload = asyncio.run(first_event(BatchCompletionTrigger(**KWARGS), consumer))
    assert payload["status"] == "done" and payload["failed"] == {}


def test_an_outage_failure_asks_for_the_batch_again() -> None:
    consumer = FakeConsumer([FakeMessage(signal(0)), FakeMessage(signal(1, BatchStatus.FAILED, transient=True)),
                             FakeMessage(signal(2, BatchStatus.FAILED, transient=True))])
    payload = asyncio.run(first_event(BatchCompletionTrigger(**KWARGS), consumer))
    assert (payload["status"], payload["failed"]) == ("retry", {})
    assert payload["retryable"] == {"1": "worker 1: boom", "2": "worker 1: boom"}
    assert (payload["failures"], payload["deadline"]) == ({"1": 1, "2": 1}, KWARGS["deadline"])


def test_failures_already_answered_by_a_resend_do_not_count() -> None:
    """After batch 1 was sent again for its first failure, the trigger re-reads that failure from the
    plan's offsets and goes on; a second outage failure asks again, with the count carried on."""
    answered = [FakeMessage(signal(0)), FakeMessage(signal(1, BatchStatus.FAILED, transient=True))]
    done = asyncio.run(first_event(BatchCompletionTrigger(**KWARGS | {"resent": {"1": 1}}),
                                   FakeConsumer([*answered, FakeMessage(signal(1)), FakeMessage(signal(2))])))
    assert done["status"] == "done"
    again = asyncio.run(first_event(BatchCompletionTrigger(**KWARGS | {"resent": {"1": 1}}), FakeConsumer(
        [*answered, FakeMessage(signal(1, BatchStatus.FAILED, transient=True))])))
    assert (again["status"], again["failures"], again["resent"]) == ("retry", {"1": 2}, {"1": 1})


def test_run_times_out_with_the_missing_batches() -> None:
    consumer = FakeConsumer([FakeMessage(signal(1))])
    payload = asyncio.run(first_event(BatchCompletionTrigger(**KWARGS | {"deadline": 0.0}), consumer))
    assert (payload["status"], payload["missing"], payload["missing_count"]) == ("timeout", [0, 2], 2)


def test_progress_line() -> None:
    ledger = SignalLedger(run_id=KWARGS["run_id"], plan=PLAN, batches=4)
    ledger.add(signal(0))
    assert "batches=1/4 (25%) batches_per_s=0.50 elapsed=2s eta=6s" in progress_line(ledger, 2.0)


def already_there(*signals: CompletionSignal) -> mock._patch:
    """The signals on the results topic when the operator counts them before deferring."""
    consumer = FakeConsumer([FakeMessage(s) for s in signals])
    return mock.patch.object(BatchCompletionTrigger, "_assigned", return_value=consumer)


def test_operator_defers_and_completes() -> None:
    plan = {"run_id": KWARGS["run_id"], "fingerprint": PLAN, "batches": 3, "start_offsets": KWARGS["start_offsets"]}
    operator = WaitForBatchesOperator(task_id="wait", plan=plan, topic="features-computed",
                                      requests_topic="feature-extraction", timeout_minutes=5, poll_seconds=0)
    with mock.patch.object(operator, "defer") as defer, already_there(signal(0), signal(1)):
        operator.execute({})
    trigger = defer.call_args.kwargs["trigger"]
    assert trigger.serialize()[1]["start_offsets"] == KWARGS["start_offsets"]
    assert defer.call_args.kwargs["method_name"] == "execute_complete"

    done = {"status": "done", "run_id": "r", "total": 3, "seconds": 1.0}
    assert operator.execute_complete({}, done) == done
    failed = SignalLedger(run_id=KWARGS["run_id"], plan=PLAN, batches=3)
    failed.add(signal(2, BatchStatus.FAILED))
    with pytest.raises(BatchesFailedError, match="failed batches"):
        operator.execute_complete({}, ledger_event(failed, "failed", 1.0))


def test_operator_does_not_defer_when_every_batch_already_signalled() -> None:
    plan = {"run_id": KWARGS["run_id"], "fingerprint": PLAN, "batches": 3, "start_offsets": KWARGS["start_offsets"]}
    operator = WaitForBatchesOperator(task_id="wait", plan=plan, topic="features-computed",
                                      requests_topic="feature-extraction", timeout_minutes=5)
    with mock.patch.object(operator, "defer") as defer, already_there(signal(0), signal(2), signal(1), signal(0)):
        event = operator.execute({})
    defer.assert_not_called()
    assert (event["status"], event["done"], event["total"]) == ("done", 3, 3)

    with (mock.patch.object(operator, "defer") as defer, already_there(signal(0), signal(1, BatchStatus.FAILED)),
          pytest.raises(BatchesFailedError, match="failed batches")):
        operator.execute({})
    defer.assert_not_called()


def retry_event(failures: int, deadline: float) -> dict:
    ledger = SignalLedger(run_id="r", plan=PLAN, batches=3, resent={1: failures - 1})
    for _ in range(failures):
        ledger.add(CompletionSignal(run_id="r", plan=PLAN, batch_id=1, status=BatchStatus.FAILED, worker_id="1",
                                    error="Neo4j unavailable", transient=True))
    return {**ledger_event(ledger, "retry", 1.0), "deadline": deadline}


def test_operator_sends_outage_failures_again_within_budget_and_deadline() -> None:
    plan = {"run_id": "r", "fingerprint": PLAN, "batches": 3, "start_offsets": KWARGS["start_offsets"]}
    operator = WaitForBatchesOperator(task_id="wait", plan=plan, topic="features-computed",
                                      requests_topic="feature-extraction", timeout_minutes=5, poll_seconds=0)
    deadline = time.time() + 60
    with (mock.patch.object(operator, "defer", side_effect=TaskDeferred(trigger=None, method_name="")) as defer,
          mock.patch.object(operator, "_resend") as resend,
          already_there(signal(1, BatchStatus.FAILED, transient=True)),
          pytest.raises(TaskDeferred)):
        operator.execute_complete({}, retry_event(1, deadline))
    resend.assert_called_once_with([1])
    trigger = defer.call_args.kwargs["trigger"].serialize()[1]
    assert (trigger["resent"], trigger["deadline"]) == ({"1": 1}, deadline)

    for event in (retry_event(MAX_RESENDS + 1, deadline), retry_event(1, time.time() - 1)):
        with (mock.patch.object(operator, "_resend") as resend,
              pytest.raises(BatchesFailedError, match=r"retry after .* failed batches: .*Neo4j unavailable")):
            operator.execute_complete({}, event)
        resend.assert_not_called()


def test_the_plugin_imports_only_the_protocol() -> None:
    """The triggerer loads the plugin for every deferred task: it must not pull in the engine (numpy)."""
    import subprocess

    code = ("import sys, fx_airflow.triggers, fx_airflow.operators, fx_airflow.hooks; "
            "print(sorted(m for m in sys.modules if m.startswith('fx_workers')), 'numpy' in sys.modules)")
    plugins = Path(__file__).resolve().parents[2] / "plugins"
    out = subprocess.run((sys.executable, "-c", code), cwd=plugins, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['fx_workers', 'fx_workers.protocol'] False"
