"""Batch statistics merge into the run's exactly, and drift is measured against the previous run."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fx_workers.config import DriftConfig
from fx_workers.engine.stats import BIN_EDGES, BINS, drift, drift_by_name, part_stats, psi, summarise
from fx_workers.store.signals import merge_stats


def matrix(seed: int, rows: int, cols: int = 4) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.lognormal(3, 2, size=(rows, cols)) * rng.choice([-1, 1, 0], size=(rows, cols))
    return values


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 30), min_size=1, max_size=6), st.integers(0, 1000))
def test_merged_batches_equal_the_statistics_of_all_rows(sizes: list[int], seed: int) -> None:
    parts = [matrix(seed + i, n) for i, n in enumerate(sizes)]
    for part in parts:
        if len(part):
            part[0, 1] = np.nan
    result = functools.reduce(merge_stats, [part_stats(part) for part in parts])
    whole = part_stats(np.concatenate(parts))
    assert (result.rows, result.nan, result.min, result.max, result.hist) == (
        whole.rows, whole.nan, whole.min, whole.max, whole.hist)
    assert np.allclose(result.sum, whole.sum) and np.allclose(result.sumsq, whole.sumsq)


def test_statistics_against_a_naive_computation() -> None:
    values = matrix(1, 200)
    values[3, 2] = np.inf
    stats = part_stats(values)
    for j, summary in enumerate(summarise(stats, ["a", "b", "c", "d"])):
        column = [x for x in values[:, j] if math.isfinite(x)]
        assert summary.count == len(column) and summary.nan == 200 - len(column)
        assert summary.min == min(column) and summary.max == max(column)
        assert math.isclose(summary.mean, sum(column) / len(column), rel_tol=1e-9)
        assert math.isclose(summary.std, float(np.std(column)), rel_tol=1e-6)
        counts = [0] * BINS
        for x in column:
            counts[sum(1 for edge in BIN_EDGES if edge <= x)] += 1
        assert stats.hist[j] == counts


def test_an_empty_part_has_no_extremes() -> None:
    stats = part_stats(np.zeros((0, 3)))
    assert (stats.rows, stats.min, stats.max, stats.nan) == (0, [None] * 3, [None] * 3, [0] * 3)
    assert summarise(stats, ["a", "b", "c"])[0].mean == 0.0


def test_merge_refuses_other_features() -> None:
    with pytest.raises(ValueError, match="statistics of 3 features"):
        merge_stats(part_stats(np.zeros((1, 4))), part_stats(np.zeros((1, 3))))


def test_psi() -> None:
    assert psi([10, 20, 30], [10, 20, 30]) == 0.0
    assert psi([0, 0, 0], [1, 2, 3]) == 0.0
    assert psi([30, 20, 10], [10, 20, 30]) > 0.25


def test_drift_verdicts_follow_the_thresholds() -> None:
    before = part_stats(matrix(1, 20_000))
    same = part_stats(matrix(2, 20_000))
    shifted = part_stats(matrix(1, 20_000) * 100)
    names = ["a", "b", "c", "d"]
    assert {row.verdict for row in drift(same, before, names, DriftConfig(mean_shift_warn=None))} == {"ok"}
    rows = drift(shifted, before, names, DriftConfig())
    assert {row.verdict for row in rows} == {"warn"} and all(row.psi > 0.1 for row in rows)
    assert {row.verdict for row in drift(shifted, before, names, DriftConfig(psi_fail=0.2))} == {"fail"}


def test_drift_is_by_name_and_a_new_feature_skips_only_itself() -> None:
    before_values = matrix(1, 20_000)
    before = part_stats(before_values)
    # this run moved "b" to the front, added "new" and dropped "d"; only "c" drifted
    now_values = np.column_stack([before_values[:, 1], before_values[:, 0], matrix(3, 20_000)[:, 0],
                                  before_values[:, 2] * 100])
    rows = drift_by_name(part_stats(now_values), ["b", "a", "new", "c"], before, ["a", "b", "c", "d"], DriftConfig())
    assert [(row.name, row.verdict) for row in rows] == [("b", "ok"), ("a", "ok"), ("c", "warn")]
    assert rows[0].psi == rows[1].psi == 0.0
    assert drift_by_name(before, ["a", "b", "c", "d"], before, ["w", "x", "y", "z"], DriftConfig()) == []
    with pytest.raises(ValueError, match="the previous run names 3 features; its statistics have 4"):
        drift_by_name(before, ["a", "b", "c", "d"], before, ["a", "b", "c"], DriftConfig())
