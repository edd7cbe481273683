"""Cost-balanced batches (the longest-processing-time rule) and read-ahead."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from fx_workers.steps.local import prefetched
from fx_workers.steps.plan import lpt_batches


def test_every_account_in_exactly_one_batch_and_deterministic() -> None:
    rng = np.random.default_rng(3)
    ids = np.array([f"A{i:05d}" for i in range(1000)])
    costs = rng.pareto(1.2, size=1000).astype(np.int64) * 10
    batches = lpt_batches(ids, costs, 64)
    assert sorted(i for b in batches for i in b) == ids.tolist()
    assert len(batches) == 16
    assert lpt_batches(ids, costs, 64) == batches
    assert all(b == sorted(b) for b in batches)


def test_a_hub_gets_a_batch_of_its_own_and_the_rest_are_balanced() -> None:
    ids = np.array([f"A{i:03d}" for i in range(100)])
    costs = np.ones(100, dtype=np.int64) * 10
    costs[42] = 1000
    batches = lpt_batches(ids, costs, 10)
    hub_batch = next(b for b in batches if "A042" in b)
    assert hub_batch == ["A042"]
    loads = [sum(int(costs[int(i[1:])]) + 1 for i in b) for b in batches if b != hub_batch]
    assert max(loads) - min(loads) <= 11  # within one account's cost


def test_no_batch_gets_more_than_twice_the_batch_size() -> None:
    ids = np.array([f"A{i:03d}" for i in range(100)])
    costs = np.ones(100, dtype=np.int64)
    costs[:8] = 1000  # eight hubs: without the cap the 92 light accounts would crowd into two batches
    batches = lpt_batches(ids, costs, 10)
    assert len(batches) == 10 and max(len(b) for b in batches) == 20
    assert sorted(i for b in batches for i in b) == ids.tolist()


def test_no_accounts_no_batches() -> None:
    assert lpt_batches(np.array([], dtype=str), np.array([], dtype=np.int64), 10) == []


def test_prefetched_keeps_order_and_reads_ahead_in_another_thread() -> None:
    threads = set()

    def read(item: int) -> int:
        threads.add(threading.current_thread().name)
        return item * 10

    assert list(prefetched(read, [3, 1, 2])) == [(3, 30), (1, 10), (2, 20)]
    assert list(prefetched(read, [])) == []
    assert threads and all(name.startswith("fx-read") for name in threads)


def test_prefetched_raises_the_readers_error() -> None:
    def read(item: int) -> int:
        if item == 2:
            raise ValueError("neo4j went away")
        return item

    results = prefetched(read, [1, 2, 3])
    assert next(results) == (1, 1)
    with pytest.raises(ValueError, match="went away"):
        next(results)
