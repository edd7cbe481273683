"""The pattern family: the shapes laundering takes (fan-out, fan-in, cycles, scatter-gather) in time windows.

For a window W (7d = 604800 s, 30d = 2592000 s) the window's transfers are those with
`as_of - W < ts <= as_of`; G_W is the directed graph of accounts with an edge u → w when some transfer
of the window goes from u to w and u != w (self-transfers never form a pattern). Every count is exact
(no sampling, no cap) and stays within 2 hops of v, so a batch reads its own 30d ball: every windowed
transfer of every account that has one with the batch (through those accounts, or as the whole window
by the ts index when that is smaller).

- Fans count distinct (payer, payee) pairs of the window per account.
- Cycles through v are anchored at v, so each simple cycle is found once: v→a→v, v→a→b→v, and
  v→a→b→c→v by joining the forward 2-paths v→a→b with the backward 2-paths b→c→v on (v, b).
- A cycle with one transfer per edge is time-respecting when its ts fall exactly once around it; with
  parallel transfers, each starting edge is tried, taking on every next edge its earliest ts after the
  previous one (taking the earliest never hurts the edges after it).
- Scatter-gather joins v→m (its earliest ts) with m→d (its latest ts) on m.

Cost per batch: O(B log B) for the ball of B windowed transfers, plus the 2-paths (for each batch account
v and window neighbour a, the window degree of a) and the cycles found. Joins run in chunks of about
CHUNK_ROWS rows (2**20), so memory is bounded by the ball plus a constant however large the hubs: a hub
with 5,000 window counterparties adds 5,000 rows for each batch account that pays it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from fx_workers.engine.batch import PATTERN_WINDOW, BatchInput, lookup, packed_ids
from fx_workers.engine.features import FLOW
from fx_workers.engine.spec import FeatureGroup

if TYPE_CHECKING:
    from collections.abc import Iterator

WEEK = 7 * 86400
CHUNK_ROWS = 1 << 20
"""Rows of a join held at once (2-paths, cycle candidates): the engine's memory bound per batch."""
PATTERN = "patterns"
NEVER = np.iinfo(np.int64).max


