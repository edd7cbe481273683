"""The run manifest: typed in Python, readable fields in its Redis hash, and the same after a round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fx_workers.engine.stats import part_stats
from fx_workers.store.manifest import Aggregation, DriftRow, RunManifest
from fx_workers.store.records import RecordSchema
from fx_workers.store.runs import RunError, RunStatus

MANIFEST = RunManifest(run_id="r1", mode="airflow", as_of=1_700_000_000, schema_version="v3", fingerprint="0" * 16,
                       batches=2, accounts=5, batch_size=3, started_at="2026-12-07T05:00:00+00:00",
                       namespace="fx:r1:", dag_run_id="manual__1", records=RecordSchema(("a", "b"), ("c",)))
AGGREGATION = Aggregation(
    accounts_written=5, transfers=4, batches_counted=1, duplicates=2, foreign_signals=1,
    batch_table=[(3, 4, "f" * 32), None], conflicts={}, failed_batches={1: "worker 1: boom"},
    stats={"nodes": part_stats(np.array([[1.0, np.nan], [2.0, 3.0]])), "edges": part_stats(np.zeros((4, 1)))},
    drift_against="r0", drift=[DriftRow(name="a", nan_rate_change=0.0, mean_shift_sd=0.1, psi=0.0, verdict="ok")],
    drift_verdict="ok",
)


def test_the_manifest_round_trips_through_its_hash_fields() -> None:
    fields = MANIFEST.fields() | AGGREGATION.fields() | {"created": "1.000", "topology": "0-16383=abc@1"}
    assert all(isinstance(value, str) for value in fields.values())
    read = RunManifest.from_fields("r1", fields)
    assert read.model_copy(update={"aggregation": None}) == MANIFEST
    assert read.aggregation == AGGREGATION and read.records == MANIFEST.records


def test_the_hash_stays_readable_and_keeps_its_field_names() -> None:
    """``fx runs show`` prints these fields as they are; scripts and the fault tests read them by name."""
    fields = MANIFEST.fields() | AGGREGATION.fields()
    assert {k: fields[k] for k in ("status", "plan", "schema", "as_of", "batches", "mode", "dag_run_id")} == {
        "status": "running", "plan": "0" * 16, "schema": "v3", "as_of": "1700000000", "batches": "2",
        "mode": "airflow", "dag_run_id": "manual__1"}
    assert (fields["conflicts"], fields["failed_batches"]) == ("{}", '{"1": "worker 1: boom"}')
    assert json.loads(fields["batch_table"]) == [[3, 4, "f" * 32], None]
    assert json.loads(fields["node_names"]) == ["a", "b"] and fields["encoding"]
    assert json.loads(fields["stats"])["nodes"]["nan"] == [0, 1] and fields["drift_verdict"] == "ok"


def test_a_manifest_without_aggregation_or_dag_run() -> None:
    fields = MANIFEST.model_copy(update={"dag_run_id": None}).fields() | {"status": RunStatus.VERIFIED}
    assert "dag_run_id" not in fields
    read = RunManifest.from_fields("r1", fields)
    assert (read.aggregation, read.dag_run_id, read.status) == (None, None, RunStatus.VERIFIED)


def test_a_missing_or_foreign_manifest_is_a_run_error() -> None:
    with pytest.raises(RunError, match="no manifest"):
        RunManifest.from_fields("r9", {})
    unnamed = {k: v for k, v in MANIFEST.fields().items() if k != "node_names"}
    with pytest.raises(RunError, match="record schema"):
        RunManifest.from_fields("r1", unnamed)
