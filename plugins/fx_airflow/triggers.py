"""The deferrable wait for a run's workers: count completion signals on the results topic.

Unlike the provider's ``AwaitMessageTrigger``, this one never commits: it ``assign()``s the
partitions at the offsets the plan recorded and counts distinct batch ids, so a triggerer restart
simply re-reads from the same offsets and arrives at the same count. Each signal of the run is
decoded once, into the :class:`~fx_workers.store.signals.SignalLedger` (its rule: a batch done once
stays done; a signal of another plan, a cleared run's stale copy or a forged message, is not counted).
The event carries the ledger, so aggregate reads on from where it stopped instead of reading again.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from fx_airflow.hooks import ResultsReaderHook

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from confluent_kafka import Consumer

    from fx_workers.store.signals import SignalLedger

LISTED = 50
"""Missing or failed batches named in an event; the rest are counted."""
POLL_SECONDS = 0.2
"""The longest ``consume`` waits: short, so the last signal is seen soon after it arrives."""
QUIET_SECONDS = 60.0
"""The longest time without a progress line, even when no batch finished."""


def progress_line(ledger: SignalLedger, elapsed: float) -> str:
    """A progress line with the rate and the ETA."""
    done, total = len(ledger.counted), ledger.batches
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = f"{(total - done) * elapsed / done:.0f}s" if done else "unknown"
    return (f"progress run={ledger.run_id} batches={done}/{total} ({100 * done / total:.0f}%) "
            f"batches_per_s={rate:.2f} elapsed={elapsed:.0f}s eta={eta}")


def ledger_event(ledger: SignalLedger, status: str, seconds: float) -> dict[str, Any]:
    """The JSON-safe payload of the trigger event. ``retryable`` and ``resent`` are complete, so the operator
    can send those batches again and defer with the counts carried on; ``ledger``, what was counted, only when
    the run is done (aggregate's input; it grows with the batches, and every other event is acted on by its
    counts alone)."""
    missing = ledger.missing()
    return {
        "status": status, "run_id": ledger.run_id, "done": len(ledger.counted), "total": ledger.batches,
        "seconds": round(seconds, 3), "missing": missing[:LISTED], "missing_count": len(missing),
        "failed": {str(b): e for b, e in sorted(ledger.failed.items())[:LISTED]},
        "retryable": {str(b): e for b, e in sorted(ledger.retryable.items())},
        "resent": {str(b): n for b, n in sorted(ledger.resent.items())},
        "failures": {str(b): ledger.failures[b] for b in sorted(ledger.retryable)},
        **({"ledger": ledger.model_dump(mode="json")} if status == "done" else {}),
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
        ledger, started = self._ledger(), time.monotonic()
        self.log.info("waiting for %d batches of run %s on %s from offsets %s", self.batches, self.run_id,
                      self.topic, self.start_offsets)
        logged_at, logged_done = started, 0
        while True:
            await asyncio.to_thread(self._locked, self._count, consumer, ledger)  # decoding stays off the loop
            if (event := self._settled(ledger, started)) is not None:
                yield TriggerEvent(event)
                return
            if time.time() >= self.deadline:
                self.log.error("run %s: timed out; missing batches %s", self.run_id, ledger.missing()[:LISTED])
                yield TriggerEvent(ledger_event(ledger, "timeout", time.monotonic() - started))
                return
            now, changed = time.monotonic(), len(ledger.counted) > logged_done
            if (changed and now - logged_at >= self.progress_seconds) or now - logged_at >= QUIET_SECONDS:
                self.log.info(progress_line(ledger, now - started))
                logged_at, logged_done = now, len(ledger.counted)

    def poll(self, seconds: float) -> dict[str, Any] | None:
        """Count, in the calling process, the signals already on the topic and those arriving within
        ``seconds``; the event :meth:`run` would fire when they settle the run, else None (then defer).

        The operator calls it before deferring: a run whose workers are already done (or nearly) skips the
        round trip through the triggerer and the scheduler. Like :meth:`run`, it never commits.

        :param seconds: how long to wait for signals; at least one read is made
        """
        consumer = self._assigned()
        try:
            ledger, started = self._ledger(), time.monotonic()
            while True:
                self._count(consumer, ledger)
                if (event := self._settled(ledger, started)) is not None or time.monotonic() >= started + seconds:
                    if event is None:
                        self.log.info("%d of %d batches of run %s done after %.1fs; deferring", len(ledger.counted),
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

    def _ledger(self) -> SignalLedger:
        from fx_workers.store.signals import SignalLedger  # not at import: the DAG's parse needs none of it

        return SignalLedger(run_id=self.run_id, plan=self.plan, batches=self.batches,
                            offsets={int(p): o for p, o in self.start_offsets.items()},
                            resent={int(b): n for b, n in self.resent.items()})

    @staticmethod
    def _count(consumer: Consumer, ledger: SignalLedger) -> None:
        for message in consumer.consume(500, POLL_SECONDS):
            ledger.take(message)

    def _settled(self, ledger: SignalLedger, started: float) -> dict[str, Any] | None:
        """The event's payload when a batch failed or every batch is done, else None."""
        seconds = time.monotonic() - started
        if ledger.failed:
            self.log.error("run %s: batches failed: %s", self.run_id, ledger.failed)
            return ledger_event(ledger, "failed", seconds)
        if ledger.retryable:
            self.log.warning("run %s: batches failed through an outage: %s", self.run_id, ledger.retryable)
            return {**ledger_event(ledger, "retry", seconds), "deadline": self.deadline}
        if ledger.complete:
            self.log.info(progress_line(ledger, seconds))
            return ledger_event(ledger, "done", seconds)
        return None

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
