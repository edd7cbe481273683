"""The run's cache of the batch read: every account's counts, selected per batch and read once it pays."""

from __future__ import annotations

import numpy as np

from fx_workers.engine.batch import Counts, Transfers
from fx_workers.engine.graph import WindowCache


def test_counts_are_selected_by_id_and_refused_when_one_is_missing() -> None:
    counts = Counts.of(np.array(["c", "a", "b"]), np.array([3, 1, 2]), np.array([30, 10, 20]))
    chosen = counts.select(np.array(["a", "c"]))
    assert chosen is not None and chosen.out.tolist() == [1, 3] and chosen.inc.tolist() == [10, 30]
    assert counts.select(np.array(["a", "d"])) is None and counts.select(np.array(["0"])) is None
    assert counts.select(np.array([], dtype=str)) is not None


def test_every_account_is_read_once_the_batches_would_have_cost_as_much() -> None:
    reads: list[int] = []

    def graph() -> tuple[int, int]:
        reads.append(1)
        return 10, 1000

    cache = WindowCache().bind("r1")
    decisions = []
    for _ in range(3):  # degrees: a counterparty costs itself, every account the graph's accounts
        decisions.append(cache.counts_whole(4, graph, filtered=False))
        cache.rent(4, None)
    assert decisions == [False, False, True]
    assert len(reads) == 1  # the graph's size is read once per run
    assert not cache.bind("r2").counts_whole(4, graph, filtered=False) and len(reads) == 2  # another run: again


def test_filtered_counts_weigh_the_relationships_each_read_goes_through() -> None:
    """Filtered on ts, every account's counts go through every relationship from both ends (10 + 2 x 100 = 210
    here); a batch's counterparties' through theirs: the busy ones, 20 relationships each here, so the third
    batch buys (84 + 84 + 84 >= 210), where counting accounts alone would rent 50 batches (4 x 50 >= 210)."""
    cache = WindowCache().bind("r1")
    decisions = []
    for _ in range(3):
        decisions.append(cache.counts_whole(4, lambda: (10, 100), filtered=True))
        cache.rent(4, 80)
    assert decisions == [False, False, True] and cache.spent == 3 * 84
    first = WindowCache().bind("r1")  # before a read, a batch's counterparties cost themselves
    assert not first.counts_whole(200, lambda: (10, 100), filtered=True)
    assert first.counts_whole(210, lambda: (10, 100), filtered=True)


def test_counts_too_big_to_keep_are_not_read_again() -> None:
    cache = WindowCache(max_bytes=10).bind("r1")
    assert cache.counts_whole(10, lambda: (10, 0), filtered=False)
    cache.keep_counts(Counts.of(np.array(["a", "b"]), np.array([1, 2]), np.array([3, 4])))
    assert cache.counts is None and not cache.counts_whole(100, lambda: (10, 0), filtered=False)
    more = WindowCache(max_rows=5).bind("r1")  # more accounts than rows
    assert not more.counts_whole(100, lambda: (10, 0), filtered=False)


def test_whether_transfers_are_after_as_of_is_asked_once_per_run() -> None:
    asked: list[int] = []

    def ask() -> bool:
        asked.append(1)
        return True

    cache = WindowCache().bind("r1")
    assert [cache.transfers_after(100, ask) for _ in range(3)] == [True] * 3 and len(asked) == 1
    assert cache.bind("r1").transfers_after(100, ask) and len(asked) == 1  # the same run: not again
    assert cache.bind("r2").transfers_after(100, ask) and len(asked) == 2  # another run asks again
    assert cache.transfers_after(50, ask) and len(asked) == 3  # another as_of (not a run's) is not taken for it


def test_no_transfer_after_as_of_is_asked_again_by_each_batch() -> None:
    """Transfers may still be arriving: a batch that trusted an earlier no would count one after ``as_of``."""
    answers = [False, False, True]
    asked: list[bool] = []

    def ask() -> bool:
        asked.append(answers[len(asked)])
        return asked[-1]

    cache = WindowCache().bind("r1")
    assert [cache.transfers_after(100, ask) for _ in range(4)] == [False, False, True, True]
    assert asked == [False, False, True]  # the yes is kept


def test_a_window_too_big_with_its_packed_ids_is_not_kept() -> None:
    """The packed ids (16 bytes a transfer) count against ``max_bytes``, as the cache keeps them too."""
    window = Transfers(np.array(["a", "b"]), np.array(["b", "c"]), np.array([1, 2], dtype=np.int64))
    columns = window.payer.nbytes + window.payee.nbytes + window.ts.nbytes
    assert window.nbytes == columns + 2 * 16
    cache = WindowCache(max_bytes=columns).bind("r1")
    cache.keep(window)
    assert cache.window is None
    cache = WindowCache(max_bytes=columns + 32).bind("r1")
    cache.keep(window)
    assert cache.window is window
