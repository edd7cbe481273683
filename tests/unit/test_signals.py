"""The signal ledger's rule: a batch done once stays done, each batch counted once, strangers set aside."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import numpy as np

from fx_workers.engine.stats import part_stats
from fx_workers.protocol import BatchStatus, CompletionSignal
from fx_workers.store.signals import SignalLedger

RUN, PLAN = "r1", "0123456789abcdef"


def ledger(**fields: object) -> SignalLedger:
    return SignalLedger(run_id=RUN, plan=PLAN, batches=3, **fields)


def signal(batch_id: int, seed: int = 0, **change: object) -> CompletionSignal:
    rng = np.random.default_rng(batch_id * 100 + seed)
    fields = {"run_id": RUN, "plan": PLAN, "batch_id": batch_id, "status": BatchStatus.OK, "worker_id": "1",
              "accounts": 2, "transfers": 1, "checksum": f"{seed:032x}",
              "nodes": part_stats(rng.normal(size=(2, 4))), "edges": part_stats(rng.normal(size=(1, 2)))}
    return CompletionSignal(**fields | change)


def failure(batch_id: int, *, transient: bool = False) -> CompletionSignal:
    return signal(batch_id, status=BatchStatus.FAILED, checksum="", nodes=None, edges=None, accounts=0, transfers=0,
                  error="neo4j down", transient=transient)


def counted(*signals: CompletionSignal, **fields: object) -> SignalLedger:
    result = ledger(**fields)
    for each in signals:
        result.add(each)
    return result


def test_each_batch_counts_once_and_the_statistics_are_the_counted_batches() -> None:
    result = counted(signal(0), signal(1), signal(0), signal(2), signal(1))
    assert result.complete and result.missing() == []
    assert result.counted == {b: (2, 1, f"{0:032x}") for b in range(3)} and result.duplicates == 2
    whole = part_stats(np.concatenate([np.random.default_rng(b * 100).normal(size=(2, 4)) for b in range(3)]))
    merged = result.stats["nodes"]
    assert (merged.rows, merged.nan, merged.min, merged.max, merged.hist) == (
        whole.rows, whole.nan, whole.min, whole.max, whole.hist)
    assert np.allclose(merged.sum, whole.sum) and result.stats["edges"].rows == 3


def test_a_copy_with_other_content_is_a_conflict_and_the_first_copy_stays_counted() -> None:
    result = counted(signal(0), signal(0, seed=1), signal(0, seed=2))
    assert result.conflicts == {0: sorted(f"{s:032x}" for s in range(3))}
    assert result.counted[0][2] == f"{0:032x}" and result.stats["nodes"].rows == 2


def test_signals_of_another_plan_or_run_or_beyond_the_plan_are_not_counted() -> None:
    result = counted(signal(0, plan="fedcba9876543210"), signal(0, run_id="r2"), signal(7))
    assert (result.counted, result.foreign, result.stats) == ({}, 3, {})


def test_a_failure_counts_only_until_a_copy_succeeds_and_never_after() -> None:
    result = counted(failure(1), failure(2, transient=True))
    assert (result.failed, result.retryable) == ({1: "worker 1: neo4j down"}, {2: "worker 1: neo4j down"})
    result.add(signal(1))
    result.add(failure(1))
    result.add(signal(2))
    assert (result.failed, result.retryable, sorted(result.counted)) == ({}, {}, [1, 2])


def test_failures_answered_by_a_resend_no_longer_count() -> None:
    result = counted(failure(1, transient=True), resent={1: 1})
    assert (result.retryable, result.failures) == ({}, {1: 1})
    result.add(failure(1, transient=True))
    assert (result.retryable, result.failures) == ({1: "worker 1: neo4j down"}, {1: 2})


def test_statistics_of_another_catalogue_are_refused_whole() -> None:
    result = counted(signal(0), signal(1, nodes=part_stats(np.zeros((2, 3)))),
                     signal(2, edges=part_stats(np.zeros((1, 3)))))  # good nodes, odd edges: neither is merged
    assert (sorted(result.counted), result.foreign, result.stats["nodes"].rows) == ([0], 2, 2)
    pinned = counted(signal(0), widths={"nodes": 5, "edges": 2})
    assert (pinned.counted, pinned.foreign) == ({}, 1)


def test_the_ledger_survives_json_and_counts_on() -> None:
    before = counted(signal(0), signal(0, seed=1), failure(1), offsets={0: 10, 1: 0})
    after = SignalLedger.model_validate_json(before.model_dump_json())
    assert after == before
    after.add(signal(1))
    assert (sorted(after.counted), after.failed) == ([0, 1], {})


def test_take_decodes_with_validation_and_moves_on() -> None:
    """A message that does not validate is skipped (its offset read); a valid one is counted."""

    def message(value: bytes) -> SimpleNamespace:
        return SimpleNamespace(error=lambda: None, headers=signal(0).headers, value=lambda: value,
                               offset=lambda: 41, partition=lambda: 1)

    result = ledger(offsets={1: 0})
    assert result.take(message(b'{"v": 2, "kind": "completion"}')) is None
    assert (result.counted, result.offsets) == ({}, {1: 42})
    assert result.take(message(signal(0).encode())) is not None and list(result.counted) == [0]


def test_the_ledger_imports_no_numpy() -> None:
    """The triggerer imports it for every deferred wait."""
    code = "import sys, fx_workers.store.signals; print('numpy' in sys.modules)"
    out = subprocess.run((sys.executable, "-c", code), capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
