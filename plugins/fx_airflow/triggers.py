"""The deferrable wait for a run's workers: count completion signals on the results topic.

Unlike the provider's ``AwaitMessageTrigger``, this one never commits: it ``assign()``s the
partitions at the offsets the plan recorded and counts distinct batch ids, so a triggerer restart
simply re-reads from the same offsets and arrives at the same count. Signals are counted from their
Kafka headers (run, plan, batch, status); only a failed one is decoded, for its error. A signal of
another plan (a cleared run's stale copies, a forged message) is not counted.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from fx_airflow.hooks import ResultsReaderHook
from fx_workers.protocol import (
    HEADER_BATCH,
    HEADER_KIND,
    HEADER_PLAN,
    HEADER_RUN,
    HEADER_STATUS,
    BatchStatus,
    CompletionSignal,
    MessageError,
    MessageKind,
    header_value,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from confluent_kafka import Consumer, Message

LISTED = 50
"""Missing or failed batches named in an event; the rest are counted."""
POLL_SECONDS = 0.2
"""The longest ``consume`` waits: short, so the last signal is seen soon after it arrives."""
QUIET_SECONDS = 60.0
"""The longest time without a progress line, even when no batch finished."""


@dataclass
class BatchProgress:
    """Distinct completed batches of one run, with the rate and ETA for progress lines.

    A batch's failures are counted in the order Kafka keeps them (one partition per batch); the first
    ``resent[b]`` failures of batch ``b`` were already answered by sending it again, so they no longer count.
    """

    run_id: str
    total: int
    resent: dict[int, int] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    done: set[int] = field(default_factory=set)
    failed: dict[int, str] = field(default_factory=dict)
    """Error per batch that failed for good."""
    retryable: dict[int, str] = field(default_factory=dict)
    """Error per batch that failed only through an outage: worth sending again."""
    failures: dict[int, int] = field(default_factory=dict)

    def add(self, batch_id: int, error: str | None = None, *, transient: bool = False) -> None:
        """Count a batch's signal; a batch that succeeded once is done, whatever a redelivered copy says."""
        if error is None:
            self.done.add(batch_id)
            self.failed.pop(batch_id, None)
            self.retryable.pop(batch_id, None)
            return
        self.failures[batch_id] = self.failures.get(batch_id, 0) + 1
        if batch_id in self.done or self.failures[batch_id] <= self.resent.get(batch_id, 0):
            return
        (self.retryable if transient else self.failed).setdefault(batch_id, error)

    @property
    def complete(self) -> bool:
        return len(self.done) >= self.total

    def missing(self) -> list[int]:
        return sorted(set(range(self.total)) - set(self.done))

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        rate = len(self.done) / elapsed if elapsed > 0 else 0.0
        remaining = self.total - len(self.done)
        eta = f"{remaining * elapsed / len(self.done):.0f}s" if self.done else "unknown"
        return (f"progress run={self.run_id} batches={len(self.done)}/{self.total} "
                f"({100 * len(self.done) / self.total:.0f}%) batches_per_s={rate:.2f} "
                f"elapsed={elapsed:.0f}s eta={eta}")

    def event(self, status: str) -> dict[str, Any]:
        """The JSON-safe payload of the trigger event; ``retryable`` and ``resent`` are complete, so the
        operator can send those batches again and defer with the counts carried on."""
        missing = self.missing()
        return {
            "status": status, "run_id": self.run_id, "done": len(self.done), "total": self.total,
            "seconds": round(time.monotonic() - self.started, 3),
            "missing": missing[:LISTED], "missing_count": len(missing),
            "failed": {str(b): e for b, e in sorted(self.failed.items())[:LISTED]},
            "retryable": {str(b): e for b, e in sorted(self.retryable.items())},
            "resent": {str(b): n for b, n in sorted(self.resent.items())},
            "failures": {str(b): self.failures[b] for b in sorted(self.retryable)},
        }


