"""The ledger of a run's completion signals: which batches are done, and what they wrote.

One rule, for every reader of the results topic (the DAG's trigger, its aggregate, ``fx extract
--local``, the bench): a batch done once stays done. Its first successful signal is counted, with
its records, checksum and statistics; a redelivered copy is a duplicate, a copy with other content
a conflict, a failure after the success changes nothing. A failure counts until a copy succeeds,
except the first ``resent[b]`` failures of batch ``b``, already answered by sending it again. A
signal of another plan (a cleared and re-planned run, a forged message) is not counted.

The ledger is JSON-safe (a pydantic model) and remembers where it stopped reading each partition,
so the trigger hands what it counted to aggregate, which reads on from there instead of from the
plan's start. Pure pydantic and the standard library, like :mod:`fx_workers.protocol`: the
triggerer imports it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, Field

from fx_workers.protocol import (
    HEADER_BATCH,
    HEADER_KIND,
    HEADER_PLAN,
    HEADER_RUN,
    BatchStatus,
    CompletionSignal,
    MessageError,
    MessageKind,
    PartStats,
    header_value,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    from confluent_kafka import Message

log = logging.getLogger(__name__)

Part = Literal["nodes", "edges"]
BatchRow = tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)], str]
"""A counted batch: account records, transfer records, and the checksum its worker reported."""


def _pick(a: float | None, b: float | None, better: Callable[[float, float], float]) -> float | None:
    return b if a is None else a if b is None else better(a, b)


def _shape(stats: PartStats) -> tuple[int, int]:
    """Features, and bins per histogram."""
    return len(stats.nan), len(stats.hist[0]) if stats.hist else 0


def merge_stats(a: PartStats, b: PartStats) -> PartStats:
    """The statistics of both parts' rows together (sums added in order, so exact for one order of batches).

    :raises ValueError: when the parts have other features or bins
    """
    if _shape(a) != _shape(b):
        raise ValueError(f"statistics of {len(b.nan)} features with {_shape(b)[1]} bins; "
                         f"expected {len(a.nan)} features with {_shape(a)[1]} bins")
    return PartStats.model_construct(
        rows=a.rows + b.rows, nan=[x + y for x, y in zip(a.nan, b.nan, strict=True)],
        min=[_pick(x, y, min) for x, y in zip(a.min, b.min, strict=True)],
        max=[_pick(x, y, max) for x, y in zip(a.max, b.max, strict=True)],
        sum=[x + y for x, y in zip(a.sum, b.sum, strict=True)],
        sumsq=[x + y for x, y in zip(a.sumsq, b.sumsq, strict=True)],
        hist=[[x + y for x, y in zip(p, q, strict=True)] for p, q in zip(a.hist, b.hist, strict=True)],
    )


class SignalLedger(BaseModel):
    """The completion signals of one plan, each batch counted once."""

    run_id: str
    plan: str
    """The plan's fingerprint."""
    batches: int
    widths: dict[Part, int] = Field(default_factory=dict)
    """Features per part a signal's statistics must have; the first counted signal's when not given."""
    resent: dict[int, int] = Field(default_factory=dict)
    offsets: dict[int, int] = Field(default_factory=dict)
    """Per results partition, the next offset to read."""
    counted: dict[int, BatchRow] = Field(default_factory=dict)
    failed: dict[int, str] = Field(default_factory=dict)
    """Error per batch that failed for good."""
    retryable: dict[int, str] = Field(default_factory=dict)
    """Error per batch that failed only through an outage: worth sending again."""
    failures: dict[int, int] = Field(default_factory=dict)
    duplicates: int = 0
    conflicts: dict[int, list[str]] = Field(default_factory=dict)
    """Per batch, the checksums of copies with different content."""
    foreign: int = 0
    stats: dict[Part, PartStats] = Field(default_factory=dict)
    """The counted batches' statistics, merged."""

    @property
    def complete(self) -> bool:
        return len(self.counted) >= self.batches

    def missing(self) -> list[int]:
        return [b for b in range(self.batches) if b not in self.counted]

    def add(self, signal: CompletionSignal) -> None:
        """Count a signal by the rule above."""
        batch = signal.batch_id
        if (signal.run_id, signal.plan) != (self.run_id, self.plan) or batch >= self.batches:
            self._foreign(f"a signal of run={signal.run_id} plan={signal.plan} batch={batch}")
            return
        if signal.status is BatchStatus.FAILED:
            self._failure(batch, f"worker {signal.worker_id}: {signal.error}", signal.transient)
            return
        if batch in self.counted:
            checksum = self.counted[batch][2]
            if checksum == signal.checksum:
                self.duplicates += 1
            else:
                self.conflicts[batch] = sorted({*self.conflicts.get(batch, [checksum]), signal.checksum})
            return
        parts: dict[Part, PartStats] = {"nodes": signal.nodes, "edges": signal.edges}  # type: ignore[dict-item]
        try:  # both checked before either is merged
            merged = {part: self._merged(part, stats) for part, stats in parts.items()}
        except ValueError as exc:
            self._foreign(f"batch {batch}'s signal from worker {signal.worker_id} ({exc})")
            return
        self.stats |= merged
        self.widths = {part: len(stats.nan) for part, stats in merged.items()}
        self.counted[batch] = (signal.accounts, signal.transfers, signal.checksum)
        self.failed.pop(batch, None)
        self.retryable.pop(batch, None)

    def take(self, message: Message) -> CompletionSignal | None:
        """Count a message of the results topic; the signal it decoded, if it decoded one.

        A message of another run is passed over, one of another plan or beyond it is counted foreign
        from its headers; only this plan's signals are decoded.
        """
        if message.error():
            log.warning("consumer error: %s", message.error())
            return None
        self.offsets[message.partition()] = message.offset() + 1
        headers = message.headers()
        if (header_value(headers, HEADER_KIND) != MessageKind.COMPLETION
                or header_value(headers, HEADER_RUN) != self.run_id):
            return None
        batch = header_value(headers, HEADER_BATCH) or ""
        if header_value(headers, HEADER_PLAN) != self.plan or not batch.isdigit() or int(batch) >= self.batches:
            self._foreign(f"the signal at offset {message.offset()} of partition {message.partition()} (plan "
                          f"{header_value(headers, HEADER_PLAN)}, batch {batch!r})")
            return None
        try:
            signal = CompletionSignal.decode(message.value() or b"")
        except MessageError as exc:
            log.warning("skipped offset %d of partition %d: %s", message.offset(), message.partition(), exc)
            return None
        self.add(signal)
        return signal

    def _merged(self, part: Part, stats: PartStats) -> PartStats:
        if part in self.widths and len(stats.nan) != self.widths[part]:
            raise ValueError(f"{part} statistics of {len(stats.nan)} features; the run has {self.widths[part]}")
        return merge_stats(self.stats[part], stats) if part in self.stats else stats

    def _failure(self, batch: int, error: str, transient: bool) -> None:
        self.failures[batch] = self.failures.get(batch, 0) + 1
        if batch in self.counted or self.failures[batch] <= self.resent.get(batch, 0):
            return
        (self.retryable if transient else self.failed).setdefault(batch, error)

    def _foreign(self, what: str) -> None:
        self.foreign += 1
        log.warning("ignored %s: this run is %s plan %s of %d batches", what, self.run_id, self.plan, self.batches)
