"""Per-feature statistics that merge across batches, and drift between two runs.

A batch's statistics (:func:`part_stats`) travel in its completion signal; the run's are their
merge (:func:`merge`), so no step ever re-reads the feature records to describe a run. Histograms
use one fixed set of bin edges for every feature and every run (signed half-decades from 0.01 to
1e10), so two runs' distributions can be compared by a population stability index.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from fx_workers.protocol import PartStats

if TYPE_CHECKING:
    from collections.abc import Sequence

    from fx_workers.config import DriftConfig

_DECADES = 10.0 ** (np.arange(-4, 21) / 2)
BIN_EDGES = np.concatenate([-_DECADES[::-1], [0.0], _DECADES])
"""Bin ``i`` holds ``BIN_EDGES[i-1] <= x < BIN_EDGES[i]``; bin 0 and the last bin are open."""
BINS = len(BIN_EDGES) + 1
PSI_FLOOR = 1e-4
"""Bin shares are floored at this before the PSI's logarithm, so an empty bin does not make it infinite."""


def part_stats(values: np.ndarray) -> PartStats:
    """The statistics of a ``(rows, features)`` matrix, per column."""
    values = np.asarray(values, dtype=np.float64)
    rows, cols = values.shape
    finite = np.isfinite(values)
    clean = np.where(finite, values, 0.0)
    has_any = finite.any(axis=0)
    low = np.where(finite, values, np.inf).min(axis=0, initial=np.inf)
    high = np.where(finite, values, -np.inf).max(axis=0, initial=-np.inf)
    bins = np.searchsorted(BIN_EDGES, clean, side="right")
    hist = np.zeros((cols, BINS), dtype=np.int64)
    column = np.broadcast_to(np.arange(cols), values.shape)
    np.add.at(hist, (column[finite], bins[finite]), 1)
    return PartStats(
        rows=rows,
        nan=(rows - finite.sum(axis=0)).tolist(),
        min=[float(x) if ok else None for x, ok in zip(low.tolist(), has_any.tolist(), strict=True)],
        max=[float(x) if ok else None for x, ok in zip(high.tolist(), has_any.tolist(), strict=True)],
        sum=clean.sum(axis=0).tolist(),
        sumsq=np.square(clean).sum(axis=0).tolist(),
        hist=hist.tolist(),
    )


@dataclass(frozen=True)
class FeatureSummary:
    """One feature over a whole run."""

    name: str
    count: int
    nan: int
    min: float | None
    max: float | None
    mean: float
    std: float


def summarise(stats: PartStats, names: Sequence[str]) -> list[FeatureSummary]:
    """Mean and population std per feature from the merged sums."""
    out = []
    for i, name in enumerate(names):
        count = stats.rows - stats.nan[i]
        mean = stats.sum[i] / count if count else 0.0
        variance = max(stats.sumsq[i] / count - mean * mean, 0.0) if count else 0.0
        out.append(FeatureSummary(name, count, stats.nan[i], stats.min[i], stats.max[i], mean, math.sqrt(variance)))
    return out


def psi(current: Sequence[int], previous: Sequence[int]) -> float:
    """Population stability index of two histograms over the same bins (0 when either is empty)."""
    p, q = np.asarray(current, dtype=np.float64), np.asarray(previous, dtype=np.float64)
    if p.sum() == 0 or q.sum() == 0:
        return 0.0
    p, q = np.maximum(p / p.sum(), PSI_FLOOR), np.maximum(q / q.sum(), PSI_FLOOR)
    return float(np.sum((p - q) * np.log(p / q)))


@dataclass(frozen=True)
class FeatureDrift:
    """One feature against the previous run: NaN-rate change, mean shift in the previous run's
    standard deviations, PSI of the histograms, and the verdict (``ok``, ``warn`` or ``fail``)."""

    name: str
    nan_rate_change: float
    mean_shift_sd: float
    psi: float
    verdict: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _verdict(values: dict[str, float], thresholds: DriftConfig) -> str:
    verdict = "ok"
    for measure, value in values.items():
        fail, warn = getattr(thresholds, f"{measure}_fail"), getattr(thresholds, f"{measure}_warn")
        if fail is not None and value > fail:
            return "fail"
        if warn is not None and value > warn:
            verdict = "warn"
    return verdict


def drift(current: PartStats, previous: PartStats, names: Sequence[str],
          thresholds: DriftConfig) -> list[FeatureDrift]:
    """Per feature, how far ``current`` moved from ``previous``."""
    now, before = summarise(current, names), summarise(previous, names)
    out = []
    for i, (a, b) in enumerate(zip(now, before, strict=True)):
        rate_now = a.nan / current.rows if current.rows else 0.0
        rate_before = b.nan / previous.rows if previous.rows else 0.0
        shift = abs(a.mean - b.mean) / b.std if b.std > 0 else (0.0 if a.mean == b.mean else math.inf)
        measures = {"nan_rate": abs(rate_now - rate_before), "mean_shift": shift,
                    "psi": psi(current.hist[i], previous.hist[i])}
        out.append(FeatureDrift(a.name, round(measures["nan_rate"], 6), round(shift, 4), round(measures["psi"], 4),
                                _verdict(measures, thresholds)))
    return out


def select(stats: PartStats, columns: Sequence[int]) -> PartStats:
    """The statistics of some features only, in the order of ``columns``."""
    return PartStats(rows=stats.rows, nan=[stats.nan[i] for i in columns], min=[stats.min[i] for i in columns],
                     max=[stats.max[i] for i in columns], sum=[stats.sum[i] for i in columns],
                     sumsq=[stats.sumsq[i] for i in columns], hist=[stats.hist[i] for i in columns])


def drift_by_name(current: PartStats, names: Sequence[str], previous: PartStats, previous_names: Sequence[str],
                  thresholds: DriftConfig) -> list[FeatureDrift]:
    """:func:`drift` of each feature of ``current`` that ``previous`` has too, matched by name wherever each run
    put it: a feature new in ``current`` (or one the previous run had and this one dropped) has no row, and
    every other feature keeps its drift.

    :raises ValueError: when a run's names are not one per feature of its statistics
    """
    for stats, labels, run in ((current, names, "this run"), (previous, previous_names, "the previous run")):
        if len(labels) != len(stats.nan):
            raise ValueError(f"{run} names {len(labels)} features; its statistics have {len(stats.nan)}")
    before = {name: i for i, name in enumerate(previous_names)}
    shared = [(i, before[name]) for i, name in enumerate(names) if name in before]
    if not shared:
        return []
    now = [i for i, _ in shared]
    return drift(select(current, now), select(previous, [j for _, j in shared]), [names[i] for i in now], thresholds)
