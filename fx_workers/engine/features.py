"""The base feature catalogue: each feature's calculator, with its name, family, unit and definition on it.

Notation (as in the brief): for account v and the run's ``as_of``, OUT(v) and IN(v) are its outgoing
and incoming transfers with ``ts <= as_of`` (a self-transfer is in both); ALL(v) is OUT(v) followed
by IN(v) as a multiset, so a self-transfer counts twice in it. R(v) and S(v) are the sets of payees
and payers; N(v) = (R(v) ∪ S(v)) minus {v}. Empty means, maxima, minima, ratios and std are 0;
std is the population std. "Last 24h" means ``ts > as_of - 86400`` (likewise 1h and 7d).

The calculators are registered on :data:`BASE` in catalogue order (the 16 core features of the brief
first), so the order of this file is the vector order and the schema. Each reads the intermediates
it needs from one :class:`BaseContext` per batch, which computes each of them once, on first use.
Everything is pure numpy over a :class:`~fx_workers.engine.batch.BatchInput`: no I/O and no
per-account Python loop, so the single-process CLI, the workers and the tests share it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from fx_workers.engine.batch import BatchInput, EdgeArrays
from fx_workers.engine.spec import FeatureGroup

HOUR, DAY, WEEK = 3600, 86400, 7 * 86400
ROUND_UNIT = 100.0
"""A round amount is a positive multiple of this."""
THRESHOLD_LOW, THRESHOLD = 9000.0, 10000.0
"""Just below the reporting threshold: ``THRESHOLD_LOW <= amount < THRESHOLD``."""
NIGHT_END_HOUR = 6
"""Night is 00:00 to 06:00 UTC."""

VOLUME, AMOUNT, TEMPORAL, FLOW, DIVERSITY, NEIGHBOUR = (
    "volume and degree",
    "amount statistics",
    "temporal velocity",
    "flow and pass-through",
    "counterparty diversity",
    "neighbourhood",
)

Pair = tuple[np.ndarray, np.ndarray]

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


def _mean_std(g: np.ndarray, x: np.ndarray, n: int) -> Pair:
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


def _distinct(g: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct ``(g, key)`` rows, sorted by g then key, with how often each occurs.

    As ``np.unique(np.stack([g, key]), axis=1)`` but on one int64 code per row, which is several times
    faster than numpy's row-wise unique; ``key`` is an int array of modest range (account codes, days).
    """
    if not len(g):
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    low = key.min()
    span = int(key.max() - low) + 1
    codes, count = np.unique(g.astype(np.int64) * span + (key - low), return_counts=True)
    return codes // span, codes % span + low, count


def _distinct_count(g: np.ndarray, key: np.ndarray, n: int) -> np.ndarray:
    """Per group, the number of distinct values of ``key``."""
    return _count(_distinct(g, key)[0], n)


def _flag(mask: np.ndarray) -> np.ndarray:
    return mask.astype(np.float64)


def _is_round(amount: np.ndarray) -> np.ndarray:
    return (amount > 0) & (np.mod(amount, ROUND_UNIT) == 0)


def _is_below_threshold(amount: np.ndarray) -> np.ndarray:
    return (amount >= THRESHOLD_LOW) & (amount < THRESHOLD)


def _is_night(ts: np.ndarray) -> np.ndarray:
    return np.mod(ts, DAY) // HOUR < NIGHT_END_HOUR


