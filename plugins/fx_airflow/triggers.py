"""The deferrable wait for a run's workers: count completion signals on the results topic.

Unlike the provider's ``AwaitMessageTrigger``, this one never commits: it ``assign()``s the
partitions at the offsets the plan recorded and counts distinct batch ids, so a triggerer restart
simply re-reads from the same offsets and arrives at the same count. Completion signals are found
by their Kafka header; result payloads are never decoded.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from fx_airflow.hooks import ResultsReaderHook
from fx_workers.messages import (
    HEADER_KIND,
    HEADER_RUN,
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
QUIET_SECONDS = 60.0
"""The longest time without a progress line, even when no batch finished."""


@dataclass
class BatchProgress:
    """Distinct completed batches of one run, with the rate and ETA for progress lines."""

    run_id: str
    total: int
    started: float = field(default_factory=time.monotonic)
    done: dict[int, int] = field(default_factory=dict)
    """Accounts per completed batch id."""
    failed: dict[int, str] = field(default_factory=dict)
    """Error per failed batch id."""

    def add(self, signal: CompletionSignal) -> None:
        """Count a signal; a batch that succeeded once is done, whatever a redelivered copy says."""
        if signal.status is BatchStatus.OK:
            self.done[signal.batch_id] = signal.accounts
            self.failed.pop(signal.batch_id, None)
        elif signal.batch_id not in self.done:
            self.failed.setdefault(signal.batch_id, f"worker {signal.worker_id}: {signal.error}")

    @property
    def complete(self) -> bool:
        return len(self.done) >= self.total

    def missing(self) -> list[int]:
        return sorted(set(range(self.total)) - set(self.done))

    def line(self) -> str:
        elapsed = time.monotonic() - self.started
        accounts = sum(self.done.values())
        rate = accounts / elapsed if elapsed > 0 else 0.0
        remaining = self.total - len(self.done)
        eta = f"{remaining * elapsed / len(self.done):.0f}s" if self.done else "unknown"
        return (f"progress run={self.run_id} batches={len(self.done)}/{self.total} "
                f"({100 * len(self.done) / self.total:.0f}%) accounts={accounts} accounts_per_s={rate:.0f} "
                f"elapsed={elapsed:.0f}s eta={eta}")

    def event(self, status: str) -> dict[str, Any]:
        """The JSON-safe payload of the trigger event."""
        missing = self.missing()
        return {
            "status": status, "run_id": self.run_id, "done": len(self.done), "total": self.total,
            "accounts": sum(self.done.values()), "seconds": round(time.monotonic() - self.started, 3),
            "missing": missing[:LISTED], "missing_count": len(missing),
            "failed": {str(b): e for b, e in sorted(self.failed.items())[:LISTED]},
        }


class BatchCompletionTrigger(BaseTrigger):
    """Fire when every batch ``0..batches-1`` of ``run_id`` has completed, one failed, or ``deadline`` passed.

    :param run_id: the run whose completion signals count
    :param topic: the results topic
    :param start_offsets: per partition (a string, for JSON), where this run's results start
    :param batches: how many batches the run published
    :param deadline: epoch seconds; absolute, so a restarted trigger keeps the original timeout
    :param kafka_config_id: the Kafka connection, defaults to "fx_kafka"
    :param progress_seconds: the least time between two progress lines, defaults to 5
    """

    def __init__(
        self,
        run_id: str,
        topic: str,
        start_offsets: dict[str, int],
        batches: int,
        deadline: float,
        kafka_config_id: str = "fx_kafka",
        progress_seconds: float = 5.0,
    ) -> None:
        super().__init__()
        self.run_id = run_id
        self.topic = topic
        self.start_offsets = start_offsets
        self.batches = batches
        self.deadline = deadline
        self.kafka_config_id = kafka_config_id
        self.progress_seconds = progress_seconds
        self._consumer: Consumer | None = None
        self._client_lock = threading.Lock()
        """Held around every consumer call: a cancelled ``consume`` thread may still run when cleanup closes."""

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "fx_airflow.triggers.BatchCompletionTrigger",
            {
                "run_id": self.run_id,
                "topic": self.topic,
                "start_offsets": self.start_offsets,
                "batches": self.batches,
                "deadline": self.deadline,
                "kafka_config_id": self.kafka_config_id,
                "progress_seconds": self.progress_seconds,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from confluent_kafka import TopicPartition

        self._consumer = consumer = await asyncio.to_thread(lambda: ResultsReaderHook(self.kafka_config_id).get_conn)
        await asyncio.to_thread(
            consumer.assign, [TopicPartition(self.topic, int(p), o) for p, o in self.start_offsets.items()]
        )
        progress = BatchProgress(self.run_id, self.batches)
        self.log.info("waiting for %d batches of run %s on %s from offsets %s", self.batches, self.run_id,
                      self.topic, self.start_offsets)
        logged_at, logged_done = time.monotonic(), 0
        while True:
            for message in await asyncio.to_thread(self._locked, consumer.consume, 500, 1.0):
                signal = self._completion(message)
                if signal is not None:
                    progress.add(signal)
            if progress.failed:
                self.log.error("run %s: batches failed: %s", self.run_id, progress.failed)
                yield TriggerEvent(progress.event("failed"))
                return
            if progress.complete:
                self.log.info(progress.line())
                yield TriggerEvent(progress.event("done"))
                return
            if time.time() >= self.deadline:
                self.log.error("run %s: timed out; missing batches %s", self.run_id, progress.missing()[:LISTED])
                yield TriggerEvent(progress.event("timeout"))
                return
            now, changed = time.monotonic(), len(progress.done) > logged_done
            if (changed and now - logged_at >= self.progress_seconds) or now - logged_at >= QUIET_SECONDS:
                self.log.info(progress.line())
                logged_at, logged_done = now, len(progress.done)

    def _completion(self, message: Message) -> CompletionSignal | None:
        """The completion signal of this run in ``message``, if it is one (decoding nothing else)."""
        if message.error():
            self.log.warning("consumer error on %s: %s", self.topic, message.error())
            return None
        headers = message.headers()
        if header_value(headers, HEADER_KIND) != MessageKind.COMPLETION:
            return None
        if header_value(headers, HEADER_RUN) != self.run_id:
            return None
        try:
            signal = CompletionSignal.decode(message.value() or b"")
        except MessageError as exc:
            self.log.warning("skipping offset %s of partition %s: %s", message.offset(), message.partition(), exc)
            return None
        if signal.batch_id >= self.batches:
            self.log.warning("skipping batch %d of run %s: the plan has %d", signal.batch_id, self.run_id, self.batches)
            return None
        return signal

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
