"""Verify a run before anyone can read it, without re-reading it whole.

1. Counts: every batch of the plan counted once, with as many account records as the plan gave it;
   no batch with conflicting copies.
2. Values: no non-finite value anywhere (from the merged statistics); the drift verdict is not ``fail``.
3. Recomputation: ``extraction.verify_sample`` random accounts recomputed from Neo4j and compared,
   value for value, with what readers of the run would get (their transfers too).
4. Checksums: ``extraction.verify_batches`` random whole batches recomputed and re-read; both must
   hash to the checksum the worker's completion signal reported.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fx_workers.engine.extract import catalogue_of, extract_batch
from fx_workers.engine.graph import WindowCache, open_driver
from fx_workers.steps.aggregate import part_names
from fx_workers.store.keys import RedisKeys
from fx_workers.store.manifest import Aggregation, RunManifest
from fx_workers.store.plan_store import PlanStore
from fx_workers.store.reader import FeatureReader
from fx_workers.store.runs import SIZE_SAMPLE, RunError, RunRegistry
from fx_workers.store.writer import Checksum, features_checksum

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np
    import redis
    from neo4j import Driver

    from fx_workers.config import Settings
    from fx_workers.progress import ProgressFactory

REL_TOL = 1e-9
SHOWN = 10
"""Failures listed by name before the rest are only counted."""


@dataclass
class VerifyReport:
    run_id: str
    accounts: int = 0
    transfers: int = 0
    batches: int = 0
    sampled: int = 0
    checksummed: list[int] = field(default_factory=list)
    node_sample: list[str] = field(default_factory=list)
    edge_sample: list[str] = field(default_factory=list)
    """Some records verified present: the run's size is estimated from them."""
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def __str__(self) -> str:
        head = (f"run {self.run_id}: {self.batches} batches, {self.accounts} accounts and {self.transfers} transfers "
                f"counted; {self.sampled} accounts recomputed from Neo4j; batches {self.checksummed} re-read "
                "against their checksums")
        if self.ok:
            return f"{head}: OK"
        listed = "\n".join(f"  - {f}" for f in self.failures[:SHOWN])
        more = f"\n  ... and {len(self.failures) - SHOWN} more" if len(self.failures) > SHOWN else ""
        return f"{head}: {len(self.failures)} FAILED\n{listed}{more}"


def _check_counts(report: VerifyReport, aggregation: Aggregation, batches: list[list[str]]) -> None:
    """Check the aggregation's per-batch table against the plan."""
    table = aggregation.batch_table
    if len(table) != len(batches):
        report.failures.append(f"the aggregation saw {len(table)} batches; the plan has {len(batches)}")
        return
    missing = [b for b, row in enumerate(table) if row is None]
    if missing:
        report.failures.append(f"no completion signal for batches {missing[:SHOWN]} ({len(missing)} in all)")
    for b, (row, ids) in enumerate(zip(table, batches, strict=True)):
        if row is not None and row[0] != len(ids):
            report.failures.append(f"batch {b}: the worker wrote {row[0]} account records; the plan has {len(ids)}")
    for b, checksums in aggregation.conflicts.items():
        report.failures.append(f"batch {b}: copies with different content were written (checksums {checksums}); "
                               "the graph changed while it was computed: run again")
    report.accounts = sum(row[0] for row in table if row)
    report.transfers = sum(row[1] for row in table if row)


def _check_values(report: VerifyReport, manifest: RunManifest, aggregation: Aggregation) -> None:
    for part, names in part_names(manifest).items():
        stats = aggregation.stats.get(part)
        if stats is None or len(stats.nan) != len(names):
            report.failures.append(f"the aggregation has no {part} statistics of the run's {len(names)} features")
            continue
        bad = [f"{name} ({n})" for name, n in zip(names, stats.nan, strict=True) if n]
        if bad:
            report.failures.append(f"non-finite {part} values: {', '.join(bad)}")
    if aggregation.drift_verdict == "fail":
        failing = [row.name for row in aggregation.drift if row.verdict == "fail"]
        report.failures.append(f"drift against run {aggregation.drift_against} above the fail thresholds "
                               f"(config drift.*_fail) for: {', '.join(failing)}")


def _compare(kind: str, entity_id: str, names: Sequence[str], stored: dict | None, values: np.ndarray) -> list[str]:
    if stored is None:
        return [f"{kind} {entity_id}: no record in the run"]
    return [f"{kind} {entity_id}: {name} stored {stored.get(name)!r}, recomputed {value!r}"
            for name, value in zip(names, values.tolist(), strict=True)
            if not math.isclose(stored.get(name, math.nan), value, rel_tol=REL_TOL, abs_tol=REL_TOL)]


