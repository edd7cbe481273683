"""The usefulness benchmark's protocol: cutoffs, the point-in-time join, the split and the threshold."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.usefulness import feature_sets
from bench.usefulness_data import SPLIT, WEEK, Snapshot, Transfers, cutoffs, joined, snapshot_index
from bench.usefulness_model import average_precision, best_threshold, f1_at, split_rows


def epoch(*day: int) -> int:
    return int(datetime(*day, tzinfo=UTC).timestamp())


def test_cutoffs_on_the_amlsim_range_are_weekly_from_the_split() -> None:
    cuts = cutoffs(epoch(2017, 1, 1) + 194, epoch(2017, 5, 30) + 80_000)
    assert [datetime.fromtimestamp(int(c), UTC).date().isoformat() for c in (cuts[0], cuts[-1])] == \
        ["2017-01-14", "2017-05-27"]
    assert len(cuts) == 20
    assert SPLIT in cuts
    assert set(np.diff(cuts)) == {WEEK}


def test_cutoffs_need_a_full_week_before_and_a_transfer_after() -> None:
    assert cutoffs(SPLIT - WEEK, SPLIT + 1)[0] == SPLIT  # exactly 7 days of data before it: kept
    assert cutoffs(SPLIT - WEEK + 1, SPLIT + WEEK + 1)[0] == SPLIT + WEEK
    assert cutoffs(SPLIT - 3 * WEEK, SPLIT)[-1] == SPLIT - WEEK  # the last transfer at a cutoff: not before it


def test_snapshot_index_takes_the_latest_cutoff_strictly_before() -> None:
    cuts = np.array([100, 200, 300])
    ts = np.array([50, 100, 101, 200, 250, 300, 301, 10_000])
    assert snapshot_index(ts, cuts).tolist() == [-1, -1, 0, 0, 1, 1, 2, 2]


@given(st.lists(st.integers(0, 5000), min_size=1, max_size=50, unique=True),
       st.lists(st.integers(-100, 6000), min_size=1, max_size=50))
def test_snapshot_index_never_uses_a_cutoff_at_or_after_the_transfer(cut_list: list[int], ts_list: list[int]) -> None:
    cuts, ts = np.array(sorted(cut_list)), np.array(ts_list)
    which = snapshot_index(ts, cuts)
    scored = which >= 0
    assert (cuts[which[scored]] < ts[scored]).all()
    later = np.minimum(which + 1, len(cuts) - 1)
    assert ((which + 1 == len(cuts)) | (cuts[later] >= ts)).all()  # and no later one would do
    assert (ts[~scored] <= cuts[0]).all()


def _toy() -> tuple[Transfers, list[Snapshot]]:
    """Accounts a, b; transfers a→b at 150 and 250, b→a at 260, a→b at 350; cutoffs 100, 200, 300.
    Each snapshot's node feature is its own cutoff, so a joined value says which cutoff it came from."""
    ts = np.array([150, 250, 260, 350])
    transfers = Transfers(
        tx_id=np.array(["t1", "t2", "t3", "t4"]), payer=np.array([0, 0, 1, 0]), payee=np.array([1, 1, 0, 1]),
        accounts=np.array(["a", "b"]), amount=np.array([10.0, 20.0, 30.0, 40.0]), ts=ts,
        currency=np.array(["USD"] * 4), channel=np.array(["W"] * 4), label=np.zeros(4, bool),
        typology=np.array([""] * 4, dtype=object))
    snaps = []
    for cutoff in (100, 200, 300):
        known = np.flatnonzero(ts <= cutoff)  # what an edge export as of the cutoff holds
        pair = transfers.payer[known] * 2 + transfers.payee[known]
        count = np.array([(pair == p).sum() for p in pair], dtype=float)
        total = np.array([transfers.amount[known][pair == p].sum() for p in pair])
        snaps.append(Snapshot(cutoff, f"run{cutoff}", ("in_count", "seen_at"), np.array([[0.0, cutoff]] * 2), known,
                              {"pair_count": count, "pair_amount_sum": total}))
    return transfers, snaps