def _is_weekend(ts: np.ndarray) -> np.ndarray:
    return np.mod(ts // DAY + 3, 7) >= 5  # 1970-01-01 was a Thursday (weekday 3)


def _canonical(edges: EdgeArrays) -> EdgeArrays:
    """Rows sorted by (account, tx id): sums then do not depend on the order Neo4j returned."""
    order = np.lexsort((edges.tx, edges.owner))
    return EdgeArrays(edges.owner[order], edges.tx[order], edges.other[order],
                      edges.amount[order].astype(np.float64), edges.ts[order].astype(np.int64))


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


@dataclass(frozen=True)
class _Codes:
    """Every account id the batch mentions as one integer code, so set and lookup work is array maths."""

    ncodes: int
    own: np.ndarray  # the batch accounts' codes, by batch row
    out_cp: np.ndarray  # each canonical outgoing row's payee
    in_cp: np.ndarray  # each canonical incoming row's payer
    neighbour_out: np.ndarray  # by code: out_count of that counterparty (0 for non-neighbours)
    neighbour_in: np.ndarray  # by code: in_count of that counterparty


class BaseContext:
    """One batch's shared intermediates, each computed on first use and then kept for the other features.

    ``out`` and ``inc`` are the OUT(v) and IN(v) rows in canonical order; the ``all_*`` arrays are ALL(v)
    (OUT then IN) and ``ga`` their batch rows; ``r_*``/``s_*`` are about R(v) and S(v).
    """

    def __init__(self, batch: BatchInput) -> None:
        self.batch = batch
        self.n = len(batch.ids)
        self.as_of = batch.as_of

    # -- rows ---------------------------------------------------------------------------------

    @cached_property
    def out(self) -> EdgeArrays:
        return _canonical(self.batch.out)

    @cached_property
    def inc(self) -> EdgeArrays:
        return _canonical(self.batch.inc)

    @property
    def tx(self) -> np.ndarray:
        """The edge rows' tx ids: the batch's outgoing transfers by payer, then tx id."""
        return self.out.tx

    @cached_property
    def codes(self) -> _Codes:
        batch, n = self.batch, self.n
        codes, inverse = np.unique(
            np.concatenate([batch.ids, self.out.other, self.inc.other, batch.neighbour_ids]), return_inverse=True
        )
        ncodes = max(len(codes), 1)
        own, out_cp, in_cp, nb_code = np.split(inverse, np.cumsum([n, len(self.out), len(self.inc)]))
        nb_out, nb_in = np.zeros(ncodes), np.zeros(ncodes)
        nb_out[nb_code] = batch.neighbour_out_count
        nb_in[nb_code] = batch.neighbour_in_count
        return _Codes(ncodes, own, out_cp, in_cp, nb_out, nb_in)

    @cached_property
    def ga(self) -> np.ndarray:
        return np.concatenate([self.out.owner, self.inc.owner])

    @cached_property
    def all_cp(self) -> np.ndarray:
        return np.concatenate([self.codes.out_cp, self.codes.in_cp])

    @cached_property
    def all_amount(self) -> np.ndarray:
        return np.concatenate([self.out.amount, self.inc.amount])

    @cached_property
    def all_ts(self) -> np.ndarray:
        return np.concatenate([self.out.ts, self.inc.ts])

    def recent(self, seconds: int) -> Pair:
        """Masks of the OUT and IN rows of the last ``seconds``."""
        return self.out.ts > self.as_of - seconds, self.inc.ts > self.as_of - seconds

    # -- counts and counterparty sets ----------------------------------------------------------

    @cached_property
    def out_count(self) -> np.ndarray:
        return _count(self.out.owner, self.n)

    @cached_property
    def in_count(self) -> np.ndarray:
        return _count(self.inc.owner, self.n)

    @cached_property
    def total(self) -> np.ndarray:
        return self.out_count + self.in_count

    @cached_property
    def out_pairs(self) -> _Pairs:
        return _Pairs.of(self.out.owner, self.codes.out_cp, self.out.amount, self.codes.ncodes)

    @cached_property
    def in_pairs(self) -> _Pairs:
        return _Pairs.of(self.inc.owner, self.codes.in_cp, self.inc.amount, self.codes.ncodes)

    @cached_property
    def r_size(self) -> np.ndarray:
        return _count(self.out_pairs.g, self.n)

    @cached_property
    def s_size(self) -> np.ndarray:
        return _count(self.in_pairs.g, self.n)

    @cached_property
    def reciprocated(self) -> np.ndarray:
        """For each distinct (v, payee) pair, whether the payee also paid v: R(v) ∩ S(v) as a mask."""
        ncodes = self.codes.ncodes
        return np.isin(self.out_pairs.keys(ncodes), self.in_pairs.keys(ncodes))

    @cached_property
    def r_and_s(self) -> np.ndarray:
        return _count(self.out_pairs.g[self.reciprocated], self.n)

    @cached_property
    def r_or_s(self) -> np.ndarray:
        return self.r_size + self.s_size - self.r_and_s

    @cached_property
    def is_self_out(self) -> np.ndarray:
        return self.codes.out_cp == self.codes.own[self.out.owner]

    # -- amounts -------------------------------------------------------------------------------

    @cached_property
    def out_sum(self) -> np.ndarray:
        return _sum(self.out.owner, self.out.amount, self.n)

    @cached_property
    def in_sum(self) -> np.ndarray:
        return _sum(self.inc.owner, self.inc.amount, self.n)

    @cached_property
    def out_stats(self) -> Pair:
        """Mean and std of OUT(v)'s amounts."""
        return _mean_std(self.out.owner, self.out.amount, self.n)

    @cached_property
    def in_stats(self) -> Pair:
        return _mean_std(self.inc.owner, self.inc.amount, self.n)

    def count_since(self, seconds: int) -> np.ndarray:
        """Number of transfers of ALL(v) in the last ``seconds`` (OUT plus IN, so a self-transfer twice)."""
        recent_out, recent_in = self.recent(seconds)
        return _count(self.out.owner[recent_out], self.n) + _count(self.inc.owner[recent_in], self.n)

    def amount_since(self, seconds: int) -> Pair:
        """Sums of OUT(v)'s and IN(v)'s amounts in the last ``seconds``."""
        out, inc, n = self.out, self.inc, self.n
        recent_out, recent_in = self.recent(seconds)
        return (_sum(out.owner[recent_out], out.amount[recent_out], n),
                _sum(inc.owner[recent_in], inc.amount[recent_in], n))

    @cached_property
    def amount_24h(self) -> Pair:
        return self.amount_since(DAY)

    # -- time ----------------------------------------------------------------------------------

    @cached_property
    def ts_max(self) -> np.ndarray:
        return _max(self.ga, self.all_ts, self.n)

    @cached_property
    def ts_min(self) -> np.ndarray:
        return _min(self.ga, self.all_ts, self.n)

    @cached_property
    def gaps(self) -> Pair:
        """Inter-arrival gaps of ALL(v): each gap's group and its length in seconds."""
        order = np.lexsort((self.all_ts, self.ga))
        gs, ts_sorted = self.ga[order], self.all_ts[order]
        same = gs[1:] == gs[:-1]
        return gs[1:][same], (ts_sorted[1:] - ts_sorted[:-1])[same].astype(np.float64)

    @cached_property
    def gap_stats(self) -> Pair:
        return _mean_std(*self.gaps, self.n)

    @cached_property
    def days(self) -> Pair:
        """Distinct (v, UTC day) of ALL(v): each one's group and its number of transfers."""
        day_g, _, day_count = _distinct(self.ga, self.all_ts // DAY)
        return day_g, day_count

    # -- neighbourhood -------------------------------------------------------------------------

    @cached_property
    def neighbours(self) -> Pair:
        """N(v) as distinct (v, u) pairs over both directions, v itself excluded."""
        nb_g, nb_u, _ = _distinct(self.ga, self.all_cp)
        keep = nb_u != self.codes.own[nb_g]
        return nb_g[keep], nb_u[keep]

    @cached_property
    def neighbour_total(self) -> np.ndarray:
        """out_count(u) + in_count(u) for each pair of :attr:`neighbours`."""
        return (self.codes.neighbour_out + self.codes.neighbour_in)[self.neighbours[1]]

    @cached_property
    def neighbour_total_stats(self) -> Pair:
        return _mean_std(self.neighbours[0], self.neighbour_total, self.n)

    def counterparty_mean(self, pairs: _Pairs, counts: np.ndarray) -> np.ndarray:
        """Mean over v's distinct counterparties in ``pairs`` other than v of ``counts`` (by code)."""
        keep = pairs.cp != self.codes.own[pairs.g]
        return _ratio(_sum(pairs.g[keep], counts[pairs.cp[keep]], self.n), _count(pairs.g[keep], self.n))

    def shares(self, pairs: _Pairs, count: np.ndarray) -> np.ndarray:
        """Each distinct (v, counterparty) pair's share of v's transfers on that side."""
        return pairs.count / count[pairs.g] if len(pairs.g) else np.zeros(0)

    @cached_property
    def out_shares(self) -> np.ndarray:
        return self.shares(self.out_pairs, self.out_count)

    @cached_property
    def in_shares(self) -> np.ndarray:
        return self.shares(self.in_pairs, self.in_count)


BASE: FeatureGroup[BaseContext] = FeatureGroup(BaseContext)

# ---------------------------------------------------------------------------------------------
# The 16 core features, in the brief's order.


@BASE.node(VOLUME, "transfers", ("out_count", "|OUT(v)|"), ("in_count", "|IN(v)|"))
def out_in_count(c: BaseContext) -> Pair:
    """Activity in each direction: the base every ratio below divides by."""
    return c.out_count, c.in_count


@BASE.node(VOLUME, "accounts", ("out_unique_counterparties", "|R(v)|"), ("in_unique_counterparties", "|S(v)|"))
def out_in_unique_counterparties(c: BaseContext) -> Pair:
    """Degree in the account graph, as opposed to transfer counts (parallel transfers collapse)."""
    return c.r_size, c.s_size


@BASE.node(AMOUNT, "amount", ("out_amount_sum", "sum of amounts in OUT(v)"),
           ("in_amount_sum", "sum of amounts in IN(v)"))
def out_in_amount_sum(c: BaseContext) -> Pair:
    """How much money leaves and arrives."""
    return c.out_sum, c.in_sum


@BASE.node(AMOUNT, "amount", ("out_amount_mean", "out_amount_sum / out_count"),
           ("in_amount_mean", "in_amount_sum / in_count"))
def out_in_amount_mean(c: BaseContext) -> Pair:
    """The typical transfer size, against which one transfer is judged unusual."""
    return c.out_stats[0], c.in_stats[0]


@BASE.node(AMOUNT, "amount", ("out_amount_max", "max amount in OUT(v)"), ("in_amount_max", "max amount in IN(v)"))
def out_in_amount_max(c: BaseContext) -> Pair:
    """The largest single movement, which a mean hides."""
    return _max(c.out.owner, c.out.amount, c.n), _max(c.inc.owner, c.inc.amount, c.n)


@BASE.node(AMOUNT, "amount", ("out_amount_std", "population std of amounts in OUT(v)"))
def out_amount_std(c: BaseContext) -> np.ndarray:
    """Spread of outgoing amounts: scripted payouts are often all the same size."""
    return c.out_stats[1]


@BASE.node(FLOW, "amount", ("net_flow", "in_amount_sum - out_amount_sum"))
def net_flow(c: BaseContext) -> np.ndarray:
    """Whether the account accumulates or drains money."""
    return c.in_sum - c.out_sum


@BASE.node(FLOW, "ratio", ("reciprocity", "|R(v) ∩ S(v)| / |R(v) ∪ S(v)|"))
def reciprocity(c: BaseContext) -> np.ndarray:
    """Two-way relationships are ordinary; one-way fans are not."""
    return _ratio(c.r_and_s, c.r_or_s)


@BASE.node(TEMPORAL, "seconds", ("active_span_seconds", "max ts - min ts over OUT(v) ∪ IN(v)"))
def active_span_seconds(c: BaseContext) -> np.ndarray:
    """How long the account has been in use: new accounts that move a lot are suspect."""
    return c.ts_max - c.ts_min


@BASE.node(TEMPORAL, "transfers",
           ("count_24h", "number of transfers in OUT(v) plus number in IN(v) with ts > as_of - 86400"))
def count_24h(c: BaseContext) -> np.ndarray:
    """Activity of the last day: bursts precede a cash-out."""
    return c.count_since(DAY)


@BASE.node(NEIGHBOUR, "transfers",
           ("neighbor_mean_total_count", "mean, over u in (R(v) ∪ S(v)) minus {v}, of out_count(u) + in_count(u)"))
def neighbor_mean_total_count(c: BaseContext) -> np.ndarray:
    """How busy the account's counterparties are: hubs and mules sit next to busy accounts."""
    return c.neighbour_total_stats[0]


# ---------------------------------------------------------------------------------------------
# The rest of the base catalogue.


@BASE.node(VOLUME, "transfers", ("total_count", "out_count + in_count"))
def total_count(c: BaseContext) -> np.ndarray:
    """Activity regardless of direction."""
    return c.total


@BASE.node(VOLUME, "transfers", ("self_transfer_count", "number of transfers in OUT(v) whose payee is v"))
def self_transfer_count(c: BaseContext) -> np.ndarray:
    """Self-transfers inflate volume without moving money to anyone."""
    return _count(c.out.owner[c.is_self_out], c.n)


@BASE.node(VOLUME, "accounts", ("unique_counterparties", "|R(v) ∪ S(v)|"))
def unique_counterparties(c: BaseContext) -> np.ndarray:
    """Degree in the account graph, both directions, each counterparty once."""
    return c.r_or_s


@BASE.node(VOLUME, "ratio", ("out_repeat_ratio", "1 - out_unique_counterparties / out_count"))
def out_repeat_ratio(c: BaseContext) -> np.ndarray:
    """Paying the same payees again (bills, rent) against always new ones."""
    return _ratio(c.out_count - c.r_size, c.out_count)


@BASE.node(AMOUNT, "amount", ("in_amount_std", "population std of amounts in IN(v)"))
def in_amount_std(c: BaseContext) -> np.ndarray:
    """Spread of incoming amounts: many equal deposits suggest structuring."""
    return c.in_stats[1]


@BASE.node(AMOUNT, "amount", ("out_amount_min", "min amount in OUT(v)"), ("in_amount_min", "min amount in IN(v)"))
def out_in_amount_min(c: BaseContext) -> Pair:
    """The smallest movement: tiny test transfers precede fraud."""
    return _min(c.out.owner, c.out.amount, c.n), _min(c.inc.owner, c.inc.amount, c.n)


@BASE.node(AMOUNT, "amount",
           ("out_amount_median", "median amount in OUT(v) (mean of the two middle values when even)"),
           ("in_amount_median", "median amount in IN(v) (mean of the two middle values when even)"))
def out_in_amount_median(c: BaseContext) -> Pair:
    """The typical size, robust to the one large transfer that skews the mean."""
    return _median(c.out.owner, c.out.amount, c.n), _median(c.inc.owner, c.inc.amount, c.n)


@BASE.node(AMOUNT, "ratio", ("out_amount_cv", "out_amount_std / out_amount_mean"))
def out_amount_cv(c: BaseContext) -> np.ndarray:
    """Spread relative to size, comparable across small and large accounts."""
    out_mean, out_std = c.out_stats
    return _ratio(out_std, out_mean)


@BASE.node(AMOUNT, "ratio", ("round_amount_ratio", "share of ALL(v) whose amount is a positive multiple of 100"))
def round_amount_ratio(c: BaseContext) -> np.ndarray:
    """Round amounts are typed by people, not produced by purchases."""
    return _ratio(_count(c.ga[_is_round(c.all_amount)], c.n), c.total)


@BASE.node(AMOUNT, "ratio", ("below_threshold_ratio", "share of OUT(v) with 9000 <= amount < 10000"))
def below_threshold_ratio(c: BaseContext) -> np.ndarray:
    """Structuring: amounts kept just under the reporting threshold."""
    below = _is_below_threshold(c.out.amount)
    return _ratio(_count(c.out.owner[below], c.n), c.out_count)


@BASE.node(TEMPORAL, "transfers", ("count_1h", "number of transfers in ALL(v) with ts > as_of - 3600"),
           ("count_7d", "number of transfers in ALL(v) with ts > as_of - 604800"))
def count_1h_7d(c: BaseContext) -> Pair:
    """Activity of the last hour and week, around count_24h: velocity at three scales."""
    return c.count_since(HOUR), c.count_since(WEEK)


@BASE.node(TEMPORAL, "transfers",
           ("max_daily_count", "max over UTC days (ts // 86400) of the number of transfers of ALL(v)"))
def max_daily_count(c: BaseContext) -> np.ndarray:
    """The busiest day ever, which a recent window misses once the burst is over."""
    return _max(*c.days, c.n)


@BASE.node(TEMPORAL, "amount", ("out_amount_24h", "sum of amounts in OUT(v) with ts > as_of - 86400"),
           ("in_amount_24h", "sum of amounts in IN(v) with ts > as_of - 86400"))
def out_in_amount_24h(c: BaseContext) -> Pair:
    """Money moved in the last day."""
    return c.amount_24h


@BASE.node(TEMPORAL, "amount", ("out_amount_7d", "sum of amounts in OUT(v) with ts > as_of - 604800"),
           ("in_amount_7d", "sum of amounts in IN(v) with ts > as_of - 604800"))
def out_in_amount_7d(c: BaseContext) -> Pair:
    """Money moved in the last week."""
    return c.amount_since(WEEK)


@BASE.node(TEMPORAL, "accounts", ("fan_out_24h", "number of distinct payees of OUT(v) with ts > as_of - 86400"),
           ("fan_in_24h", "number of distinct payers of IN(v) with ts > as_of - 86400"))
def fan_out_in_24h(c: BaseContext) -> Pair:
    """Many counterparties in one day: the fast fan-out or fan-in of a mule."""
    recent_out, recent_in = c.recent(DAY)
    return (_distinct_count(c.out.owner[recent_out], c.codes.out_cp[recent_out], c.n),
            _distinct_count(c.inc.owner[recent_in], c.codes.in_cp[recent_in], c.n))


@BASE.node(TEMPORAL, "seconds", ("seconds_since_last", "as_of - max ts over ALL(v)"),
           ("seconds_since_first", "as_of - min ts over ALL(v)"))
def seconds_since_last_first(c: BaseContext) -> Pair:
    """Recency and age: dormant accounts that wake up stand out."""
    active = c.total > 0
    return np.where(active, c.as_of - c.ts_max, 0.0), np.where(active, c.as_of - c.ts_min, 0.0)


@BASE.node(TEMPORAL, "seconds",
           ("interarrival_mean", "mean gap between consecutive sorted ts of ALL(v) (needs 2 transfers)"),
           ("interarrival_std", "population std of those gaps"))
def interarrival_mean_std(c: BaseContext) -> Pair:
    """The rhythm of activity: regular (scheduled) or irregular."""
    return c.gap_stats


@BASE.node(TEMPORAL, "seconds", ("interarrival_min", "min of those gaps"))
def interarrival_min(c: BaseContext) -> np.ndarray:
    """The shortest pause: scripted transfers come seconds apart."""
    return _min(*c.gaps, c.n)


@BASE.node(TEMPORAL, "ratio",
           ("burstiness", "(interarrival_std - interarrival_mean) / (interarrival_std + interarrival_mean)"))
def burstiness(c: BaseContext) -> np.ndarray:
    """-1 for a metronome, 0 for random arrivals, towards 1 for bursts."""
    gap_mean, gap_std = c.gap_stats
    return _ratio(gap_std - gap_mean, gap_std + gap_mean)


@BASE.node(TEMPORAL, "ratio", ("night_ratio", "share of ALL(v) with UTC hour of ts < 6"))
def night_ratio(c: BaseContext) -> np.ndarray:
    """Activity while people sleep is often automated."""
    return _ratio(_count(c.ga[_is_night(c.all_ts)], c.n), c.total)


@BASE.node(TEMPORAL, "ratio", ("weekend_ratio", "share of ALL(v) on a UTC Saturday or Sunday"))
def weekend_ratio(c: BaseContext) -> np.ndarray:
    """Business accounts are quiet at weekends; scripts are not."""
    return _ratio(_count(c.ga[_is_weekend(c.all_ts)], c.n), c.total)


@BASE.node(TEMPORAL, "days", ("active_days", "number of distinct UTC days (ts // 86400) in ALL(v)"))
def active_days(c: BaseContext) -> np.ndarray:
    """Steady use against all activity packed into a few days."""
    return _count(c.days[0], c.n)


@BASE.node(FLOW, "ratio",
           ("pass_through_ratio", "min(in_amount_sum, out_amount_sum) / max(in_amount_sum, out_amount_sum)"))
def pass_through_ratio(c: BaseContext) -> np.ndarray:
    """Near 1 when what comes in goes out again: the mule's signature."""
    return _ratio(np.minimum(c.in_sum, c.out_sum), np.maximum(c.in_sum, c.out_sum))


@BASE.node(FLOW, "ratio",
           ("pass_through_ratio_24h", "min(in_amount_24h, out_amount_24h) / max(in_amount_24h, out_amount_24h)"))
def pass_through_ratio_24h(c: BaseContext) -> np.ndarray:
    """Pass-through within a day: money that barely stops."""
    out24, in24 = c.amount_24h
    return _ratio(np.minimum(in24, out24), np.maximum(in24, out24))


@BASE.node(FLOW, "ratio", ("count_balance", "(in_count - out_count) / (in_count + out_count)"))
def count_balance(c: BaseContext) -> np.ndarray:
    """Collector (towards 1) or distributor (towards -1), by number of transfers."""
    return _ratio(c.in_count - c.out_count, c.total)


@BASE.node(FLOW, "accounts", ("reciprocal_counterparties", "|R(v) ∩ S(v)|"))
def reciprocal_counterparties(c: BaseContext) -> np.ndarray:
    """Counterparties money flows to and back from: round-tripping needs them."""
    return c.r_and_s


@BASE.node(FLOW, "amount", ("self_transfer_amount", "sum of amounts of transfers in OUT(v) whose payee is v"))
def self_transfer_amount(c: BaseContext) -> np.ndarray:
    """Money that only goes around in circles on one account."""
    is_self = c.is_self_out
    return _sum(c.out.owner[is_self], c.out.amount[is_self], c.n)


@BASE.node(DIVERSITY, "nats", ("out_counterparty_entropy", "Shannon entropy (ln) of the shares of OUT(v) per payee"),
           ("in_counterparty_entropy", "Shannon entropy (ln) of the shares of IN(v) per payer"))
def out_in_counterparty_entropy(c: BaseContext) -> Pair:
    """How evenly transfers spread over counterparties: a fan spreads, a relationship concentrates."""
    return (_sum(c.out_pairs.g, -c.out_shares * np.log(c.out_shares), c.n),
            _sum(c.in_pairs.g, -c.in_shares * np.log(c.in_shares), c.n))


@BASE.node(DIVERSITY, "ratio", ("out_counterparty_hhi", "sum over payees of (share of OUT(v) to that payee)^2"),
           ("in_counterparty_hhi", "sum over payers of (share of IN(v) from that payer)^2"))
def out_in_counterparty_hhi(c: BaseContext) -> Pair:
    """Concentration on few counterparties, less sensitive than entropy to the long tail."""
    return _sum(c.out_pairs.g, c.out_shares**2, c.n), _sum(c.in_pairs.g, c.in_shares**2, c.n)


@BASE.node(DIVERSITY, "ratio", ("out_max_counterparty_share", "largest share of OUT(v) going to one payee"),
           ("in_max_counterparty_share", "largest share of IN(v) coming from one payer"))
def out_in_max_counterparty_share(c: BaseContext) -> Pair:
    """Dependence on a single counterparty, such as the one account a mule feeds."""
    return _max(c.out_pairs.g, c.out_shares, c.n), _max(c.in_pairs.g, c.in_shares, c.n)


@BASE.node(NEIGHBOUR, "transfers", ("neighbor_max_total_count", "max over u in N(v) of out_count(u) + in_count(u)"))
def neighbor_max_total_count(c: BaseContext) -> np.ndarray:
    """The busiest counterparty: one hub next door is hidden by a mean."""
    return _max(c.neighbours[0], c.neighbour_total, c.n)


@BASE.node(NEIGHBOUR, "transfers",
           ("neighbor_std_total_count", "population std over u in N(v) of out_count(u) + in_count(u)"))
def neighbor_std_total_count(c: BaseContext) -> np.ndarray:
    """Whether the counterparties are alike in activity or a mix of hubs and quiet accounts."""
    return c.neighbour_total_stats[1]


@BASE.node(NEIGHBOUR, "transfers", ("payee_mean_in_count", "mean over u in R(v) minus {v} of in_count(u)"))
def payee_mean_in_count(c: BaseContext) -> np.ndarray:
    """Paying into collector accounts (many payers) is a laundering path."""
    return c.counterparty_mean(c.out_pairs, c.codes.neighbour_in)


@BASE.node(NEIGHBOUR, "transfers", ("payer_mean_out_count", "mean over u in S(v) minus {v} of out_count(u)"))
def payer_mean_out_count(c: BaseContext) -> np.ndarray:
    """Being paid by distributor accounts (many payees) is the other end of a fan-out."""
    return c.counterparty_mean(c.in_pairs, c.codes.neighbour_out)


@BASE.node(NEIGHBOUR, "ratio",
           ("neighbor_mean_out_share", "mean over u in N(v) of out_count(u) / (out_count(u) + in_count(u))"))
def neighbor_mean_out_share(c: BaseContext) -> np.ndarray:
    """Whether the counterparties mostly pay out or mostly collect."""
    nb_g, nb_u = c.neighbours
    share = _ratio(c.codes.neighbour_out[nb_u], c.neighbour_total)
    return _ratio(_sum(nb_g, share, c.n), _count(nb_g, c.n))


# ---------------------------------------------------------------------------------------------
# Edge features: one row per outgoing transfer e = p -> q (each transfer lives in its payer's batch).


@BASE.edge(AMOUNT, "std",
           ("amount_zscore_payer", "(amount - out_amount_mean(p)) / out_amount_std(p); 0 when that std is 0"))
def amount_zscore_payer(c: BaseContext) -> np.ndarray:
    """How unusual this amount is for its payer."""
    out_mean, out_std = c.out_stats
    return _ratio(c.out.amount - out_mean[c.out.owner], out_std[c.out.owner])


@BASE.edge(VOLUME, "transfers", ("pair_count", "number of transfers from p to q with ts <= as_of"))
def pair_count(c: BaseContext) -> np.ndarray:
    """A first transfer to a new payee is riskier than the hundredth."""
    return c.out_pairs.count[c.out_pairs.row_pair]


@BASE.edge(VOLUME, "transfers", ("payer_out_count", "out_count(p)"), ("payee_in_count", "in_count(q)"))
def payer_out_payee_in_count(c: BaseContext) -> Pair:
    """The activity of both ends, so the transfer's score sees the accounts it joins."""
    return c.out_count[c.out.owner], c.codes.neighbour_in[c.codes.out_cp]


@BASE.edge(AMOUNT, "amount", ("pair_amount_sum", "sum of amounts of transfers from p to q with ts <= as_of"))
def pair_amount_sum(c: BaseContext) -> np.ndarray:
    """The size of the relationship the transfer belongs to."""
    return c.out_pairs.amount[c.out_pairs.row_pair]


@BASE.edge(AMOUNT, "ratio", ("amount_to_payer_mean", "amount / out_amount_mean(p)"))
def amount_to_payer_mean(c: BaseContext) -> np.ndarray:
    """Size against the payer's habit, defined even when the payer's amounts never vary."""
    return _ratio(c.out.amount, c.out_stats[0][c.out.owner])


@BASE.edge(FLOW, "flag", ("is_reciprocated", "1 if some transfer from q to p has ts <= as_of, else 0"),
           ("is_self_transfer", "1 if p = q, else 0"))
def is_reciprocated_self_transfer(c: BaseContext) -> Pair:
    """Whether the money can come back, or never left."""
    return _flag(c.reciprocated[c.out_pairs.row_pair]), _flag(c.is_self_out)


@BASE.edge(AMOUNT, "flag", ("is_round_amount", "1 if amount is a positive multiple of 100, else 0"),
           ("is_below_threshold", "1 if 9000 <= amount < 10000, else 0"))
def is_round_below_threshold(c: BaseContext) -> Pair:
    """The amount's own tells: typed by a person, or kept under the reporting threshold."""
    return _flag(_is_round(c.out.amount)), _flag(_is_below_threshold(c.out.amount))


@BASE.edge(TEMPORAL, "flag", ("is_night", "1 if the UTC hour of ts < 6, else 0"))
def is_night(c: BaseContext) -> np.ndarray:
    """A transfer made while people sleep."""
    return _flag(_is_night(c.out.ts))
