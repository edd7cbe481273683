"""Aggregate a run from its completion signals alone: each batch counted once (the
:class:`~fx_workers.store.signals.SignalLedger`'s rule), the run's per-feature statistics merged from
the batches', drift against the previous published run. No feature record is read; the result goes
into the run's manifest (:class:`~fx_workers.store.manifest.Aggregation`), where verification and
``fx runs`` find it.

In the DAG, the trigger already counted the signals: aggregate takes its ledger from the wait's event
and reads only what arrived after it (a late copy, a conflict). Without that ledger (a cleared wait,
an older trigger) it reads the run's signals from the plan's start offsets.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from fx_workers.engine.stats import FeatureDrift, drift_by_name, summarise
from fx_workers.steps.plan import Plan
from fx_workers.steps.topics import end_offsets, read_run
from fx_workers.store.keys import RedisKeys
from fx_workers.store.manifest import Aggregation, DriftRow, RunManifest
from fx_workers.store.runs import RunError, RunRegistry
from fx_workers.store.signals import Part, SignalLedger

if TYPE_CHECKING:
    import redis
    from confluent_kafka import Consumer

    from fx_workers.config import Settings
    from fx_workers.protocol import PartStats

log = logging.getLogger(__name__)


def part_names(manifest: RunManifest) -> dict[Part, tuple[str, ...]]:
    """The run's features per part of its statistics, as its manifest names them."""
    return {"nodes": manifest.records.node_names, "edges": manifest.records.edge_names}


def drift_rows(settings: Settings, registry: RunRegistry, run_id: str, stats: dict[Part, PartStats],
               current: dict[Part, tuple[str, ...]]) -> tuple[str, list[FeatureDrift]]:
    """The published run compared against, and the drift from it of every feature it had too, by name (none
    without a previous run; a feature new in this run has no row, the others keep theirs)."""
    previous_id = registry.latest()
    if previous_id is None or previous_id == run_id:
        return "", []
    try:
        previous = RunManifest.from_fields(previous_id, registry.manifest(previous_id))
        if previous.aggregation is None:
            return "", []
        before, names = previous.aggregation.stats, part_names(previous)
        return previous_id, [row for part, features in current.items() if part in stats and part in before
                             for row in drift_by_name(stats[part], features, before[part], names[part],
                                                      settings.drift)]
    except (RunError, ValueError) as exc:  # a run of an older fx, or statistics that do not fit its names
        log.warning("no drift against run %s: %s", previous_id, exc)
        return "", []


def aggregation(ledger: SignalLedger, against: str, rows: list[FeatureDrift]) -> Aggregation:
    """What the manifest records of the ledger and the drift; the verdict is the worst row's."""
    verdicts = {row.verdict for row in rows}
    verdict = "none" if not against else "fail" if "fail" in verdicts else "warn" if "warn" in verdicts else "ok"
    counted = ledger.counted.values()
    return Aggregation(
        accounts_written=sum(row[0] for row in counted), transfers=sum(row[1] for row in counted),
        batches_counted=len(ledger.counted), duplicates=ledger.duplicates, foreign_signals=ledger.foreign,
        batch_table=[ledger.counted.get(b) for b in range(ledger.batches)], conflicts=ledger.conflicts,
        failed_batches=ledger.failed | ledger.retryable, stats=ledger.stats, drift_against=against,
        drift=[DriftRow.model_validate(row.as_dict()) for row in rows], drift_verdict=verdict,
    )


def stats_table(stats: dict[Part, PartStats], names: dict[Part, tuple[str, ...]], rows: list[FeatureDrift]) -> str:
    """The task log's compact table: one line per feature."""
    by_name = {row.name: row.as_dict() for row in rows}
    lines = [f"{'feature':<34} {'mean':>12} {'std':>12} {'min':>12} {'max':>12} {'nan':>5} {'psi':>7} drift"]
    for part, features in names.items():
        for s in summarise(stats[part], features) if part in stats else []:
            row = by_name.get(s.name, {})
            lines.append(f"{s.name:<34} {s.mean:>12.4g} {s.std:>12.4g} {_g(s.min):>12} {_g(s.max):>12} {s.nan:>5} "
                         f"{row.get('psi', ''):>7} {row.get('verdict', '-')}")
    return "\n".join(lines)


def _g(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def record_aggregate(settings: Settings, client: redis.Redis, plan: Plan, ledger: SignalLedger) -> dict[str, Any]:
    """Write the ledger's aggregation and the drift into the run's manifest; log the table; return the summary."""
    registry = RunRegistry(client, RedisKeys(settings.redis.prefix))
    return _record(settings, registry, RunManifest.from_fields(plan.run_id, registry.manifest(plan.run_id)), ledger)


def _record(settings: Settings, registry: RunRegistry, manifest: RunManifest, ledger: SignalLedger) -> dict[str, Any]:
    names = part_names(manifest)
    against, rows = drift_rows(settings, registry, manifest.run_id, ledger.stats, names)
    result = aggregation(ledger, against, rows)
    registry.update(manifest.run_id, result.fields())
    log.info("aggregated run=%s batches=%d/%d accounts=%d transfers=%d duplicates=%d conflicts=%d foreign=%d "
             "drift=%s against %s\n%s", manifest.run_id, result.batches_counted, manifest.batches,
             result.accounts_written, result.transfers, result.duplicates, len(result.conflicts),
             result.foreign_signals, result.drift_verdict, against or "no previous run",
             stats_table(ledger.stats, names, rows))
    return result.model_dump(include={"accounts_written", "transfers", "batches_counted", "duplicates",
                                      "drift_verdict"})


def resumed(counted: dict[str, Any] | None, plan: Plan, widths: dict[Part, int]) -> SignalLedger | None:
    """The trigger's ledger from the wait's event, when it is this plan's and its statistics fit the run."""
    if not counted or "ledger" not in counted:
        return None
    try:
        ledger = SignalLedger.model_validate(counted["ledger"])
    except ValidationError as exc:
        log.warning("the wait's ledger is unreadable, reading the signals again: %s", exc)
        return None
    if (ledger.run_id, ledger.plan, ledger.batches) != (plan.run_id, plan.fingerprint, plan.batches) \
            or ledger.widths not in ({}, widths):
        log.warning("the wait's ledger is of run %s plan %s (%s features), reading the signals again",
                    ledger.run_id, ledger.plan, ledger.widths)
        return None
    return ledger


def aggregate_run(consumer: Consumer, client: redis.Redis, settings: Settings, plan: dict[str, Any],
                  counted: dict[str, Any] | None = None) -> dict[str, Any]:
    """The DAG's ``aggregate``: the run's signals counted, from the wait's event when it has them
    (``counted``, the trigger's event), and recorded in the manifest.

    :param counted: the event of the wait for the workers, defaults to none: read every signal of the run
    """
    run = Plan.from_dict(plan)
    registry = RunRegistry(client, RedisKeys(settings.redis.prefix))
    manifest = RunManifest.from_fields(run.run_id, registry.manifest(run.run_id))
    widths: dict[Part, int] = {part: len(names) for part, names in part_names(manifest).items()}
    ledger = resumed(counted, run, widths) or SignalLedger(
        run_id=run.run_id, plan=run.fingerprint, batches=run.batches, widths=widths, offsets=run.start_offsets)
    topic = settings.kafka.topics.results
    start = dict(ledger.offsets)
    for message in read_run(consumer, topic, run.run_id, start, end_offsets(consumer, topic)):
        ledger.take(message)
    return _record(settings, registry, manifest, ledger)
