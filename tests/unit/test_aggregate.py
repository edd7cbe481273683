"""Aggregation from signals alone: each batch once, duplicates dropped, conflicts and strangers flagged."""

from __future__ import annotations

import json

import numpy as np

from fx_workers.config import load_settings
from fx_workers.engine.catalogue import EDGE_FEATURE_NAMES, NODE_FEATURE_NAMES
from fx_workers.engine.stats import part_stats
from fx_workers.protocol import BatchStatus, CompletionSignal
from fx_workers.steps.aggregate import Tally, drift_rows, tally
from fx_workers.steps.plan import Plan
from fx_workers.store.records import schema_fields

CURRENT = {"nodes": NODE_FEATURE_NAMES, "edges": EDGE_FEATURE_NAMES}
PLAN = Plan(run_id="r1", fingerprint="0123456789abcdef", mode="airflow", as_of=1, schema_version="s", batch_size=2,
            batches=3, accounts=6, cost=6)


def signal(batch_id: int, seed: int = 0, **change: object) -> CompletionSignal:
    rng = np.random.default_rng(batch_id * 100 + seed)
    fields = {"run_id": "r1", "plan": PLAN.fingerprint, "batch_id": batch_id, "status": BatchStatus.OK,
              "accounts": 2, "transfers": 1, "checksum": f"{seed:032x}",
              "nodes": part_stats(rng.normal(size=(2, len(NODE_FEATURE_NAMES)))),
              "edges": part_stats(rng.normal(size=(1, len(EDGE_FEATURE_NAMES))))}
    return CompletionSignal(**fields | change)


def test_each_batch_counts_once_and_the_statistics_are_the_counted_batches() -> None:
    result = tally(PLAN, [signal(0), signal(1), signal(0), signal(2), signal(1)])
    assert sorted(result.counted) == [0, 1, 2] and result.duplicates == 2
    fields = result.manifest_fields(result.merged())
    assert (fields["accounts_written"], fields["transfers"]) == (6, 3)
    assert json.loads(fields["batch_table"]) == [[2, 1, f"{0:032x}"]] * 3
    stats = json.loads(fields["stats"])
    assert stats["nodes"]["rows"] == 6 and stats["edges"]["rows"] == 3
    expected = sum(np.asarray(signal(b).nodes.sum) for b in range(3))
    assert np.allclose(stats["nodes"]["sum"], expected)


def test_a_copy_with_other_content_is_a_conflict() -> None:
    result = tally(PLAN, [signal(0), signal(0, seed=1)])
    assert dict(result.conflicts) == {0: {f"{0:032x}", f"{1:032x}"}}
    assert json.loads(result.manifest_fields(result.merged())["conflicts"]) == {"0": sorted({f"{0:032x}", f"{1:032x}"})}


def test_signals_of_another_plan_or_run_or_beyond_the_plan_are_not_counted() -> None:
    result = tally(PLAN, [signal(0, plan="fedcba9876543210"), signal(0, run_id="r2"), signal(7)])
    assert result.counted == {} and result.foreign == 3
    assert json.loads(result.manifest_fields(result.merged())["batch_table"]) == [None, None, None]


def test_a_failure_counts_only_until_a_copy_succeeds() -> None:
    failed = signal(1, status=BatchStatus.FAILED, checksum="", nodes=None, edges=None, accounts=0, transfers=0,
                    error="neo4j down")
    result = tally(PLAN, [failed])
    assert list(result.failed) == [1]
    result.add(signal(1))
    result.add(failed)
    assert result.failed == {} and list(result.counted) == [1]


def test_statistics_of_another_catalogue_are_refused() -> None:
    result = Tally(PLAN)
    result.add(signal(0, nodes=part_stats(np.zeros((2, 3)))))
    result.add(signal(1, edges=part_stats(np.zeros((1, 3)))))  # good nodes, odd edges: neither part is merged
    assert (result.counted, result.foreign) == ({}, 2)
    assert {part: stats.rows for part, stats in result.merged().items()} == {"nodes": 0, "edges": 0}


class PreviousRun:
    """The registry as ``drift_rows`` sees it: one published run, ``p1``, with this manifest."""

    def __init__(self, manifest: dict[str, str]) -> None:
        self._manifest = manifest

    def latest(self) -> str:
        return "p1"

    def manifest(self, run_id: str) -> dict[str, str]:
        assert run_id == "p1"
        return self._manifest


def test_drift_compares_by_name_so_a_new_feature_skips_only_itself() -> None:
    rng = np.random.default_rng(4)
    nodes, edges = rng.normal(size=(500, len(NODE_FEATURE_NAMES))), rng.normal(size=(300, len(EDGE_FEATURE_NAMES)))
    stats = {"nodes": part_stats(nodes), "edges": part_stats(edges)}
    # the previous run had neither the first node feature nor the last edge feature, and its nodes in reverse order
    old_nodes, old_edges = list(NODE_FEATURE_NAMES[1:])[::-1], list(EDGE_FEATURE_NAMES[:-1])
    previous = {"nodes": part_stats(nodes[:, 1:][:, ::-1]), "edges": part_stats(edges[:, :-1])}
    manifest = {"stats": json.dumps({p: s.model_dump(mode="json") for p, s in previous.items()}),
                **schema_fields(old_nodes, old_edges)}
    against, rows = drift_rows(load_settings(environ={}), PreviousRun(manifest), "r1", stats, CURRENT)
    assert against == "p1"
    assert [row.name for row in rows] == [*NODE_FEATURE_NAMES[1:], *EDGE_FEATURE_NAMES[:-1]]
    assert {row.verdict for row in rows} == {"ok"} and {row.psi for row in rows} == {0.0}

    unnamed = {"stats": manifest["stats"]}  # a run of an fx that stored no names, with other counts
    assert drift_rows(load_settings(environ={}), PreviousRun(unnamed), "r1", stats, CURRENT) == ("", [])
