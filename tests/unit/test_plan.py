"""Planning: request keys, batch counts, the plan's fingerprint and cost-balanced batches."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from fx_workers.steps.plan import balanced_batches, request_key
from fx_workers.store.plan_store import fingerprint


@pytest.mark.parametrize("partitions", [1, 3, 4, 7])
def test_request_keys_go_round_robin_under_the_crc32_partitioner(partitions: int) -> None:
    keys = [request_key(batch_id, partitions) for batch_id in range(40)]
    assert [zlib.crc32(key) % partitions for key in keys] == [b % partitions for b in range(40)]
    assert len(set(keys)) == len(keys)


@pytest.mark.parametrize(("accounts", "batch_size", "count"), [(100, 30, 4), (11, 3, 4), (13, 10, 4), (1, 5, 1)])
def test_batches_come_in_multiples_of_the_partitions_when_they_can(accounts: int, batch_size: int,
                                                                   count: int) -> None:
    ids = np.array([f"a{i:03d}" for i in range(accounts)])
    costs = np.arange(accounts)[::-1]
    batches = balanced_batches(ids, costs, batch_size, partitions=4)
    assert len(batches) == count
    assert max(len(b) for b in batches) <= batch_size
    assert sorted(i for b in batches for i in b) == ids.tolist()


def test_fingerprint_names_exactly_one_plan() -> None:
    batches = [["a", "b"], ["c"]]
    assert fingerprint("r1", 5, "s1", batches) == fingerprint("r1", 5, "s1", [["a", "b"], ["c"]])
    variants = [("r2", 5, "s1", batches), ("r1", 6, "s1", batches), ("r1", 5, "s2", batches),
                ("r1", 5, "s1", [["c"], ["a", "b"]]), ("r1", 5, "s1", [["a"], ["b", "c"]]),
                ("r1", 5, "s1", [["a", "b", "c"]])]
    assert len({fingerprint("r1", 5, "s1", batches), *(fingerprint(*v) for v in variants)}) == 7
