"""A naive reference implementation of every feature, written for clarity, not speed.

It works on a plain list of transfers for the whole graph, one account at a time, straight from
the definitions in the catalogue, with the standard library only. Tests compare it with the
vectorised engine.
"""

from __future__ import annotations

import itertools
import math
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime


@dataclass(frozen=True)
class Transfer:
    tx_id: str
    payer: str
    payee: str
    amount: float
    ts: int


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def _pstd(xs: list[float]) -> float:
    return statistics.pstdev(xs) if xs else 0.0


def _div(a: float, b: float) -> float:
    return a / b if b else 0.0


def _entropy(counter: Counter) -> float:
    total = sum(counter.values())
    return -sum(c / total * math.log(c / total) for c in counter.values()) if total else 0.0


def _hhi(counter: Counter) -> float:
    total = sum(counter.values())
    return sum((c / total) ** 2 for c in counter.values()) if total else 0.0


def _max_share(counter: Counter) -> float:
    total = sum(counter.values())
    return max(counter.values()) / total if total else 0.0


def _utc(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _is_round(a: float) -> bool:
    return a > 0 and a % 100 == 0


WEEK, MONTH = 7 * 86400, 30 * 86400


def _simple_cycles(v: str, window: list[Transfer]) -> set[frozenset[tuple[str, str]]]:
    """Every simple directed cycle of length 2 to 4 through v, as its set of edges (u != w)."""
    succ: dict[str, set[str]] = {}
    for t in window:
        if t.payer != t.payee:
            succ.setdefault(t.payer, set()).add(t.payee)
    found = set()

    def walk(path: list[str]) -> None:
        for w in succ.get(path[-1], ()):
            if w == v and len(path) >= 2:
                found.add(frozenset(zip(path, [*path[1:], v], strict=True)))
            elif w not in path and len(path) < 4:
                walk([*path, w])

    walk([v])
    return found


def _time_respecting(cycle: frozenset[tuple[str, str]], window: list[Transfer]) -> bool:
    """Some rotation of the cycle has one transfer per edge with strictly increasing ts (every choice tried)."""
    nxt = dict(cycle)
    for start in nxt:
        order, u = [], start
        for _ in cycle:
            order.append((u, nxt[u]))
            u = nxt[u]
        choices = [[t.ts for t in window if (t.payer, t.payee) == edge] for edge in order]
        if any(all(a < b for a, b in itertools.pairwise(pick)) for pick in itertools.product(*choices)):
            return True
    return False


class Reference:
    """Features of any account of one graph at one ``as_of``."""

    def __init__(self, transfers: list[Transfer], as_of: int) -> None:
        self.as_of = as_of
        self.visible = [t for t in transfers if t.ts <= as_of]

    def out_of(self, v: str) -> list[Transfer]:
        return [t for t in self.visible if t.payer == v]

    def in_of(self, v: str) -> list[Transfer]:
        return [t for t in self.visible if t.payee == v]

    def node(self, v: str) -> dict[str, float]:
        as_of = self.as_of
        out, inc = self.out_of(v), self.in_of(v)
        alls = out + inc
        R = {t.payee for t in out}
        S = {t.payer for t in inc}
        N = (R | S) - {v}
        oa = [t.amount for t in out]
        ia = [t.amount for t in inc]
        ts_all = [t.ts for t in alls]
        gaps = [b - a for a, b in zip(sorted(ts_all), sorted(ts_all)[1:], strict=False)]
        gap_mean, gap_std = _mean(gaps), _pstd(gaps)

        def recent(ts: list[Transfer], window: int) -> list[Transfer]:
            return [t for t in ts if t.ts > as_of - window]

        def total_count(u: str) -> int:
            return len(self.out_of(u)) + len(self.in_of(u))

        nb_totals = [total_count(u) for u in N]
        out24 = sum(t.amount for t in recent(out, 86400))
        in24 = sum(t.amount for t in recent(inc, 86400))
        days = Counter(t.ts // 86400 for t in alls)
        f = {
            "out_count": len(out),
            "in_count": len(inc),
            "out_unique_counterparties": len(R),
            "in_unique_counterparties": len(S),
            "out_amount_sum": sum(oa),
            "in_amount_sum": sum(ia),
            "out_amount_mean": _mean(oa),
            "in_amount_mean": _mean(ia),
            "out_amount_max": max(oa, default=0.0),
            "in_amount_max": max(ia, default=0.0),
            "out_amount_std": _pstd(oa),
            "net_flow": sum(ia) - sum(oa),
            "reciprocity": _div(len(R & S), len(R | S)),
            "active_span_seconds": max(ts_all) - min(ts_all) if ts_all else 0,
            "count_24h": len(recent(out, 86400)) + len(recent(inc, 86400)),
            "neighbor_mean_total_count": _mean(nb_totals),
            "total_count": len(alls),
            "self_transfer_count": sum(1 for t in out if t.payee == v),
            "unique_counterparties": len(R | S),
            "out_repeat_ratio": 1 - len(R) / len(out) if out else 0.0,
            "in_amount_std": _pstd(ia),
            "out_amount_min": min(oa, default=0.0),
            "in_amount_min": min(ia, default=0.0),
            "out_amount_median": statistics.median(oa) if oa else 0.0,
            "in_amount_median": statistics.median(ia) if ia else 0.0,
            "out_amount_cv": _div(_pstd(oa), _mean(oa)),
            "round_amount_ratio": _div(sum(1 for t in alls if _is_round(t.amount)), len(alls)),
            "below_threshold_ratio": _div(sum(1 for a in oa if 9000 <= a < 10000), len(oa)),
            "count_1h": len(recent(alls, 3600)),
            "count_7d": len(recent(alls, 7 * 86400)),
            "max_daily_count": max(days.values(), default=0),
            "out_amount_24h": out24,
            "in_amount_24h": in24,
            "out_amount_7d": sum(t.amount for t in recent(out, 7 * 86400)),
            "in_amount_7d": sum(t.amount for t in recent(inc, 7 * 86400)),
            "fan_out_24h": len({t.payee for t in recent(out, 86400)}),
            "fan_in_24h": len({t.payer for t in recent(inc, 86400)}),
            "seconds_since_last": as_of - max(ts_all) if ts_all else 0,
            "seconds_since_first": as_of - min(ts_all) if ts_all else 0,
            "interarrival_mean": gap_mean,
            "interarrival_std": gap_std,
            "interarrival_min": min(gaps, default=0),
            "burstiness": _div(gap_std - gap_mean, gap_std + gap_mean),
            "night_ratio": _div(sum(1 for t in alls if _utc(t.ts).hour < 6), len(alls)),
            "weekend_ratio": _div(sum(1 for t in alls if _utc(t.ts).weekday() >= 5), len(alls)),
            "active_days": len(days),
            "pass_through_ratio": _div(min(sum(ia), sum(oa)), max(sum(ia), sum(oa))),
            "pass_through_ratio_24h": _div(min(in24, out24), max(in24, out24)),
            "count_balance": _div(len(inc) - len(out), len(alls)),
            "reciprocal_counterparties": len(R & S),
            "self_transfer_amount": sum(t.amount for t in out if t.payee == v),
            "out_counterparty_entropy": _entropy(Counter(t.payee for t in out)),
            "in_counterparty_entropy": _entropy(Counter(t.payer for t in inc)),
            "out_counterparty_hhi": _hhi(Counter(t.payee for t in out)),
            "in_counterparty_hhi": _hhi(Counter(t.payer for t in inc)),
            "out_max_counterparty_share": _max_share(Counter(t.payee for t in out)),
            "in_max_counterparty_share": _max_share(Counter(t.payer for t in inc)),
            "neighbor_max_total_count": max(nb_totals, default=0),
            "neighbor_std_total_count": _pstd(nb_totals),
            "payee_mean_in_count": _mean([len(self.in_of(u)) for u in R - {v}]),
            "payer_mean_out_count": _mean([len(self.out_of(u)) for u in S - {v}]),
            "neighbor_mean_out_share": _mean([len(self.out_of(u)) / total_count(u) for u in N]),
        }
        return {k: float(x) for k, x in f.items()} | self.patterns(v)

    def window(self, seconds: int) -> list[Transfer]:
        return [t for t in self.visible if t.ts > self.as_of - seconds]

    def patterns(self, v: str) -> dict[str, float]:
        """The pattern family by enumeration: every path, every pair of transfers, every choice of transfers."""
        w7, w30 = self.window(WEEK), self.window(MONTH)
        payees30, payers30 = defaultdict(set), defaultdict(set)
        for t in w30:
            payees30[t.payer].add(t.payee)
            payers30[t.payee].add(t.payer)
        middles = defaultdict(set)  # d -> every m with a transfer v -> m and a later m -> d
        for t1 in (t for t in w7 if t.payer == v and t.payee != v):
            for t2 in w7:
                if t2.payer == t1.payee and t2.ts > t1.ts and t2.payee not in (v, t1.payee):
                    middles[t2.payee].add(t1.payee)
        cycles = _simple_cycles(v, w30)
        f = {
            "fan_out_7d": len({t.payee for t in w7 if t.payer == v}),
            "fan_in_7d": len({t.payer for t in w7 if t.payee == v}),
            "fan_out_30d": len(payees30[v]),
            "fan_in_30d": len(payers30[v]),
            "max_payer_fan_out_30d": max((len(payees30[u]) for u in payers30[v] - {v}), default=0),
            "max_payee_fan_in_30d": max((len(payers30[w]) for w in payees30[v] - {v}), default=0),
            "cycles_30d": len(cycles),
            "temporal_cycles_30d": sum(_time_respecting(cycle, w30) for cycle in cycles),
            "scatter_gather_7d": sum(len(ms) >= 2 for ms in middles.values()),
        }
        outs = [t.ts for t in w30 if t.payer == v and t.payee != v]
        waits = [min((o - i.ts for o in outs if o > i.ts), default=None) for i in w30 if i.payee == v and i.payer != v]
        followed = [w for w in waits if w is not None]
        f |= {"in_to_out_min_30d": min(followed, default=0), "in_to_out_mean_30d": _mean(followed),
              "in_followed_share_30d": _div(len(followed), len(waits))}
        return {k: float(x) for k, x in f.items()}

    def edge(self, t: Transfer) -> dict[str, float]:
        p, q = t.payer, t.payee
        out_p = self.out_of(p)
        amounts = [x.amount for x in out_p]
        mean, std = _mean(amounts), _pstd(amounts)
        pair = [x for x in out_p if x.payee == q]
        f = {
            "amount_zscore_payer": (t.amount - mean) / std if std else 0.0,
            "pair_count": len(pair),
            "payer_out_count": len(out_p),
            "payee_in_count": len(self.in_of(q)),
            "pair_amount_sum": sum(x.amount for x in pair),
            "amount_to_payer_mean": _div(t.amount, mean),
            "is_reciprocated": any(x.payer == q and x.payee == p for x in self.visible),
            "is_self_transfer": p == q,
            "is_round_amount": _is_round(t.amount),
            "is_below_threshold": 9000 <= t.amount < 10000,
            "is_night": _utc(t.ts).hour < 6,
        }
        return {k: float(x) for k, x in f.items()}
