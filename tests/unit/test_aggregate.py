"""Aggregation: the ledger recorded as the manifest's aggregation, the trigger's ledger taken over only when
it is this plan's, and drift against the previous run by name."""

from __future__ import annotations

import numpy as np

from fx_workers.config import load_settings
from fx_workers.engine.catalogue import EDGE_FEATURE_NAMES, NODE_FEATURE_NAMES
from fx_workers.engine.stats import FeatureDrift, part_stats
from fx_workers.protocol import BatchStatus, CompletionSignal
from fx_workers.steps.aggregate import aggregation, drift_rows, resumed
from fx_workers.steps.plan import Plan
from fx_workers.store.manifest import Aggregation, RunManifest
from fx_workers.store.records import RecordSchema
from fx_workers.store.signals import SignalLedger

CURRENT = {"nodes": NODE_FEATURE_NAMES, "edges": EDGE_FEATURE_NAMES}
WIDTHS = {"nodes": len(NODE_FEATURE_NAMES), "edges": len(EDGE_FEATURE_NAMES)}
PLAN = Plan(run_id="r1", fingerprint="0123456789abcdef", mode="airflow", as_of=1, schema_version="s", batch_size=2,
            batches=3, accounts=6, cost=6, start_offsets={"0": 4})


def signal(batch_id: int, seed: int = 0, **change: object) -> CompletionSignal:
    rng = np.random.default_rng(batch_id * 100 + seed)
    fields = {"run_id": "r1", "plan": PLAN.fingerprint, "batch_id": batch_id, "status": BatchStatus.OK,
              "accounts": 2, "transfers": 1, "checksum": f"{seed:032x}",
              "nodes": part_stats(rng.normal(size=(2, len(NODE_FEATURE_NAMES)))),
              "edges": part_stats(rng.normal(size=(1, len(EDGE_FEATURE_NAMES))))}
    return CompletionSignal(**fields | change)


def ledger(*signals: CompletionSignal) -> SignalLedger:
    result = SignalLedger(run_id=PLAN.run_id, plan=PLAN.fingerprint, batches=PLAN.batches, offsets={0: 4})
    for each in signals:
        result.add(each)
    return result


def test_the_aggregation_is_the_ledger_in_the_manifest() -> None:
    failed = signal(2, status=BatchStatus.FAILED, checksum="", nodes=None, edges=None, accounts=0, transfers=0,
                    error="boom", worker_id="w")
    result = aggregation(ledger(signal(0), signal(1), signal(0), signal(0, seed=1), failed), "", [])
    assert (result.accounts_written, result.transfers, result.batches_counted, result.duplicates) == (4, 2, 2, 1)
    assert result.batch_table == [(2, 1, f"{0:032x}"), (2, 1, f"{0:032x}"), None]
    assert result.conflicts == {0: [f"{0:032x}", f"{1:032x}"]} and result.failed_batches == {2: "worker w: boom"}
    assert result.stats["nodes"].rows == 4 and result.drift_verdict == "none"
    assert Aggregation.model_validate(result.fields()) == result


def test_the_drift_verdict_is_the_worst_row() -> None:
    rows = [FeatureDrift("a", 0.0, 0.0, 0.0, "ok"), FeatureDrift("b", 0.0, 9.0, 0.0, "warn")]
    assert aggregation(ledger(), "p1", rows).drift_verdict == "warn"
    assert aggregation(ledger(), "p1", [*rows, FeatureDrift("c", 1.0, 0.0, 0.0, "fail")]).drift_verdict == "fail"
    assert aggregation(ledger(), "p1", []).drift_verdict == "ok"


def test_the_triggers_ledger_is_taken_over_only_for_this_plan_and_these_features() -> None:
    counted = ledger(signal(0), signal(1), signal(2))
    counted.offsets[0] = 9
    event = {"status": "done", "ledger": counted.model_dump(mode="json")}
    taken = resumed(event, PLAN, WIDTHS)
    assert taken == counted and taken is not None and taken.offsets == {0: 9}
    other_plan = {"ledger": counted.model_copy(update={"plan": "fedcba9876543210"}).model_dump(mode="json")}
    other_features = {"ledger": counted.model_copy(update={"widths": {"nodes": 3, "edges": 1}}).model_dump()}
    for missing in (None, {"status": "done"}, other_plan, other_features, {"ledger": {"run_id": "r1"}}):
        assert resumed(missing, PLAN, WIDTHS) is None


class PreviousRun:
    """The registry as ``drift_rows`` sees it: one published run, ``p1``, with this manifest."""

    def __init__(self, manifest: dict[str, str]) -> None:
        self._manifest = manifest

    def latest(self) -> str:
        return "p1"

    def manifest(self, run_id: str) -> dict[str, str]:
        assert run_id == "p1"
        return self._manifest


def previous_run(stats: dict, nodes: list[str], edges: list[str]) -> dict[str, str]:
    manifest = RunManifest(run_id="p1", mode="airflow", as_of=1, schema_version="old", fingerprint="f" * 16,
                           batches=1, accounts=stats["nodes"].rows, batch_size=1, started_at="", namespace="fx:p1:",
                           records=RecordSchema(tuple(nodes), tuple(edges)))
    return manifest.fields() | aggregation(ledger(), "", []).model_copy(update={"stats": stats}).fields()


def test_drift_compares_by_name_so_a_new_feature_skips_only_itself() -> None:
    rng = np.random.default_rng(4)
    nodes, edges = rng.normal(size=(500, len(NODE_FEATURE_NAMES))), rng.normal(size=(300, len(EDGE_FEATURE_NAMES)))
    stats = {"nodes": part_stats(nodes), "edges": part_stats(edges)}
    # the previous run had neither the first node feature nor the last edge feature, and its nodes in reverse order
    old_nodes, old_edges = list(NODE_FEATURE_NAMES[1:])[::-1], list(EDGE_FEATURE_NAMES[:-1])
    previous = {"nodes": part_stats(nodes[:, 1:][:, ::-1]), "edges": part_stats(edges[:, :-1])}
    manifest = previous_run(previous, old_nodes, old_edges)
    against, rows = drift_rows(load_settings(environ={}), PreviousRun(manifest), "r1", stats, CURRENT)
    assert against == "p1"
    assert [row.name for row in rows] == [*NODE_FEATURE_NAMES[1:], *EDGE_FEATURE_NAMES[:-1]]
    assert {row.verdict for row in rows} == {"ok"} and {row.psi for row in rows} == {0.0}

    unnamed = {k: v for k, v in manifest.items() if k != "node_names"}  # a run of an fx that stored no names
    assert drift_rows(load_settings(environ={}), PreviousRun(unnamed), "r1", stats, CURRENT) == ("", [])
    misnamed = previous_run(previous, old_nodes[:3], old_edges)  # names that do not fit its statistics
    assert drift_rows(load_settings(environ={}), PreviousRun(misnamed), "r1", stats, CURRENT) == ("", [])
