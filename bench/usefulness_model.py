"""The usefulness benchmark's model side: LightGBM with one fixed setting, the threshold chosen for best F1
on the validation slice, and the metrics (F1, PR-AUC as average precision, recall per typology).

Pure numpy apart from LightGBM itself, so the protocol's parts are testable without a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from bench.usefulness_data import WEEK, Transfers

PARAMS = {
    "objective": "binary",
    "learning_rate": 0.1,
    "num_leaves": 31,
    "min_data_in_leaf": 20,
    "max_bin": 63,
    "feature_fraction": 0.5,
    "bagging_fraction": 0.5,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "num_threads": 2,
    "deterministic": True,
    "force_row_wise": True,
    "verbosity": -1,
}
"""The same for every feature set; ``seed`` varies."""
ROUNDS = 200
SEEDS = (0, 1, 2)
VALIDATION_SHARE = 0.2
GFP_BINS = [2, 3, 4, 5, 10]
GFP_PATTERNS = ("fan", "degree", "scatter-gather", "temp-cycle", "lc-cycle")


def best_threshold(y: np.ndarray, score: np.ndarray) -> tuple[float, float]:
    """The score threshold (predict positive when ``score >= threshold``) with the best F1 on ``(y, score)``,
    and that F1; ties between equal scores are never split. ``(inf, 0.0)`` without positives."""
    order = np.argsort(-score, kind="stable")
    ranked, truth = score[order], y[order].astype(np.int64)
    last = np.r_[ranked[1:] != ranked[:-1], True]  # the last row of each run of equal scores
    tp = np.cumsum(truth)[last]
    fp = np.cumsum(1 - truth)[last]
    positives = truth.sum()
    if positives == 0:
        return float("inf"), 0.0
    f1 = 2 * tp / (tp + fp + positives)
    best = int(np.argmax(f1))
    return float(ranked[last][best]), float(f1[best])


def f1_at(y: np.ndarray, score: np.ndarray, threshold: float) -> float:
    predicted = score >= threshold
    tp = int((predicted & y).sum())
    return 2 * tp / (int(predicted.sum()) + int(y.sum())) if tp else 0.0


def precision_recall(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall at every distinct threshold, from the highest score down."""
    order = np.argsort(-score, kind="stable")
    ranked, truth = score[order], y[order].astype(np.int64)
    last = np.r_[ranked[1:] != ranked[:-1], True]
    tp = np.cumsum(truth)[last]
    predicted = np.flatnonzero(last) + 1
    return tp / predicted, tp / max(int(truth.sum()), 1)


def average_precision(y: np.ndarray, score: np.ndarray) -> float:
    """PR-AUC as average precision: the sum over thresholds of precision times the recall gained."""
    precision, recall = precision_recall(y, score)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


@dataclass(frozen=True)
class Split:
    """Row masks over the scored transfers: train (before the split, minus validation), validation (the
    last share of training by time), test (from the split on)."""

    fit: np.ndarray
    validation: np.ndarray
    test: np.ndarray


def split_rows(ts: np.ndarray, split: int, share: float = VALIDATION_SHARE) -> Split:
    """``ts`` sorted; the validation slice is the last ``share`` of the training rows by time."""
    if np.any(np.diff(ts) < 0):
        raise ValueError("split_rows needs the rows sorted by ts")
    train = ts < split
    n_train = int(train.sum())
    first_validation = n_train - round(share * n_train)
    index = np.arange(len(ts))
    return Split(train & (index < first_validation), train & (index >= first_validation), ~train)


@dataclass
class Fitted:
    seed: int
    threshold: float
    validation_f1: float
    test_score: np.ndarray
    gain: np.ndarray


def fit_and_score(x: np.ndarray, y: np.ndarray, split: Split, seed: int) -> Fitted:
    """Train on ``split.fit``, choose the threshold on ``split.validation``, score ``split.test`` with the
    same model (it is not refit, so the threshold applies to the model it was chosen for)."""
    import lightgbm as lgb

    data = lgb.Dataset(x[split.fit], label=y[split.fit], free_raw_data=True)
    booster = lgb.train(PARAMS | {"seed": seed}, data, num_boost_round=ROUNDS)
    threshold, validation_f1 = best_threshold(y[split.validation], booster.predict(x[split.validation]))
    return Fitted(seed, threshold, validation_f1, booster.predict(x[split.test]),
                  booster.feature_importance(importance_type="gain"))


def gfp_params(window: int = WEEK) -> dict[str, object]:
    """GraphFeaturePreprocessor: every pattern and the vertex statistics of the amount, ``window`` wide."""
    params: dict[str, object] = {"num_threads": 2, "time_window": window, "vertex_stats": True,
                                 "vertex_stats_cols": [4], "vertex_stats_feats": [0, 1, 2, 3, 4, 8, 9, 10],
                                 "vertex_stats_tw": window, "lc-cycle_len": 10}
    for pattern in GFP_PATTERNS:
        params |= {pattern: True, f"{pattern}_tw": window, f"{pattern}_bins": GFP_BINS}
    return params


def gfp_snapshot(transfers: Transfers, cutoff: int, window: int = WEEK) -> dict[str, np.ndarray]:
    """snapml's GFP on the transfers of ``(cutoff - window, cutoff]``, in time order, turned into account
    features as of the cutoff: each per-transfer pattern histogram summed over the account's outgoing and
    over its incoming transfers, and the vertex statistics as of the account's last transfer."""
    from snapml import GraphFeaturePreprocessor

    rows = np.flatnonzero((transfers.ts > cutoff - window) & (transfers.ts <= cutoff))
    edges = np.column_stack([rows, transfers.payer[rows], transfers.payee[rows], transfers.ts[rows],
                             transfers.amount[rows]]).astype(np.float64)
    gfp = GraphFeaturePreprocessor()
    gfp.set_params(gfp_params(window))
    out = gfp.fit_transform(edges)[:, edges.shape[1]:] if len(rows) else np.zeros((0, 0))
    n_accounts = len(transfers.accounts)
    n_patterns = 2 * len(GFP_BINS) * 2 + 3 * len(GFP_BINS)  # fan and degree in/out, then the other three
    stats = (out.shape[1] - n_patterns) // 2
    columns: dict[str, np.ndarray] = {}
    payer, payee = transfers.payer[rows], transfers.payee[rows]
    for i in range(n_patterns):
        columns[f"gfp_out_{i}"] = np.bincount(payer, out[:, i], minlength=n_accounts)
        columns[f"gfp_in_{i}"] = np.bincount(payee, out[:, i], minlength=n_accounts)
    latest = np.full((n_accounts, max(stats, 0)), np.nan)
    # An account's last transfer in the window may be on either side: apply both in time order, the last wins.
    both = np.concatenate([payer, payee])
    which = np.concatenate([np.arange(len(rows)), np.arange(len(rows))])
    blocks = np.concatenate([out[:, n_patterns:n_patterns + stats], out[:, n_patterns + stats:]])
    order = np.argsort(which, kind="stable")
    latest[both[order]] = blocks[order]
    for i in range(stats):
        columns[f"gfp_vertex_{i}"] = latest[:, i]
    return columns


def cutoff_label(cutoff: int) -> str:
    return datetime.fromtimestamp(int(cutoff), UTC).strftime("%Y-%m-%d")
