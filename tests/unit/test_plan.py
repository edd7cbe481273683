"""Cost-balanced batch planning."""

from __future__ import annotations

import numpy as np

from fx_workers.extract import plan_batches


def test_every_account_in_exactly_one_batch_and_deterministic() -> None:
    rng = np.random.default_rng(3)
    ids = np.array([f"A{i:05d}" for i in range(1000)])
    costs = rng.pareto(1.2, size=1000).astype(np.int64) * 10
    batches = plan_batches(ids, costs, 64)
    assert sorted(i for b in batches for i in b) == ids.tolist()
    assert len(batches) == 16
    assert plan_batches(ids, costs, 64) == batches
    assert all(b == sorted(b) for b in batches)


def test_a_hub_gets_a_batch_of_its_own_and_the_rest_are_balanced() -> None:
    ids = np.array([f"A{i:03d}" for i in range(100)])
    costs = np.ones(100, dtype=np.int64) * 10
    costs[42] = 1000
    batches = plan_batches(ids, costs, 10)
    hub_batch = next(b for b in batches if "A042" in b)
    assert hub_batch == ["A042"]
    loads = [sum(int(costs[int(i[1:])]) + 1 for i in b) for b in batches if b != hub_batch]
    assert max(loads) - min(loads) <= 11  # within one account's cost


def test_no_accounts_no_batches() -> None:
    assert plan_batches(np.array([], dtype=str), np.array([], dtype=np.int64), 10) == []
