"""The feature catalogue and its vectorised computation.

Notation (as in the brief): for account v and the run's ``as_of``, OUT(v) and IN(v) are its outgoing
and incoming transfers with ``ts <= as_of`` (a self-transfer is in both); ALL(v) is OUT(v) followed
by IN(v) as a multiset, so a self-transfer counts twice in it. R(v) and S(v) are the sets of payees
and payers; N(v) = (R(v) ∪ S(v)) minus {v}. Empty means, maxima, minima, ratios and std are 0;
std is the population std. "Last 24h" means ``ts > as_of - 86400`` (likewise 1h and 7d).

:func:`compute_features` is pure numpy over a :class:`~fx_workers.engine.batch.BatchInput`: no I/O and
no per-account Python loop, so the single-process CLI, the workers and the tests share it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fx_workers.engine.batch import BatchFeatures, BatchInput, EdgeArrays
from fx_workers.engine.spec import Calculator, FeatureGroup, FeatureSpec

HOUR, DAY, WEEK = 3600, 86400, 7 * 86400
ROUND_UNIT = 100.0
"""A round amount is a positive multiple of this."""
THRESHOLD_LOW, THRESHOLD = 9000.0, 10000.0
"""Just below the reporting threshold: ``THRESHOLD_LOW <= amount < THRESHOLD``."""
NIGHT_END_HOUR = 6
"""Night is 00:00 to 06:00 UTC."""


def _spec(family: str, unit: str, rows: list[tuple[str, str]]) -> list[FeatureSpec]:
    return [FeatureSpec(name, family, unit, definition) for name, definition in rows]


VOLUME, AMOUNT, TEMPORAL, FLOW, DIVERSITY, NEIGHBOUR = (
    "volume and degree",
    "amount statistics",
    "temporal velocity",
    "flow and pass-through",
    "counterparty diversity",
    "neighbourhood",
)

NODE_FEATURES: tuple[FeatureSpec, ...] = tuple(
    _spec(VOLUME, "transfers", [
        ("out_count", "|OUT(v)|"),
        ("in_count", "|IN(v)|"),
    ])
    + _spec(VOLUME, "accounts", [
        ("out_unique_counterparties", "|R(v)|"),
        ("in_unique_counterparties", "|S(v)|"),
    ])
    + _spec(AMOUNT, "amount", [
        ("out_amount_sum", "sum of amounts in OUT(v)"),
        ("in_amount_sum", "sum of amounts in IN(v)"),
        ("out_amount_mean", "out_amount_sum / out_count"),
        ("in_amount_mean", "in_amount_sum / in_count"),
        ("out_amount_max", "max amount in OUT(v)"),
        ("in_amount_max", "max amount in IN(v)"),
        ("out_amount_std", "population std of amounts in OUT(v)"),
    ])
    + _spec(FLOW, "amount", [("net_flow", "in_amount_sum - out_amount_sum")])
    + _spec(FLOW, "ratio", [("reciprocity", "|R(v) ∩ S(v)| / |R(v) ∪ S(v)|")])
    + _spec(TEMPORAL, "seconds", [("active_span_seconds", "max ts - min ts over OUT(v) ∪ IN(v)")])
    + _spec(TEMPORAL, "transfers", [
        ("count_24h", "number of transfers in OUT(v) plus number in IN(v) with ts > as_of - 86400"),
    ])
    + _spec(NEIGHBOUR, "transfers", [
        ("neighbor_mean_total_count",
         "mean, over u in (R(v) ∪ S(v)) minus {v}, of out_count(u) + in_count(u)"),
    ])
    # ---- the 16 core features end here; the rest of the catalogue follows ----
    + _spec(VOLUME, "transfers", [
        ("total_count", "out_count + in_count"),
        ("self_transfer_count", "number of transfers in OUT(v) whose payee is v"),
    ])
    + _spec(VOLUME, "accounts", [("unique_counterparties", "|R(v) ∪ S(v)|")])
    + _spec(VOLUME, "ratio", [("out_repeat_ratio", "1 - out_unique_counterparties / out_count")])
    + _spec(AMOUNT, "amount", [
        ("in_amount_std", "population std of amounts in IN(v)"),
        ("out_amount_min", "min amount in OUT(v)"),
        ("in_amount_min", "min amount in IN(v)"),
        ("out_amount_median", "median amount in OUT(v) (mean of the two middle values when even)"),
        ("in_amount_median", "median amount in IN(v) (mean of the two middle values when even)"),
    ])
    + _spec(AMOUNT, "ratio", [
        ("out_amount_cv", "out_amount_std / out_amount_mean"),
        ("round_amount_ratio", "share of ALL(v) whose amount is a positive multiple of 100"),
        ("below_threshold_ratio", "share of OUT(v) with 9000 <= amount < 10000"),
    ])
    + _spec(TEMPORAL, "transfers", [
        ("count_1h", "number of transfers in ALL(v) with ts > as_of - 3600"),
        ("count_7d", "number of transfers in ALL(v) with ts > as_of - 604800"),
        ("max_daily_count", "max over UTC days (ts // 86400) of the number of transfers of ALL(v)"),
    ])
    + _spec(TEMPORAL, "amount", [
        ("out_amount_24h", "sum of amounts in OUT(v) with ts > as_of - 86400"),
        ("in_amount_24h", "sum of amounts in IN(v) with ts > as_of - 86400"),
        ("out_amount_7d", "sum of amounts in OUT(v) with ts > as_of - 604800"),
        ("in_amount_7d", "sum of amounts in IN(v) with ts > as_of - 604800"),
    ])
    + _spec(TEMPORAL, "accounts", [
        ("fan_out_24h", "number of distinct payees of OUT(v) with ts > as_of - 86400"),
        ("fan_in_24h", "number of distinct payers of IN(v) with ts > as_of - 86400"),
    ])
    + _spec(TEMPORAL, "seconds", [
        ("seconds_since_last", "as_of - max ts over ALL(v)"),
        ("seconds_since_first", "as_of - min ts over ALL(v)"),
        ("interarrival_mean", "mean gap between consecutive sorted ts of ALL(v) (needs 2 transfers)"),
        ("interarrival_std", "population std of those gaps"),
        ("interarrival_min", "min of those gaps"),
    ])
    + _spec(TEMPORAL, "ratio", [
        ("burstiness", "(interarrival_std - interarrival_mean) / (interarrival_std + interarrival_mean)"),
        ("night_ratio", "share of ALL(v) with UTC hour of ts < 6"),
        ("weekend_ratio", "share of ALL(v) on a UTC Saturday or Sunday"),
    ])
    + _spec(TEMPORAL, "days", [("active_days", "number of distinct UTC days (ts // 86400) in ALL(v)")])
    + _spec(FLOW, "ratio", [
        ("pass_through_ratio", "min(in_amount_sum, out_amount_sum) / max(in_amount_sum, out_amount_sum)"),
        ("pass_through_ratio_24h", "min(in_amount_24h, out_amount_24h) / max(in_amount_24h, out_amount_24h)"),
        ("count_balance", "(in_count - out_count) / (in_count + out_count)"),
    ])
    + _spec(FLOW, "accounts", [("reciprocal_counterparties", "|R(v) ∩ S(v)|")])
    + _spec(FLOW, "amount", [("self_transfer_amount", "sum of amounts of transfers in OUT(v) whose payee is v")])
    + _spec(DIVERSITY, "nats", [
        ("out_counterparty_entropy", "Shannon entropy (ln) of the shares of OUT(v) per payee"),
        ("in_counterparty_entropy", "Shannon entropy (ln) of the shares of IN(v) per payer"),
    ])
    + _spec(DIVERSITY, "ratio", [
        ("out_counterparty_hhi", "sum over payees of (share of OUT(v) to that payee)^2"),
        ("in_counterparty_hhi", "sum over payers of (share of IN(v) from that payer)^2"),
        ("out_max_counterparty_share", "largest share of OUT(v) going to one payee"),
        ("in_max_counterparty_share", "largest share of IN(v) coming from one payer"),
    ])
    + _spec(NEIGHBOUR, "transfers", [
        ("neighbor_max_total_count", "max over u in N(v) of out_count(u) + in_count(u)"),
        ("neighbor_std_total_count", "population std over u in N(v) of out_count(u) + in_count(u)"),
        ("payee_mean_in_count", "mean over u in R(v) minus {v} of in_count(u)"),
        ("payer_mean_out_count", "mean over u in S(v) minus {v} of out_count(u)"),
    ])
    + _spec(NEIGHBOUR, "ratio", [
        ("neighbor_mean_out_share", "mean over u in N(v) of out_count(u) / (out_count(u) + in_count(u))"),
    ])
)

EDGE_FEATURES: tuple[FeatureSpec, ...] = tuple(
    _spec(AMOUNT, "std", [
        ("amount_zscore_payer",
         "(amount - out_amount_mean(p)) / out_amount_std(p); 0 when that std is 0"),
    ])
    + _spec(VOLUME, "transfers", [
        ("pair_count", "number of transfers from p to q with ts <= as_of"),
        ("payer_out_count", "out_count(p)"),
        ("payee_in_count", "in_count(q)"),
    ])
    + _spec(AMOUNT, "amount", [("pair_amount_sum", "sum of amounts of transfers from p to q with ts <= as_of")])
    + _spec(AMOUNT, "ratio", [("amount_to_payer_mean", "amount / out_amount_mean(p)")])
    + _spec(FLOW, "flag", [
        ("is_reciprocated", "1 if some transfer from q to p has ts <= as_of, else 0"),
        ("is_self_transfer", "1 if p = q, else 0"),
    ])
    + _spec(AMOUNT, "flag", [
        ("is_round_amount", "1 if amount is a positive multiple of 100, else 0"),
        ("is_below_threshold", "1 if 9000 <= amount < 10000, else 0"),
    ])
    + _spec(TEMPORAL, "flag", [("is_night", "1 if the UTC hour of ts < 6, else 0")])
)

NODE_FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in NODE_FEATURES)
EDGE_FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in EDGE_FEATURES)


# ---------------------------------------------------------------------------------------------
# Grouped reductions: ``g`` holds each row's group (account index 0..n-1).


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, and 0 where den is 0."""
    out = np.zeros(np.broadcast(num, den).shape)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _count(g: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(g, minlength=n).astype(np.float64)


def _sum(g: np.ndarray, x: np.ndarray, n: int) -> np.ndarray:
    return np.bincount(g, weights=x, minlength=n) if len(g) else np.zeros(n)


def _extreme(g: np.ndarray, x: np.ndarray, n: int, ufunc: np.ufunc) -> np.ndarray:
    start = -np.inf if ufunc is np.maximum else np.inf
    out = np.full(n, start)
    ufunc.at(out, g, x.astype(np.float64))
    out[np.isinf(out)] = 0.0
    return out


def _max(g: np.ndarray, x: np.ndarray, n: int) -> np.ndarray:
    return _extreme(g, x, n, np.maximum)


def _min(g: np.ndarray, x: np.ndarray, n: int) -> np.ndarray:
    return _extreme(g, x, n, np.minimum)


def _mean_std(g: np.ndarray, x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Group mean and population std, two-pass; exactly 0 std where all values are equal."""
    count = _count(g, n)
    mean = _ratio(_sum(g, x, n), count)
    var = _ratio(_sum(g, (x - mean[g]) ** 2, n), count)
    std = np.sqrt(var)
    std[_max(g, x, n) == _min(g, x, n)] = 0.0
    return mean, std


def _median(g: np.ndarray, x: np.ndarray, n: int) -> np.ndarray:
    order = np.lexsort((x, g))
    xs = x[order]
    count = np.bincount(g, minlength=n)
    start = np.concatenate(([0], np.cumsum(count)[:-1]))
    has = count > 0
    out = np.zeros(n)
    lo = start[has] + (count[has] - 1) // 2
    hi = start[has] + count[has] // 2
    out[has] = (xs[lo] + xs[hi]) / 2.0
    return out


@dataclass(frozen=True)
class _Pairs:
    """Distinct (account, counterparty) pairs of some rows, with how often and how much."""

    g: np.ndarray
    cp: np.ndarray
    count: np.ndarray
    amount: np.ndarray
    row_pair: np.ndarray  # for each input row, the index of its pair

    @classmethod
    def of(cls, g: np.ndarray, cp: np.ndarray, amount: np.ndarray, ncodes: int) -> _Pairs:
        keys, row_pair, count = np.unique(g * ncodes + cp, return_inverse=True, return_counts=True)
        amounts = np.bincount(row_pair, weights=amount, minlength=len(keys)) if len(keys) else np.zeros(0)
        return cls(keys // ncodes, keys % ncodes, count.astype(np.float64), amounts, row_pair)

    def keys(self, ncodes: int) -> np.ndarray:
        return self.g * ncodes + self.cp


def _distinct_count(g: np.ndarray, key: np.ndarray, n: int) -> np.ndarray:
    """Per group, the number of distinct values of ``key``."""
    if not len(g):
        return np.zeros(n)
    pairs = np.unique(np.stack([g, key]), axis=1)
    return _count(pairs[0], n)


def _canonical(edges: EdgeArrays) -> EdgeArrays:
    """Rows sorted by (account, tx id): sums then do not depend on the order Neo4j returned."""
    order = np.lexsort((edges.tx, edges.owner))
    return EdgeArrays(edges.owner[order], edges.tx[order], edges.other[order],
                      edges.amount[order].astype(np.float64), edges.ts[order].astype(np.int64))


def _is_round(amount: np.ndarray) -> np.ndarray:
    return (amount > 0) & (np.mod(amount, ROUND_UNIT) == 0)


def _is_below_threshold(amount: np.ndarray) -> np.ndarray:
    return (amount >= THRESHOLD_LOW) & (amount < THRESHOLD)


def _is_night(ts: np.ndarray) -> np.ndarray:
    return np.mod(ts, DAY) // HOUR < NIGHT_END_HOUR


def _is_weekend(ts: np.ndarray) -> np.ndarray:
    return np.mod(ts // DAY + 3, 7) >= 5  # 1970-01-01 was a Thursday (weekday 3)


def _compute_all(batch: BatchInput) -> BatchFeatures:
    """Every node feature of the batch's accounts and every edge feature of their outgoing transfers.

    :param batch: the batch's transfers and neighbour counts, as read by :mod:`fx_workers.engine.graph`
    :return: matrices in :data:`NODE_FEATURES` and :data:`EDGE_FEATURES` column order
    """
    n, as_of = len(batch.ids), batch.as_of
    out, inc = _canonical(batch.out), _canonical(batch.inc)
    codes, inverse = np.unique(
        np.concatenate([batch.ids, out.other, inc.other, batch.neighbour_ids]), return_inverse=True
    )
    ncodes = max(len(codes), 1)
    self_code, out_cp, in_cp, nb_code = np.split(
        inverse, np.cumsum([n, len(out), len(inc)])
    )
    nb_out = np.zeros(ncodes)
    nb_in = np.zeros(ncodes)
    nb_out[nb_code] = batch.neighbour_out_count
    nb_in[nb_code] = batch.neighbour_in_count

    go, gi = out.owner, inc.owner
    ga = np.concatenate([go, gi])
    all_cp = np.concatenate([out_cp, in_cp])
    all_amount = np.concatenate([out.amount, inc.amount])
    all_ts = np.concatenate([out.ts, inc.ts])
    f: dict[str, np.ndarray] = {}

    # volume and degree
    out_count, in_count = _count(go, n), _count(gi, n)
    out_pairs = _Pairs.of(go, out_cp, out.amount, ncodes)
    in_pairs = _Pairs.of(gi, in_cp, inc.amount, ncodes)
    r_size, s_size = _count(out_pairs.g, n), _count(in_pairs.g, n)
    both = np.isin(out_pairs.keys(ncodes), in_pairs.keys(ncodes))
    r_and_s = _count(out_pairs.g[both], n)
    r_or_s = r_size + s_size - r_and_s
    is_self_out = out_cp == self_code[go]
    f["out_count"], f["in_count"] = out_count, in_count
    f["out_unique_counterparties"], f["in_unique_counterparties"] = r_size, s_size
    f["total_count"] = out_count + in_count
    f["self_transfer_count"] = _count(go[is_self_out], n)
    f["unique_counterparties"] = r_or_s
    f["out_repeat_ratio"] = _ratio(out_count - r_size, out_count)

    # amount statistics
    out_mean, out_std = _mean_std(go, out.amount, n)
    in_mean, in_std = _mean_std(gi, inc.amount, n)
    out_sum, in_sum = _sum(go, out.amount, n), _sum(gi, inc.amount, n)
    f["out_amount_sum"], f["in_amount_sum"] = out_sum, in_sum
    f["out_amount_mean"], f["in_amount_mean"] = out_mean, in_mean
    f["out_amount_max"], f["in_amount_max"] = _max(go, out.amount, n), _max(gi, inc.amount, n)
    f["out_amount_min"], f["in_amount_min"] = _min(go, out.amount, n), _min(gi, inc.amount, n)
    f["out_amount_std"], f["in_amount_std"] = out_std, in_std
    f["out_amount_median"] = _median(go, out.amount, n)
    f["in_amount_median"] = _median(gi, inc.amount, n)
    f["out_amount_cv"] = _ratio(out_std, out_mean)
    total = out_count + in_count
    f["round_amount_ratio"] = _ratio(_count(ga[_is_round(all_amount)], n), total)
    f["below_threshold_ratio"] = _ratio(_count(go[_is_below_threshold(out.amount)], n), out_count)

    # temporal velocity
    ts_max, ts_min = _max(ga, all_ts, n), _min(ga, all_ts, n)
    f["active_span_seconds"] = ts_max - ts_min
    for name, window in (("1h", HOUR), ("24h", DAY), ("7d", WEEK)):
        recent_out, recent_in = out.ts > as_of - window, inc.ts > as_of - window
        f[f"count_{name}"] = _count(go[recent_out], n) + _count(gi[recent_in], n)
        if name != "1h":
            f[f"out_amount_{name}"] = _sum(go[recent_out], out.amount[recent_out], n)
            f[f"in_amount_{name}"] = _sum(gi[recent_in], inc.amount[recent_in], n)
        if name == "24h":
            f["fan_out_24h"] = _distinct_count(go[recent_out], out_cp[recent_out], n)
            f["fan_in_24h"] = _distinct_count(gi[recent_in], in_cp[recent_in], n)
    active = total > 0
    f["seconds_since_last"] = np.where(active, as_of - ts_max, 0.0)
    f["seconds_since_first"] = np.where(active, as_of - ts_min, 0.0)
    order = np.lexsort((all_ts, ga))
    gs, ts_sorted = ga[order], all_ts[order]
    same = gs[1:] == gs[:-1]
    gap_g, gap = gs[1:][same], (ts_sorted[1:] - ts_sorted[:-1])[same].astype(np.float64)
    gap_mean, gap_std = _mean_std(gap_g, gap, n)
    f["interarrival_mean"], f["interarrival_std"] = gap_mean, gap_std
    f["interarrival_min"] = _min(gap_g, gap, n)
    f["burstiness"] = _ratio(gap_std - gap_mean, gap_std + gap_mean)
    f["night_ratio"] = _ratio(_count(ga[_is_night(all_ts)], n), total)
    f["weekend_ratio"] = _ratio(_count(ga[_is_weekend(all_ts)], n), total)
    day_keys, day_count = np.unique(np.stack([ga, all_ts // DAY]), axis=1, return_counts=True) \
        if len(ga) else (np.zeros((2, 0), dtype=np.int64), np.zeros(0))
    f["active_days"] = _count(day_keys[0], n)
    f["max_daily_count"] = _max(day_keys[0], day_count, n)

    # flow and pass-through
    f["net_flow"] = in_sum - out_sum
    f["reciprocity"] = _ratio(r_and_s, r_or_s)
    f["reciprocal_counterparties"] = r_and_s
    f["pass_through_ratio"] = _ratio(np.minimum(in_sum, out_sum), np.maximum(in_sum, out_sum))
    in24, out24 = f["in_amount_24h"], f["out_amount_24h"]
    f["pass_through_ratio_24h"] = _ratio(np.minimum(in24, out24), np.maximum(in24, out24))
    f["count_balance"] = _ratio(in_count - out_count, total)
    f["self_transfer_amount"] = _sum(go[is_self_out], out.amount[is_self_out], n)

    # counterparty diversity
    for side, pairs, count in (("out", out_pairs, out_count), ("in", in_pairs, in_count)):
        share = pairs.count / count[pairs.g] if len(pairs.g) else np.zeros(0)
        f[f"{side}_counterparty_entropy"] = _sum(pairs.g, -share * np.log(share), n)
        f[f"{side}_counterparty_hhi"] = _sum(pairs.g, share**2, n)
        f[f"{side}_max_counterparty_share"] = _max(pairs.g, share, n)

    # neighbourhood: N(v) from distinct pairs over both directions, v itself excluded
    nb_pairs = np.unique(np.stack([ga, all_cp]), axis=1) if len(ga) else np.zeros((2, 0), dtype=np.int64)
    nb_pairs = nb_pairs[:, nb_pairs[1] != self_code[nb_pairs[0]]]
    nb_g, nb_u = nb_pairs
    nb_total = (nb_out + nb_in)[nb_u]
    f["neighbor_mean_total_count"], f["neighbor_std_total_count"] = _mean_std(nb_g, nb_total, n)
    f["neighbor_max_total_count"] = _max(nb_g, nb_total, n)
    nb_share = _ratio(nb_out[nb_u], nb_total)
    f["neighbor_mean_out_share"] = _ratio(_sum(nb_g, nb_share, n), _count(nb_g, n))
    for name, pairs, counts in (("payee_mean_in_count", out_pairs, nb_in),
                                ("payer_mean_out_count", in_pairs, nb_out)):
        keep = pairs.cp != self_code[pairs.g]
        f[name] = _ratio(_sum(pairs.g[keep], counts[pairs.cp[keep]], n), _count(pairs.g[keep], n))

    node_values = np.column_stack([f[name] for name in NODE_FEATURE_NAMES]) if n else np.zeros(
        (0, len(NODE_FEATURES)))

    # edge features, one row per outgoing transfer (each transfer lives in its payer's batch)
    e: dict[str, np.ndarray] = {
        "amount_zscore_payer": _ratio(out.amount - out_mean[go], out_std[go]),
        "pair_count": out_pairs.count[out_pairs.row_pair],
        "pair_amount_sum": out_pairs.amount[out_pairs.row_pair],
        "payer_out_count": out_count[go],
        "payee_in_count": nb_in[out_cp],
        "amount_to_payer_mean": _ratio(out.amount, out_mean[go]),
        "is_reciprocated": both[out_pairs.row_pair].astype(np.float64),
        "is_self_transfer": is_self_out.astype(np.float64),
        "is_round_amount": _is_round(out.amount).astype(np.float64),
        "is_below_threshold": _is_below_threshold(out.amount).astype(np.float64),
        "is_night": _is_night(out.ts).astype(np.float64),
    }
    edge_values = np.column_stack([e[name] for name in EDGE_FEATURE_NAMES]) if len(out) else np.zeros(
        (0, len(EDGE_FEATURES)))
    return BatchFeatures(batch.ids, node_values, out.tx, edge_values)


@dataclass(frozen=True)
class _Whole:
    """Interim: the whole base catalogue computed at once, until each feature has its own calculator."""

    result: BatchFeatures

    @property
    def tx(self) -> np.ndarray:
        return self.result.tx_ids


BASE: FeatureGroup[_Whole] = FeatureGroup(lambda batch: _Whole(_compute_all(batch)))
BASE.calculators += [Calculator("node", NODE_FEATURES, lambda w: tuple(w.result.node_values.T)),
                     Calculator("edge", EDGE_FEATURES, lambda w: tuple(w.result.edge_values.T))]
