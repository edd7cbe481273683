"""Aggregate a run from its completion signals alone: each batch counted once, the run's per-feature
statistics merged from the batches', drift against the previous published run. No feature record
is read; the result goes into the run's manifest, where verification and ``fx runs`` find it.
"""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fx_workers.engine.catalogue import CATALOGUE, by_schema
from fx_workers.engine.stats import Accumulator, FeatureDrift, drift_by_name, summarise
from fx_workers.protocol import BatchStatus, CompletionSignal, MessageError, PartStats
from fx_workers.steps.plan import Plan
from fx_workers.steps.topics import end_offsets, read_run
from fx_workers.store.keys import RedisKeys
from fx_workers.store.records import EDGE_NAMES, NODE_NAMES
from fx_workers.store.runs import RunRegistry

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    import redis
    from confluent_kafka import Consumer

    from fx_workers.config import Settings

log = logging.getLogger(__name__)

def parts(schema: str) -> dict[str, tuple[str, ...]]:
    """This code's features per part of a run's statistics, for the run's schema version (the whole
    catalogue's when this code does not know it); a run's own are :func:`run_names`."""
    features = by_schema(schema) or CATALOGUE
    return {"nodes": features.node_names, "edges": features.edge_names}
_NAME_FIELDS = {"nodes": NODE_NAMES, "edges": EDGE_NAMES}


@dataclass
class Tally:
    """The signals of one plan: each batch's first successful copy, and what else arrived."""

    plan: Plan
    counted: dict[int, tuple[int, int, str]] = field(default_factory=dict)
    """Per batch: accounts, transfers, checksum."""
    failed: dict[int, str] = field(default_factory=dict)
    duplicates: int = 0
    conflicts: dict[int, set[str]] = field(default_factory=lambda: defaultdict(set))
    foreign: int = 0
    stats: dict[str, Accumulator] = field(init=False)

    def __post_init__(self) -> None:
        self.stats = {p: Accumulator(len(n)) for p, n in parts(self.plan.schema_version).items()}

    def add(self, signal: CompletionSignal) -> None:
        """Count a signal once; a redelivered copy is a duplicate, a copy with other content a conflict."""
        plan, batch = self.plan, signal.batch_id
        if (signal.run_id, signal.plan) != (plan.run_id, plan.fingerprint) or batch >= plan.batches:
            self.foreign += 1
            log.warning("ignored a signal of run=%s plan=%s batch=%d: this run is %s plan %s of %d batches",
                        signal.run_id, signal.plan, batch, plan.run_id, plan.fingerprint, plan.batches)
            return
        if signal.status is BatchStatus.FAILED:
            if batch not in self.counted:
                self.failed[batch] = f"worker {signal.worker_id}: {signal.error}"
            return
        if batch in self.counted:
            checksum = self.counted[batch][2]
            if checksum == signal.checksum:
                self.duplicates += 1
            else:
                self.conflicts[batch] |= {checksum, signal.checksum}
            return
        parts = {"nodes": signal.nodes, "edges": signal.edges}
        try:
            for part, stats in parts.items():  # both checked before either is merged
                self.stats[part].check(stats)
        except ValueError as exc:
            self.foreign += 1
            log.warning("ignored batch %d's signal from worker %s: %s", batch, signal.worker_id, exc)
            return
        for part, stats in parts.items():
            self.stats[part].add(stats)
        self.counted[batch] = (signal.accounts, signal.transfers, signal.checksum)
        self.failed.pop(batch, None)

    def merged(self) -> dict[str, PartStats]:
        """The run's statistics so far, per part."""
        return {part: acc.result() for part, acc in self.stats.items()}

    def manifest_fields(self, merged: dict[str, PartStats]) -> dict[str, Any]:
        """What the manifest records of the aggregation (verification reads it back)."""
        table = [list(self.counted[b]) if b in self.counted else None for b in range(self.plan.batches)]
        return {
            "accounts_written": sum(c[0] for c in self.counted.values()),
            "transfers": sum(c[1] for c in self.counted.values()),
            "batches_counted": len(self.counted), "duplicates": self.duplicates, "foreign_signals": self.foreign,
            "batch_table": json.dumps(table),
            "conflicts": json.dumps({str(b): sorted(c) for b, c in self.conflicts.items()}),
            "failed_batches": json.dumps({str(b): e for b, e in self.failed.items()}),
            "stats": json.dumps({p: stats.model_dump(mode="json") for p, stats in merged.items()}),
        }


def tally(plan: Plan, signals: Iterable[CompletionSignal]) -> Tally:
    result = Tally(plan)
    for signal in signals:
        result.add(signal)
    return result


def stored_stats(manifest: dict[str, str]) -> dict[str, PartStats] | None:
    """A manifest's merged statistics, or None when it has none."""
    if "stats" not in manifest:
        return None
    return {part: PartStats.model_validate(data) for part, data in json.loads(manifest["stats"]).items()}