def _expand(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For groups given by ``starts`` and ``counts``: each item's group index and its position."""
    group = np.repeat(np.arange(len(counts)), counts)
    offsets = np.arange(len(group)) - np.repeat(np.cumsum(counts) - counts, counts)
    return group, np.repeat(starts, counts) + offsets


def _chunks(sizes: np.ndarray) -> list[slice]:
    """Consecutive slices of ``sizes`` whose sums stay within :data:`CHUNK_ROWS` plus one item (an item is
    never split)."""
    limit, ends = CHUNK_ROWS, np.cumsum(sizes)
    total = int(ends[-1]) if len(ends) else 0
    cuts = np.unique(np.searchsorted(ends, np.arange(limit, total, limit), side="right"))
    bounds = [0, *cuts.tolist(), len(sizes)]
    return [slice(a, b) for a, b in itertools.pairwise(bounds) if b > a] or [slice(0, 0)]


def _starts(values: np.ndarray, ncodes: int) -> np.ndarray:
    """For ascending account codes ``values``: each code's first position, and ``len(values)`` last."""
    return np.concatenate(([0], np.cumsum(np.bincount(values, minlength=ncodes))))


def _sort_stamped(key: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``key`` and ``t`` (non-negative integers) sorted by key, then t: one sort of ``key << bits | t``
    where that fits 63 bits, else a lexsort."""
    if not len(key):
        return key, t
    bits = int(t.max()).bit_length()
    if int(key.max()) >> (63 - bits):
        order = np.lexsort((t, key))
        return key[order], t[order]
    stamp = np.sort((key << bits) | t)
    return stamp >> bits, stamp & ((1 << bits) - 1)


def _code(batch: BatchInput) -> tuple[int, np.ndarray]:
    """Every id of the batch and its ball (its accounts, then the payers, then the payees) as integer codes
    in id order: (how many distinct ids, each one's code). Sorted as integers when the ids pack
    (:func:`~fx_workers.engine.batch.packed_ids`: the same codes, at an integer sort's cost)."""
    own, window = packed_ids(batch.ids), batch.window.packed
    if own is None or window is None:
        ids = np.concatenate([batch.ids, batch.window.payer, batch.window.payee])
    else:
        ids = np.concatenate([own, *window])
    codes, inverse = np.unique(ids, return_inverse=True)
    return len(codes), inverse.astype(np.int64)


def _runs(key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For ascending ``key``: where each run of equal values starts, and its length."""
    first = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1]))) if len(key) else np.zeros(0, np.int64)
    return first, np.diff(np.append(first, len(key)))


def _falls_once(ts: list[np.ndarray]) -> np.ndarray:
    """For ts around cycles (one array per position): whether they fall (do not rise) exactly once around."""
    k = len(ts)
    return sum((ts[i] >= ts[(i + 1) % k]).astype(np.int64) for i in range(k)) == 1


@dataclass(frozen=True)
class WindowGraph:
    """G_W as distinct edges (sorted by source, then target) with each edge's transfers' ts, sorted.

    Edge ``e`` goes ``src[e] → dst[e]``; its transfers' ts are ``ts[first[e]:first[e] + count[e]]``.
    """

    ncodes: int
    keys: np.ndarray  # src * ncodes + dst, ascending
    src: np.ndarray
    dst: np.ndarray
    first: np.ndarray
    count: np.ndarray
    ts: np.ndarray  # every transfer's ts, grouped by edge, ascending within an edge
    since: int

    @classmethod
    def of(cls, payer: np.ndarray, payee: np.ndarray, ts: np.ndarray, since: int, ncodes: int) -> WindowGraph:
        keep = (ts > since) & (payer != payee)
        key, ts = _sort_stamped(payer[keep] * ncodes + payee[keep], ts[keep] - since)
        return cls._grouped(key, ts + since, since, ncodes)

    @classmethod
    def _grouped(cls, key: np.ndarray, ts: np.ndarray, since: int, ncodes: int) -> WindowGraph:
        """The graph of transfers already sorted by (key, ts)."""
        first, count = _runs(key)
        edges = key[first]
        return cls(ncodes, edges, edges // ncodes, edges % ncodes, first, count, ts, since)

    def after(self, since: int) -> WindowGraph:
        """The subgraph of the transfers with ``ts > since`` (a later start: G_7d from G_30d)."""
        keep = self.ts > since
        return self._grouped(np.repeat(self.keys, self.count)[keep], self.ts[keep], since, self.ncodes)

    @cached_property
    def out_start(self) -> np.ndarray:
        """Account code → index of its first out-edge (edges are sorted by source)."""
        return _starts(self.src, self.ncodes)

    @cached_property
    def in_order(self) -> np.ndarray:
        """Edge indices sorted by target, then source."""
        return np.argsort(self.dst * self.ncodes + self.src)  # distinct keys: any sort gives this order

    @cached_property
    def in_start(self) -> np.ndarray:
        return _starts(self.dst[self.in_order], self.ncodes)

    def out_edges(self, accounts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row in ``accounts``, edge index) for every out-edge of each account."""
        start = self.out_start[accounts]
        return _expand(start, self.out_start[accounts + 1] - start)

    def in_edges(self, accounts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(row in ``accounts``, edge index) for every in-edge of each account."""
        start = self.in_start[accounts]
        row, position = _expand(start, self.in_start[accounts + 1] - start)
        return row, self.in_order[position]

    def out_degree(self, accounts: np.ndarray) -> np.ndarray:
        return self.out_start[accounts + 1] - self.out_start[accounts]

    def in_degree(self, accounts: np.ndarray) -> np.ndarray:
        return self.in_start[accounts + 1] - self.in_start[accounts]

    def find(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """The edge index of each ``src → dst``, or -1 where there is none."""
        at, there = lookup(self.keys, src * self.ncodes + dst)
        return np.where(there, at, -1)

    @cached_property
    def _stamps(self) -> np.ndarray:
        """Each transfer as ``edge << 32 | (ts - since)``: ascending, so one search finds a next ts."""
        edge = np.repeat(np.arange(len(self.count)), self.count)
        return (edge << 32) | (self.ts - self.since)

    @cached_property
    def _first_ts(self) -> np.ndarray:
        return self.ts[self.first]

    @cached_property
    def _last_ts(self) -> np.ndarray:
        return self.ts[self.first + self.count - 1]

    def first_ts(self, edges: np.ndarray) -> np.ndarray:
        return self._first_ts[edges]

    def last_ts(self, edges: np.ndarray) -> np.ndarray:
        return self._last_ts[edges]

    def next_ts(self, edges: np.ndarray, first: np.ndarray, last: np.ndarray, after: np.ndarray) -> np.ndarray:
        """The earliest ts of each edge strictly after ``after`` (:data:`NEVER` where there is none), given the
        edges' first and last ts."""
        out = np.where(first > after, first, NEVER)
        many = (first <= after) & (after < last)  # so the edge has several transfers
        if many.any():  # the next ts is inside the edge's list: one search in the (edge, ts) order
            e = edges[many]
            at = np.searchsorted(self._stamps, (e << 32) | (after[many] - self.since), side="right")
            out[many] = self.ts[at]
        return out

    def time_respecting(self, cycle: list[np.ndarray]) -> np.ndarray:
        """For cycles given as their edges in order (one array per position): can transfers be picked
        one per edge, in cycle order from some starting edge, with strictly increasing ts?

        With one transfer per edge that holds exactly when the ts fall only once around the cycle; so does it
        when each edge's earliest ts, or each edge's latest, fall only once. The other cycles with parallel
        transfers try each starting edge, taking on every next edge its earliest ts after the previous one
        (the earliest choice never hurts later edges)."""
        k = len(cycle)
        first = [self.first_ts(edges) for edges in cycle]
        ok = _falls_once(first)
        several = np.flatnonzero(~ok)
        edges = [e[several] for e in cycle]
        last = [self.last_ts(e) for e in edges]
        todo = ~_falls_once(last)
        ok[several[~todo]] = True
        todo &= ~np.logical_and.reduce([f[several] == t for f, t in zip(first, last, strict=True)])  # single
        several, edges, last = several[todo], [e[todo] for e in edges], [t[todo] for t in last]
        first = [f[several] for f in first]
        found = np.zeros(len(several), dtype=bool)
        for start in range(k):
            rows = np.flatnonzero(~found)
            t = first[start][rows]
            for step in range(1, k):  # the cycles still possible from this start, fewer at each step
                i = (start + step) % k
                t = self.next_ts(edges[i][rows], first[i][rows], last[i][rows], t)
                rows, t = rows[t != NEVER], t[t != NEVER]
            found[rows] = True
        ok[several[found]] = True
        return ok


class PatternContext:
    """The batch's windowed 2-hop ball coded as integers, and G_30d and G_7d over it."""

    def __init__(self, batch: BatchInput) -> None:
        window = batch.window
        self.n, self.as_of = len(batch.ids), batch.as_of
        ncodes, inverse = _code(batch)
        self.ncodes = max(ncodes, 1)
        self.accounts, payer, payee = np.split(inverse, np.cumsum([self.n, len(window)]))
        self.payer, self.payee, self.ts = payer, payee, window.ts.astype(np.int64)
        self.g30 = WindowGraph.of(payer, payee, self.ts, batch.as_of - PATTERN_WINDOW, self.ncodes)
        self.g7 = self.g30.after(batch.as_of - WEEK)

    def fan(self, window: int, payers: bool) -> np.ndarray:
        """Per account code, its distinct payees (or payers) in the window, itself included: its edges in
        G_W (distinct, never to itself) plus one if it has a self-transfer in the window."""
        g = self.g7 if window == WEEK else self.g30
        degree = np.diff(g.in_start) if payers else np.diff(g.out_start)
        itself = np.zeros(self.ncodes, dtype=np.int64)
        itself[self.payer[(self.payer == self.payee) & (self.ts > self.as_of - window)]] = 1
        return (degree + itself).astype(np.float64)

    def max_over(self, edges: tuple[np.ndarray, np.ndarray], value: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """Per batch account, the max of ``value`` over the far ends of its G_30d edges (0 if none)."""
        row, edge = edges
        out = np.zeros(self.n)
        np.maximum.at(out, row, value[ends[edge]])
        return out

    @cached_property
    def cycles(self) -> tuple[np.ndarray, np.ndarray]:
        """Per batch account: simple cycles of length 2 to 4 through it in G_30d, and the time-respecting ones."""
        g, v = self.g30, self.accounts
        row, e1 = g.out_edges(v)  # length 2: v → a → v
        back = g.find(g.dst[e1], v[row])
        closed = back >= 0
        in_row, e4 = g.in_edges(v)
        paths = (np.bincount(row, weights=g.out_degree(g.dst[e1]), minlength=self.n)
                 + np.bincount(in_row, weights=g.in_degree(g.src[e4]), minlength=self.n))
        longer = (self._cycles_3_4(np.arange(self.n)[part]) for part in _chunks(paths.astype(np.int64)))
        total, temporal = np.zeros(self.n), np.zeros(self.n)
        # lengths 3 and 4 in chunks of bounded 2-paths, each counted before the next is found
        for rows, cycle in itertools.chain([(row[closed], [e1[closed], back[closed]])], *longer):
            total += np.bincount(rows, minlength=self.n)
            if len(rows):
                temporal += np.bincount(rows[g.time_respecting(cycle)], minlength=self.n)
        return total, temporal

    def _two_paths(self, rows: np.ndarray, forward: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Forward v→a→b (or backward b→c→v) for batch rows: (row, first edge from v's side, second edge)."""
        g, v = self.g30, self.accounts[rows]
        if forward:
            r, e1 = g.out_edges(v)
            r2, e2 = g.out_edges(g.dst[e1])
            return rows[r[r2]], e1[r2], e2
        r, e1 = g.in_edges(v)
        r2, e2 = g.in_edges(g.src[e1])
        return rows[r[r2]], e1[r2], e2

    def _cycles_3_4(self, rows: np.ndarray) -> Iterator[tuple[np.ndarray, list[np.ndarray]]]:
        """The 3- and 4-cycles through the batch ``rows``: (row, the cycle's edges in order from v)."""
        g, codes = self.g30, self.accounts
        f_row, e1, e2 = self._two_paths(rows, forward=True)  # v → a → b
        b = g.dst[e2]
        keep = b != codes[f_row]
        f_row, e1, e2, b = f_row[keep], e1[keep], e2[keep], b[keep]
        f_key = f_row * self.ncodes + b
        # length 3: v → a → b → v, b among v's payers (in-edges by row, then payer: their keys ascend)
        i_row, i_edge = g.in_edges(codes[rows])
        at, closed = lookup(rows[i_row] * self.ncodes + g.src[i_edge], f_key)
        yield f_row[closed], [e1[closed], e2[closed], i_edge[at[closed]]]
        # length 4: v → a → b → c → v, joining v → a → b with b → c → v on (v, b)
        k_row, e4, e3 = self._two_paths(rows, forward=False)  # e4 = c → v, e3 = b → c
        kb = g.src[e3]
        keep = kb != codes[k_row]
        k_key, order = _sort_stamped(k_row[keep] * self.ncodes + kb[keep], np.flatnonzero(keep))
        e4, e3 = e4[order], e3[order]
        first, size = _runs(k_key)
        at, joined = lookup(k_key[first], f_key)
        lo, size = np.append(first, 0)[at], np.where(joined, np.append(size, 0)[at], 0)  # 0 stands in for none
        for part in _chunks(size):
            f, k = _expand(lo[part], size[part])
            f += part.start
            simple = g.dst[e1[f]] != g.src[e4[k]]  # a != c
            f, k = f[simple], k[simple]
            yield f_row[f], [e1[f], e2[f], e3[k], e4[k]]

    @cached_property
    def scatter_gather(self) -> np.ndarray:
        """Per batch account v: accounts d != v reached through at least 2 distinct m, v → m before m → d."""
        g, v = self.g7, self.accounts
        row, e1 = g.out_edges(v)
        keys = []
        for part in _chunks(g.out_degree(g.dst[e1])):
            r, e = row[part], e1[part]
            r2, e2 = g.out_edges(g.dst[e])
            d, r = g.dst[e2], r[r2]
            later = (g.last_ts(e2) > g.first_ts(e[r2])) & (d != v[r])
            keys.append(r[later] * self.ncodes + d[later])  # one key per (v, m, d): edges are distinct
        key, intermediates = np.unique(np.concatenate(keys), return_counts=True)
        return np.bincount(key[intermediates >= 2] // self.ncodes, minlength=self.n).astype(np.float64)


    @cached_property
    def waits(self) -> tuple[np.ndarray, np.ndarray]:
        """Per inflow of a batch account in the 30d window (from another account): the account's batch row,
        and the seconds until its next outflow to another account (-1 where none follows by ``as_of``)."""
        since = self.as_of - PATTERN_WINDOW
        row = np.full(self.ncodes, -1)
        row[self.accounts] = np.arange(self.n)
        recent = (self.ts > since) & (self.payer != self.payee)
        outs, ins = recent & (row[self.payer] >= 0), recent & (row[self.payee] >= 0)
        stamps = np.sort((row[self.payer[outs]] << 32) | (self.ts[outs] - since))
        owner, t = row[self.payee[ins]], self.ts[ins] - since
        if not len(stamps):
            return owner, np.full(len(t), -1)
        at = np.searchsorted(stamps, (owner << 32) | t, side="right")
        nxt = stamps[np.minimum(at, len(stamps) - 1)]
        found = (at < len(stamps)) & ((nxt >> 32) == owner)
        return owner, np.where(found, (nxt & 0xFFFFFFFF) - t, -1)


PATTERNS: FeatureGroup[PatternContext] = FeatureGroup(PatternContext)


@PATTERNS.node(PATTERN, "accounts",
               ("fan_out_7d", "number of distinct payees of OUT(v) in the 7d window (a self-transfer counts v)"),
               ("fan_in_7d", "number of distinct payers of IN(v) in the 7d window (a self-transfer counts v)"),
               ("fan_out_30d", "number of distinct payees of OUT(v) in the 30d window (a self-transfer counts v)"),
               ("fan_in_30d", "number of distinct payers of IN(v) in the 30d window (a self-transfer counts v)"))
def fans(c: PatternContext) -> tuple[np.ndarray, ...]:
    return tuple(c.fan(window, payers)[c.accounts] for window in (WEEK, PATTERN_WINDOW) for payers in (False, True))


@PATTERNS.node(PATTERN, "accounts",
               ("max_payer_fan_out_30d",
                "max, over payers u != v of IN(v) in the 30d window, of fan_out_30d(u); 0 if none"),
               ("max_payee_fan_in_30d",
                "max, over payees w != v of OUT(v) in the 30d window, of fan_in_30d(w); 0 if none"))
def counterparty_fans(c: PatternContext) -> tuple[np.ndarray, np.ndarray]:
    g = c.g30
    return (c.max_over(g.in_edges(c.accounts), c.fan(PATTERN_WINDOW, payers=False), g.src),
            c.max_over(g.out_edges(c.accounts), c.fan(PATTERN_WINDOW, payers=True), g.dst))


@PATTERNS.node(PATTERN, "cycles",
               ("cycles_30d", "number of distinct simple directed cycles of length 2, 3 or 4 in G_30d that pass "
                              "through v (a cycle is its set of edges)"),
               ("temporal_cycles_30d", "how many of those cycles are time-respecting: for some starting edge, "
                                       "transfers of the window picked one per edge, in cycle order, with strictly "
                                       "increasing ts"))
def cycles(c: PatternContext) -> tuple[np.ndarray, np.ndarray]:
    return c.cycles


@PATTERNS.node(PATTERN, "accounts",
               ("scatter_gather_7d", "number of accounts d != v reached from v through at least 2 distinct "
                                     "intermediates m (not v, not d), a transfer v → m followed by a strictly "
                                     "later m → d, all in the 7d window"))
def scatter_gather(c: PatternContext) -> np.ndarray:
    return c.scatter_gather


@PATTERNS.node(FLOW, "seconds",
               ("in_to_out_min_30d", "over v's inflows from others in the 30d window, the least time until v's next "
                                     "outflow to another account (ts strictly later, up to as_of); 0 if none"),
               ("in_to_out_mean_30d", "mean of that time over the inflows that have a next outflow"))
def in_to_out(c: PatternContext) -> tuple[np.ndarray, np.ndarray]:
    """How fast money passes through: mules forward what they receive within hours."""
    owner, wait = c.waits
    has = wait >= 0
    least = np.full(c.n, np.inf)
    np.minimum.at(least, owner[has], wait[has])
    count = np.bincount(owner[has], minlength=c.n)
    total = np.bincount(owner[has], weights=wait[has], minlength=c.n)
    return np.where(count > 0, least, 0.0), np.divide(total, count, out=np.zeros(c.n), where=count > 0)


@PATTERNS.node(FLOW, "ratio",
               ("in_followed_share_30d", "share of v's inflows from others in the 30d window that an outflow to "
                                         "another account follows (ts strictly later, up to as_of)"))
def in_followed_share(c: PatternContext) -> np.ndarray:
    owner, wait = c.waits
    inflows = np.bincount(owner, minlength=c.n)
    followed = np.bincount(owner[wait >= 0], minlength=c.n)
    return np.divide(followed, inflows, out=np.zeros(c.n), where=inflows > 0)