def _recompute_sample(report: VerifyReport, driver: Driver, settings: Settings, reader: FeatureReader,
                      chosen: list[str], as_of: int, windows: WindowCache) -> None:
    fresh, features = extract_batch(driver, settings, chosen, as_of, windows), catalogue_of(settings)
    for node_id, row, stored in zip(chosen, fresh.node_values, reader.nodes(chosen), strict=True):
        report.failures += _compare("account", node_id, features.node_names, stored, row)
    tx_ids = fresh.tx_ids.tolist()
    for tx_id, row, stored in zip(tx_ids, fresh.edge_values, reader.edges(tx_ids), strict=True):
        report.failures += _compare("transfer", tx_id, features.edge_names, stored, row)
    report.sampled = len(chosen)
    report.node_sample, report.edge_sample = chosen[:SIZE_SAMPLE], tx_ids[:SIZE_SAMPLE]


def _check_checksum(report: VerifyReport, driver: Driver, settings: Settings, reader: FeatureReader,
                    batch_id: int, ids: list[str], as_of: int, reported: str, windows: WindowCache) -> None:
    fresh = extract_batch(driver, settings, ids, as_of, windows)
    if features_checksum(fresh) != reported:
        report.failures.append(f"batch {batch_id}: recomputed from Neo4j it hashes differently from what its worker "
                               "reported (the graph changed, or the worker computed other numbers)")
    namespace = reader.keys.of_run(report.run_id)
    stored = Checksum()
    for key_of, part_ids in ((namespace.node, ids), (namespace.edge, fresh.tx_ids.tolist())):
        stored.add_part(part_ids, list(reader.raw(key_of, part_ids)))
    if stored.hexdigest() != reported:
        report.failures.append(f"batch {batch_id}: its records in Redis do not match the checksum its worker "
                               "reported (changed or lost since they were written)")
    report.checksummed.append(batch_id)


def verify_run(settings: Settings, client: redis.Redis, run_id: str | None = None, *, sample: int | None = None,
               batches: int | None = None, progress: ProgressFactory | None = None) -> VerifyReport:
    """Check a run's counts, values, a recomputed sample and sampled checksums.

    :param run_id: defaults to the ``latest`` run
    :param sample: accounts to recompute, defaults to ``extraction.verify_sample``
    :param batches: whole batches to checksum, defaults to ``extraction.verify_batches``
    :raises RunError: when the run does not exist
    """
    from fx_workers.progress import no_progress

    keys = RedisKeys(settings.redis.prefix)
    registry = RunRegistry(client, keys)
    run_id = run_id or registry.latest()
    if run_id is None:
        raise RunError("no published run yet; pass --run RUN_ID (fx runs list)")
    manifest = RunManifest.from_fields(run_id, registry.manifest(run_id))
    report = VerifyReport(run_id, batches=manifest.batches)
    planned = [ids for _, ids in PlanStore(client, keys, run_id).batches(manifest.batches)]
    aggregation = manifest.aggregation
    if aggregation is None:
        report.failures.append("the manifest has no aggregation (was aggregate run?)")
    else:
        _check_counts(report, aggregation, planned)
        _check_values(report, manifest, aggregation)
    table = aggregation.batch_table if aggregation else []
    if moved := registry.topology_change(run_id):
        report.failures.append(moved)
    rng = random.Random(f"{run_id}/{manifest.fingerprint}")
    sample = settings.extraction.verify_sample if sample is None else sample
    every_id = [i for ids in planned for i in ids]
    chosen = sorted(rng.sample(every_id, min(sample, len(every_id))))
    batches = settings.extraction.verify_batches if batches is None else batches
    checked = sorted(rng.sample(range(manifest.batches), min(batches, manifest.batches)))
    reader, windows = FeatureReader(client, keys, run_id), WindowCache().bind(run_id)  # read again, not the run's
    with open_driver(settings.neo4j) as driver, (progress or no_progress)("verifying", 1 + len(checked)) as advance:
        if chosen:
            _recompute_sample(report, driver, settings, reader, chosen, manifest.as_of, windows)
        advance(1)
        for batch_id in checked:
            if batch_id < len(table) and table[batch_id]:
                _check_checksum(report, driver, settings, reader, batch_id, planned[batch_id], manifest.as_of,
                                table[batch_id][2], windows)
            advance(1)
    return report