def run_names(manifest: dict[str, str]) -> dict[str, list[str]] | None:
    """The features of a run's statistics per part, from its manifest; None when it names none."""
    if not all(manifest.get(field) for field in _NAME_FIELDS.values()):
        return None
    return {part: json.loads(manifest[field]) for part, field in _NAME_FIELDS.items()}


def drift_rows(settings: Settings, registry: RunRegistry, run_id: str, stats: dict[str, PartStats],
               current: dict[str, tuple[str, ...]]) -> tuple[str, list[FeatureDrift]]:
    """The published run compared against, and the drift from it of every feature it had too, by name (none
    without a previous run; a feature new in this run has no row, the others keep theirs)."""
    previous_id = registry.latest()
    if previous_id is None or previous_id == run_id:
        return "", []
    manifest = registry.manifest(previous_id)
    previous = stored_stats(manifest)
    if previous is None:
        return "", []
    names = run_names(manifest) or parts(manifest.get("schema", ""))  # a run from before the names were stored
    try:
        return previous_id, [row for part, features in current.items()
                             for row in drift_by_name(stats[part], features, previous[part], names[part],
                                                      settings.drift)]
    except ValueError as exc:
        log.warning("no drift against run %s: %s", previous_id, exc)
        return "", []


def drift_fields(against: str, rows: list[FeatureDrift]) -> dict[str, Any]:
    """The manifest's drift fields; the verdict is the worst row's (``fail`` beats ``warn``)."""
    if not against:
        return {"drift_against": "", "drift": "[]", "drift_verdict": "none"}
    verdicts = {row.verdict for row in rows}
    verdict = "fail" if "fail" in verdicts else "warn" if "warn" in verdicts else "ok"
    return {"drift_against": against, "drift": json.dumps([r.as_dict() for r in rows]), "drift_verdict": verdict}


def stats_table(stats: dict[str, PartStats], names: dict[str, tuple[str, ...]], rows: list[FeatureDrift]) -> str:
    """The task log's compact table: one line per feature."""
    by_name = {row.name: row.as_dict() for row in rows}
    lines = [f"{'feature':<34} {'mean':>12} {'std':>12} {'min':>12} {'max':>12} {'nan':>5} {'psi':>7} drift"]
    for part, features in names.items():
        for s in summarise(stats[part], features):
            row = by_name.get(s.name, {})
            lines.append(f"{s.name:<34} {s.mean:>12.4g} {s.std:>12.4g} {_g(s.min):>12} {_g(s.max):>12} {s.nan:>5} "
                         f"{row.get('psi', ''):>7} {row.get('verdict', '-')}")
    return "\n".join(lines)


def _g(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def record_aggregate(settings: Settings, client: redis.Redis, plan: Plan, result: Tally) -> dict[str, Any]:
    """Write the aggregation and the drift into the manifest; log the table; return the summary."""
    registry = RunRegistry(client, RedisKeys(settings.redis.prefix))
    stats = result.merged()
    names = parts(plan.schema_version)
    against, rows = drift_rows(settings, registry, plan.run_id, stats, names)
    fields = result.manifest_fields(stats) | drift_fields(against, rows)
    registry.update(plan.run_id, fields)
    log.info("aggregated run=%s batches=%d/%d accounts=%d transfers=%d duplicates=%d conflicts=%d foreign=%d "
             "drift=%s against %s\n%s", plan.run_id, len(result.counted), plan.batches, fields["accounts_written"],
             fields["transfers"], result.duplicates, len(result.conflicts), result.foreign, fields["drift_verdict"],
             against or "no previous run", stats_table(stats, names, rows))
    return {k: fields[k] for k in ("accounts_written", "transfers", "batches_counted", "duplicates", "drift_verdict")}


def signals_on_topic(consumer: Consumer, settings: Settings, plan: Plan) -> Iterator[CompletionSignal]:
    """The run's completion signals between the plan's start offsets and the topic's end now."""
    topic = settings.kafka.topics.results
    start = {int(p): o for p, o in plan.start_offsets.items()}
    for message in read_run(consumer, topic, plan.run_id, start, end_offsets(consumer, topic)):
        try:
            yield CompletionSignal.decode(message.value() or b"")
        except MessageError as exc:
            log.warning("skipped offset %d of partition %d: %s", message.offset(), message.partition(), exc)


def aggregate_run(consumer: Consumer, client: redis.Redis, settings: Settings, plan: dict[str, Any]) -> dict[str, Any]:
    """The DAG's ``aggregate``: tally the run's signals from Kafka and record them in the manifest."""
    run = Plan.from_dict(plan)
    return record_aggregate(settings, client, run, tally(run, signals_on_topic(consumer, settings, run)))