class BatchCompletionTrigger(BaseTrigger):
    """Fire when every batch ``0..batches-1`` of ``run_id`` has completed, one failed (status ``retry`` when
    only through an outage), or ``deadline`` passed.

    :param run_id: the run whose completion signals count
    :param plan: the run's plan fingerprint; signals of another plan do not count
    :param topic: the results topic
    :param start_offsets: per partition (a string, for JSON), where this run's results start
    :param batches: how many batches the run published
    :param deadline: epoch seconds; absolute, so a restarted trigger keeps the original timeout
    :param kafka_config_id: the Kafka connection, defaults to "fx_kafka"
    :param progress_seconds: the least time between two progress lines, defaults to 5
    :param resent: per batch (a string, for JSON), how many of its failures were answered by sending it
        again; those failures no longer count
    """

    def __init__(
        self,
        run_id: str,
        plan: str,
        topic: str,
        start_offsets: dict[str, int],
        batches: int,
        deadline: float,
        kafka_config_id: str = "fx_kafka",
        progress_seconds: float = 5.0,
        resent: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        self.run_id = run_id
        self.plan = plan
        self.topic = topic
        self.start_offsets = start_offsets
        self.batches = batches
        self.deadline = deadline
        self.kafka_config_id = kafka_config_id
        self.progress_seconds = progress_seconds
        self.resent = resent or {}
        self._consumer: Consumer | None = None
        self._client_lock = threading.Lock()
        """Held around every consumer call: a cancelled ``consume`` thread may still run when cleanup closes."""

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "fx_airflow.triggers.BatchCompletionTrigger",
            {
                "run_id": self.run_id,
                "plan": self.plan,
                "topic": self.topic,
                "start_offsets": self.start_offsets,
                "batches": self.batches,
                "deadline": self.deadline,
                "kafka_config_id": self.kafka_config_id,
                "progress_seconds": self.progress_seconds,
                "resent": self.resent,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        self._consumer = consumer = await asyncio.to_thread(self._assigned)
        progress = self._progress()
        self.log.info("waiting for %d batches of run %s on %s from offsets %s", self.batches, self.run_id,
                      self.topic, self.start_offsets)
        logged_at, logged_done = time.monotonic(), 0
        while True:
            self._count(await asyncio.to_thread(self._locked, consumer.consume, 500, POLL_SECONDS), progress)
            if (event := self._settled(progress)) is not None:
                yield TriggerEvent(event)
                return
            if time.time() >= self.deadline:
                self.log.error("run %s: timed out; missing batches %s", self.run_id, progress.missing()[:LISTED])
                yield TriggerEvent(progress.event("timeout"))
                return
            now, changed = time.monotonic(), len(progress.done) > logged_done
            if (changed and now - logged_at >= self.progress_seconds) or now - logged_at >= QUIET_SECONDS:
                self.log.info(progress.line())
                logged_at, logged_done = now, len(progress.done)

    def poll(self, seconds: float) -> dict[str, Any] | None:
        """Count, in the calling process, the signals already on the topic and those arriving within
        ``seconds``; the event :meth:`run` would fire when they settle the run, else None (then defer).

        The operator calls it before deferring: a run whose workers are already done (or nearly) skips the
        round trip through the triggerer and the scheduler. Like :meth:`run`, it never commits.

        :param seconds: how long to wait for signals; at least one read is made
        """
        consumer = self._assigned()
        try:
            progress = self._progress()
            until = time.monotonic() + seconds
            while True:
                self._count(consumer.consume(500, POLL_SECONDS), progress)
                if (event := self._settled(progress)) is not None or time.monotonic() >= until:
                    if event is None:
                        self.log.info("%d of %d batches of run %s done after %.1fs; deferring", len(progress.done),
                                      self.batches, self.run_id, seconds)
                    return event
        finally:
            consumer.close()

    def _assigned(self) -> Consumer:
        """A reader of the results topic, assigned at this run's start offsets."""
        from confluent_kafka import TopicPartition

        consumer = ResultsReaderHook(self.kafka_config_id).get_conn
        consumer.assign([TopicPartition(self.topic, int(p), o) for p, o in self.start_offsets.items()])
        return consumer

    def _progress(self) -> BatchProgress:
        return BatchProgress(self.run_id, self.batches, {int(b): n for b, n in self.resent.items()})

    def _count(self, messages: list[Message], progress: BatchProgress) -> None:
        for message in messages:
            if (counted := self._completion(message)) is not None:
                batch, error, transient = counted
                progress.add(batch, error, transient=transient)

    def _settled(self, progress: BatchProgress) -> dict[str, Any] | None:
        """The event's payload when a batch failed or every batch is done, else None."""
        if progress.failed:
            self.log.error("run %s: batches failed: %s", self.run_id, progress.failed)
            return progress.event("failed")
        if progress.retryable:
            self.log.warning("run %s: batches failed through an outage: %s", self.run_id, progress.retryable)
            return {**progress.event("retry"), "deadline": self.deadline}
        if progress.complete:
            self.log.info(progress.line())
            return progress.event("done")
        return None

    def _completion(self, message: Message) -> tuple[int, str | None, bool] | None:
        """``(batch id, error or None, transient)`` when ``message`` is a signal of this run's plan, else None."""
        if message.error():
            self.log.warning("consumer error on %s: %s", self.topic, message.error())
            return None
        headers = message.headers()
        if (header_value(headers, HEADER_KIND) != MessageKind.COMPLETION
                or header_value(headers, HEADER_RUN) != self.run_id):
            return None
        batch = header_value(headers, HEADER_BATCH) or ""
        if header_value(headers, HEADER_PLAN) != self.plan or not batch.isdigit() or int(batch) >= self.batches:
            self.log.warning("not counted: offset %s of partition %s (plan %s, batch %r; this run is plan %s of %d "
                             "batches)", message.offset(), message.partition(), header_value(headers, HEADER_PLAN),
                             batch, self.plan, self.batches)
            return None
        if header_value(headers, HEADER_STATUS) == BatchStatus.OK:
            return int(batch), None, False
        try:
            signal = CompletionSignal.decode(message.value() or b"")
        except MessageError as exc:
            self.log.warning("skipping offset %s of partition %s: %s", message.offset(), message.partition(), exc)
            return None
        return int(batch), f"worker {signal.worker_id}: {signal.error}", signal.transient

    def _locked(self, call: Callable[..., Any], *args: Any) -> Any:
        with self._client_lock:
            return call(*args)

    async def cleanup(self) -> None:
        """Close the consumer; it never committed, so closing loses nothing. Logs, never raises."""
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                await asyncio.to_thread(self._locked, consumer.close)
            except Exception:
                self.log.warning("closing the results consumer failed", exc_info=True)
