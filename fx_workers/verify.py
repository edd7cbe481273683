"""Verification of a run: every record present, complete, finite and of the run's schema, and a
random sample recomputed from Neo4j equal to what is stored."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fx_workers.engine.features import EDGE_FEATURE_NAMES, NODE_FEATURE_NAMES
from fx_workers.engine.graph import Cypher, open_driver, read_accounts
from fx_workers.sink import CHUNK, FeatureReader, open_redis
from fx_workers.store.keys import META_AS_OF, META_RUN_ID, META_SCHEMA, RedisKeys

if TYPE_CHECKING:
    from collections.abc import Sequence

    from neo4j import Driver

    from fx_workers.config import Settings
    from fx_workers.progress import ProgressFactory

REL_TOL = 1e-9
SHOWN = 10
"""Failures listed by name before the rest are only counted."""


class RunNotFoundError(LookupError):
    """No manifest for the requested run (or no ``latest`` run)."""


@dataclass
class VerifyReport:
    run_id: str
    accounts: int = 0
    transfers: int = 0
    sampled: int = 0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def __str__(self) -> str:
        head = (f"run {self.run_id}: {self.accounts} account records, {self.transfers} transfer records checked, "
                f"{self.sampled} accounts recomputed from Neo4j")
        if self.ok:
            return f"{head}: OK"
        listed = "\n".join(f"  - {f}" for f in self.failures[:SHOWN])
        more = f"\n  ... and {len(self.failures) - SHOWN} more" if len(self.failures) > SHOWN else ""
        return f"{head}: {len(self.failures)} FAILED\n{listed}{more}"


def _check_records(kind: str, ids: Sequence[str], records: list, names: Sequence[str], run_id: str,
                   as_of: int, schema: str) -> list[str]:
    problems = []
    expected_meta = {META_RUN_ID: run_id, META_AS_OF: str(as_of), META_SCHEMA: schema}
    for entity_id, record in zip(ids, records, strict=True):
        if record is None:
            problems.append(f"{kind} {entity_id}: no record")
            continue
        missing = [n for n in names if n not in record]
        bad = [n for n in names if n in record and not math.isfinite(record[n])]
        wrong_meta = [f"{k}={record.get(k)!r} (expected {v!r})" for k, v in expected_meta.items() if record.get(k) != v]
        if missing:
            problems.append(f"{kind} {entity_id}: missing {', '.join(missing)}")
        if bad:
            problems.append(f"{kind} {entity_id}: not a finite number: {', '.join(bad)}")
        if wrong_meta:
            problems.append(f"{kind} {entity_id}: {'; '.join(wrong_meta)}")
    return problems


def _transfer_ids(driver: Driver, cypher: Cypher, as_of: int, database: str) -> list[str]:
    query = cypher.render("MATCH (:{A})-[t:{T}]->(:{A}) WHERE t.{ts} <= $as_of RETURN collect(t.{tx}) AS tx")
    with driver.session(database=database, default_access_mode="READ") as session:
        return session.run(query, {"as_of": as_of}).single(strict=True)["tx"]


def _compare(kind: str, entity_id: str, names: Sequence[str], stored: dict | None, values) -> list[str]:
    if stored is None:
        return []  # already reported as missing
    return [f"{kind} {entity_id}: {name} stored {stored.get(name)!r}, recomputed {value!r}"
            for name, value in zip(names, values.tolist(), strict=True)
            if not math.isclose(stored.get(name, math.nan), value, rel_tol=REL_TOL, abs_tol=REL_TOL)]


def verify_run(settings: Settings, run_id: str | None = None, *, sample: int | None = None,
               progress: ProgressFactory | None = None) -> VerifyReport:
    """Check a run's records in Redis against the graph in Neo4j.

    :param run_id: defaults to the ``latest`` run
    :param sample: accounts to recompute, defaults to ``extraction.verify_sample``
    :raises RunNotFoundError: when the run has no manifest
    """
    from fx_workers.extract import extract_batch
    from fx_workers.progress import no_progress

    progress = progress or no_progress
    keys = RedisKeys(settings.redis.prefix)
    reader = FeatureReader(open_redis(settings.redis), keys)
    run_id = run_id or reader.latest()
    if run_id is None:
        raise RunNotFoundError("no verified run yet; pass --run RUN_ID")
    manifest = reader.manifest(run_id)
    if not manifest:
        raise RunNotFoundError(f"run {run_id!r} has no manifest at {keys.run(run_id)}")
    as_of, schema = int(manifest["as_of"]), manifest["schema"]
    report = VerifyReport(run_id)
    cypher = Cypher(settings.graph)
    sample = settings.extraction.verify_sample if sample is None else sample
    with open_driver(settings.neo4j) as driver:
        ids = read_accounts(driver, cypher, settings.neo4j.database)[0].tolist()
        tx_ids = _transfer_ids(driver, cypher, as_of, settings.neo4j.database)
        with progress("verifying", len(ids) + len(tx_ids)) as advance:
            for kind, entity_ids, read, names in (("account", ids, reader.nodes, NODE_FEATURE_NAMES),
                                                  ("transfer", tx_ids, reader.edges, EDGE_FEATURE_NAMES)):
                for start in range(0, len(entity_ids), CHUNK):  # chunked: memory stays flat at 1M records
                    part = entity_ids[start : start + CHUNK]
                    report.failures += _check_records(kind, part, read(part), names, run_id, as_of, schema)
                    advance(len(part))
        report.accounts, report.transfers = len(ids), len(tx_ids)
        chosen = sorted(random.Random(run_id).sample(ids, min(sample, len(ids))))
        if chosen:
            fresh = extract_batch(driver, settings, chosen, as_of)
            for node_id, row, stored in zip(chosen, fresh.node_values, reader.nodes(chosen), strict=True):
                report.failures += _compare("account", node_id, NODE_FEATURE_NAMES, stored, row)
            stored_edges = dict(zip(fresh.tx_ids.tolist(), reader.edges(fresh.tx_ids.tolist()), strict=True))
            for tx_id, row in zip(fresh.tx_ids.tolist(), fresh.edge_values, strict=True):
                report.failures += _compare("transfer", tx_id, EDGE_FEATURE_NAMES, stored_edges[tx_id], row)
        report.sampled = len(chosen)
    return report