def test_join_reads_each_transfer_as_of_the_cutoff_before_it() -> None:
    transfers, snaps = _toy()
    cuts = np.array([s.cutoff for s in snaps])
    rows = np.arange(4)
    columns = joined(transfers, snaps, rows, snapshot_index(transfers.ts, cuts))
    assert columns["payer.seen_at"].tolist() == [100, 200, 200, 300]
    assert (columns["payee.seen_at"] < transfers.ts).all()
    # pair features count only transfers at or before that cutoff: t2 sees t1 only, t4 sees t1 and t2
    assert columns["pair.pair_count"].tolist() == [0, 1, 0, 2]
    assert columns["pair.pair_amount_sum"].tolist() == [0, 10, 0, 30]
    # reciprocated: t3 (b→a at 260, as of 200) sees a→b; t4 (as of 300) sees b→a at 260
    assert columns["pair.reciprocated"].tolist() == [0, 0, 1, 1]


def test_join_with_extra_node_columns() -> None:
    transfers, snaps = _toy()
    extra = {j: {"x": np.array([10.0 * j, 10.0 * j + 1])} for j in range(3)}
    columns = joined(transfers, snaps, np.arange(4), snapshot_index(transfers.ts, np.array([100, 200, 300])),
                     lambda j: extra[j])
    assert columns["payer.x"].tolist() == [0, 10, 11, 20]


def test_split_takes_validation_from_the_end_of_training() -> None:
    ts = np.arange(20)
    split = split_rows(ts, 10)
    assert np.flatnonzero(split.fit).tolist() == list(range(8))
    assert np.flatnonzero(split.validation).tolist() == [8, 9]
    assert np.flatnonzero(split.test).tolist() == list(range(10, 20))
    with pytest.raises(ValueError, match="sorted"):
        split_rows(ts[::-1], 10)


def test_best_threshold_maximises_f1_without_splitting_ties() -> None:
    y = np.array([1, 1, 0, 1, 0, 0], dtype=bool)
    score = np.array([0.9, 0.8, 0.7, 0.6, 0.2, 0.1])
    threshold, f1 = best_threshold(y, score)
    assert (threshold, f1) == (0.6, pytest.approx(6 / 7))  # 3 TP, 1 FP: 2·3 / (4 + 3)
    assert f1_at(y, score, threshold) == pytest.approx(f1)
    tied = np.array([0.9, 0.5, 0.5, 0.1, 0.1, 0.1])  # the 0.5 pair holds one positive and one negative
    threshold, f1 = best_threshold(y, tied)
    assert f1 == pytest.approx(f1_at(y, tied, threshold))
    assert best_threshold(np.zeros(3, bool), np.array([0.1, 0.2, 0.3])) == (float("inf"), 0.0)


@given(st.lists(st.tuples(st.booleans(), st.integers(0, 20)), min_size=1, max_size=60))
def test_best_threshold_is_the_best_of_every_candidate(pairs: list[tuple[bool, int]]) -> None:
    y = np.array([p[0] for p in pairs])
    score = np.array([p[1] / 20 for p in pairs])
    threshold, f1 = best_threshold(y, score)
    if y.any():
        assert f1 == pytest.approx(f1_at(y, score, threshold))
        assert f1 >= max(f1_at(y, score, t) for t in np.unique(score)) - 1e-12


def test_average_precision() -> None:
    assert average_precision(np.array([0, 0, 1, 1], bool), np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(5 / 6)
    assert average_precision(np.array([1, 0, 1], bool), np.array([0.9, 0.5, 0.8])) == 1.0


def test_feature_sets_split_fx_on_the_pattern_family() -> None:
    columns = ["amount", "payer.in_count", "payer.out_count", "payee.in_count", "payee.out_count", "payer.fan_in_7d",
               "payee.fan_in_7d", "pair.pair_count", "payer.gfp_out_0"]
    sets = feature_sets(columns, ["amount"], {"fan_in_7d"}, with_gfp=True)
    assert sets["counts"] == columns[:5]
    assert "payer.fan_in_7d" not in sets["fx_base"] and "payer.fan_in_7d" in sets["fx"]
    assert set(sets["fx"]) - set(sets["fx_base"]) == {"payer.fan_in_7d", "payee.fan_in_7d"}
    assert sets["gfp"] == ["amount", "payer.gfp_out_0"]
    empty = feature_sets(columns, ["amount"], set(), with_gfp=False)
    assert empty["fx"] == empty["fx_base"] and "gfp" not in empty
