"""The pattern family against the naive enumeration of tests/reference.py, on the hard cases by name."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fx_workers.engine import patterns
from fx_workers.engine.batch import PATTERN_WINDOW, Transfers, packed_ids
from fx_workers.engine.catalogue import NODE_FEATURE_NAMES, compute_features
from fx_workers.engine.patterns import PATTERNS
from tests.graphs import AS_OF, batch_input
from tests.reference import Reference, Transfer
from tests.unit.test_features import BRIEF, _brief_table, assert_close

NAMES = [s.name for s in PATTERNS.specs("node")]
WEEK = 7 * 86400


def features(transfers: list[Transfer], ids: list[str], as_of: int = AS_OF) -> dict[str, dict[str, float]]:
    result = compute_features(batch_input(transfers, ids, as_of))
    return {v: dict(zip(NODE_FEATURE_NAMES, row.tolist(), strict=True)) for v, row in zip(ids, result.node_values,
                                                                                           strict=True)}


def check(transfers: list[Transfer], ids: list[str], as_of: int = AS_OF) -> dict[str, dict[str, float]]:
    """The engine's pattern features of ``ids``, asserted equal to the reference's; returned by account."""
    found, reference = features(transfers, ids, as_of), Reference(transfers, as_of)
    for v in ids:
        expected = reference.patterns(v)
        for name in NAMES:
            assert_close(found[v][name], expected[name], f"{v}.{name}")
    return found


def chain(path: list[str], ts: list[int], prefix: str = "t") -> list[Transfer]:
    """Transfers along ``path`` (closing back to its start), one per edge, at ``ts``."""
    edges = zip(path, [*path[1:], path[0]], strict=True)
    return [Transfer(f"{prefix}{path[0]}{i}", p, q, 100.0, t) for i, ((p, q), t) in enumerate(zip(edges, ts,
                                                                                                   strict=True))]


@pytest.mark.skipif(not BRIEF.exists(), reason="the shared brief sits beside the repository")
def test_the_brief_names_every_pattern_feature() -> None:
    rows = _brief_table("## Pattern features")
    named = {name.strip() for cell in rows for name in cell.split(",")}
    assert named == set(NAMES[:len(named)]) == set(named)


@pytest.mark.parametrize("length", [2, 3, 4, 5])
@pytest.mark.parametrize("in_order", [True, False])
def test_planted_cycles(length: int, in_order: bool) -> None:
    nodes = [f"c{i}" for i in range(length)]
    ts = [AS_OF - 1000 + 10 * i for i in range(length)]
    transfers = chain(nodes, ts if in_order else ts[::-1])
    found = check(transfers, nodes)
    counted = 1.0 if length <= 4 else 0.0  # a 5-cycle is longer than the family counts
    assert all(found[v]["cycles_30d"] == counted for v in nodes)
    # out of order, a 2-cycle still has a rotation in time order; longer ones do not
    assert all(found[v]["temporal_cycles_30d"] == counted * (in_order or length == 2) for v in nodes)


def test_cycle_transfers_sharing_a_timestamp_are_not_time_respecting() -> None:
    same = chain(["a", "b", "c"], [AS_OF - 50] * 3)
    found = check(same, ["a", "b", "c"])
    assert found["a"]["cycles_30d"] == 1 and found["a"]["temporal_cycles_30d"] == 0
    # a parallel later transfer on one edge makes it time-respecting from that edge's predecessor
    found = check([*same, Transfer("late", "b", "c", 1.0, AS_OF - 40), Transfer("later", "c", "a", 1.0, AS_OF - 30)],
                  ["a", "b", "c"])
    assert found["a"]["temporal_cycles_30d"] == 1


def test_cycles_are_counted_once_with_parallel_transfers_and_shared_edges() -> None:
    transfers = [*chain(["a", "b"], [AS_OF - 9, AS_OF - 8]), *chain(["a", "b", "c"], [AS_OF - 7, AS_OF - 6, AS_OF - 5],
                                                                     "u"),
                 *chain(["a", "b", "c", "d"], [AS_OF - 4, AS_OF - 3, AS_OF - 2, AS_OF - 1], "w"),
                 Transfer("p1", "a", "b", 5.0, AS_OF - 100), Transfer("p2", "a", "b", 5.0, AS_OF - 100)]
    found = check(transfers, ["a", "b", "c", "d"])
    assert found["a"]["cycles_30d"] == 3  # a-b, a-b-c, a-b-c-d


def test_a_cycle_through_a_hub_with_5000_transfers() -> None:
    hub = "hub"
    transfers = [Transfer(f"h{i}", hub, f"leaf{i % 2500}", 10.0, AS_OF - 1 - i % 86400) for i in range(5000)]
    transfers += chain(["x", hub, "y"], [AS_OF - 300, AS_OF - 200, AS_OF - 100], "c")
    transfers += [Transfer(f"r{i}", f"leaf{i}", "x", 1.0, AS_OF - 50) for i in range(3)]  # 3-cycles x-hub-leaf
    found = check(transfers, ["x", "y", "leaf0", "leaf7"])
    assert found["x"]["cycles_30d"] == 4 and found["x"]["max_payer_fan_out_30d"] == 1
    assert found["y"]["max_payer_fan_out_30d"] == 2501
    assert found["leaf7"]["max_payer_fan_out_30d"] == 2501


def test_hub_cycles_do_not_depend_on_the_chunk_size(monkeypatch) -> None:
    transfers = [Transfer(f"o{i}", "hub", f"m{i % 40}", 1.0, AS_OF - 5000 + i) for i in range(400)]
    transfers += [Transfer(f"i{i}", f"m{i % 40}", f"n{i % 7}", 1.0, AS_OF - 4000 + i) for i in range(400)]
    transfers += [Transfer(f"b{i}", f"n{i}", "hub", 1.0, AS_OF - 100 - i) for i in range(7)]
    ids = ["hub", "m1", "n2"]
    whole = features(transfers, ids)
    monkeypatch.setattr(patterns, "CHUNK_ROWS", 5)
    assert features(transfers, ids) == whole
    assert whole["hub"]["cycles_30d"] == 40 * 7 and whole["hub"]["scatter_gather_7d"] == 7
    check(transfers, ids)


def test_scatter_gather_needs_the_second_hop_after_the_first() -> None:
    transfers = [Transfer("s1", "v", "m1", 1.0, AS_OF - 100), Transfer("s2", "v", "m2", 1.0, AS_OF - 100),
                 Transfer("g1", "m1", "d", 1.0, AS_OF - 50), Transfer("g2", "m2", "d", 1.0, AS_OF - 150),
                 Transfer("s3", "v", "m3", 1.0, AS_OF - 10), Transfer("g3", "m3", "d", 1.0, AS_OF - 10)]
    assert check(transfers, ["v", "d"])["v"]["scatter_gather_7d"] == 0  # m2 and m3 come too early
    found = check([*transfers, Transfer("g4", "m2", "d", 1.0, AS_OF - 99)], ["v", "d"])
    assert found["v"]["scatter_gather_7d"] == 1 and found["d"]["fan_in_7d"] == 3


@pytest.mark.parametrize("window", [WEEK, PATTERN_WINDOW])
def test_window_edges(window: int) -> None:
    """A transfer at as_of - W is out of the window; one at as_of - W + 1 is in; after as_of is out."""
    transfers = [Transfer("out", "v", "a", 1.0, AS_OF - window), Transfer("in", "v", "b", 1.0, AS_OF - window + 1),
                 Transfer("future", "v", "c", 1.0, AS_OF + 1), Transfer("ret", "a", "v", 1.0, AS_OF),
                 Transfer("ret2", "b", "v", 1.0, AS_OF)]
    found = check(transfers, ["v", "a", "b"])
    suffix = "7d" if window == WEEK else "30d"
    assert found["v"][f"fan_out_{suffix}"] == 1  # b only
    assert found["v"]["cycles_30d"] == 1 + (window == WEEK)  # as_of - 7d is still inside 30d


def test_self_transfers_count_in_fans_but_never_form_patterns() -> None:
    transfers = [Transfer("s", "v", "v", 1.0, AS_OF - 10), Transfer("s2", "v", "v", 1.0, AS_OF - 5),
                 Transfer("a", "v", "w", 1.0, AS_OF - 4), Transfer("b", "w", "w", 1.0, AS_OF - 3)]
    found = check(transfers, ["v", "w"])
    assert found["v"]["fan_out_7d"] == 2 and found["v"]["fan_in_7d"] == 1
    assert found["v"]["cycles_30d"] == 0 and found["w"]["max_payer_fan_out_30d"] == 2


def test_hostile_ids() -> None:
    ids = ["it's", 'say "hi"', "a:b:c", "{tag}", "ü ß", "", " ", "\x00x"]
    transfers = chain(ids[:4], [AS_OF - 40, AS_OF - 30, AS_OF - 20, AS_OF - 10]) + chain(ids[4:7], [AS_OF - 3] * 3, "z")
    found = check(transfers, ids)
    assert found["it's"]["temporal_cycles_30d"] == 1


def test_ids_that_do_not_pack_into_an_integer_give_the_same_features() -> None:
    # ids of more than 8 characters, or with one above U+00FF, are coded as strings (the other path)
    rows = []
    for prefix in ["", "account-", "€"]:
        v, a, b, c, w = (f"{prefix}{v}" for v in "vabcw")
        transfers = (chain([v, a, b, c], [AS_OF - 40, AS_OF - 30, AS_OF - 20, AS_OF - 10])
                     + chain([v, w, a], [AS_OF - 5, AS_OF - 9, AS_OF - 50], "x") + chain([v, c], [AS_OF - 3] * 2, "y"))
        found = check(transfers, [v, a, b, c, w])
        rows.append([found[u] for u in (v, a, b, c, w)])
    assert rows[0][0]["cycles_30d"] == 4 and rows[0] == rows[1] == rows[2]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=10), min_size=1, max_size=8), st.lists(st.text(max_size=10), max_size=8))
def test_packed_ids_order_and_match_as_the_strings_do(left: list[str], right: list[str]) -> None:
    ids, other = np.array(left, dtype=np.str_), np.array(right, dtype=np.str_)
    packed, packed_other = packed_ids(ids), packed_ids(other)
    if packed is None or packed_other is None:  # too long, or a character above U+00FF: strings are used
        assert any(len(s) > 8 or max(s, default="a") > "\xff" for s in [*ids, *other])
        return
    assert packed.dtype == np.uint64
    assert np.array_equal(np.argsort(packed, kind="stable"), np.argsort(ids, kind="stable"))
    assert np.array_equal(packed[:, None] == packed_other[None, :], ids[:, None] == other[None, :])


@pytest.mark.parametrize("accounts", [["b"], ["a", "zz"], [], ["account-long-id"], ["€"]])
def test_a_balls_transfers_are_the_windows_that_touch_its_accounts(accounts: list[str]) -> None:
    window = Transfers(np.array(["a", "b", "€", "c"]), np.array(["b", "c", "a", "account-long-id"]),
                       np.array([1, 2, 3, 4]))
    near = window.touching(np.array(accounts, dtype=np.str_))
    keep = np.isin(window.payer, accounts) | np.isin(window.payee, accounts)
    assert (near.payer.tolist(), near.payee.tolist(), near.ts.tolist()) == (
        window.payer[keep].tolist(), window.payee[keep].tolist(), window.ts[keep].tolist())
    packable = Transfers(np.array(["a", "b", "c"]), np.array(["b", "c", "a"]), np.array([1, 2, 3]))
    near = packable.touching(np.array(accounts, dtype=np.str_))
    keep = np.isin(packable.payer, accounts) | np.isin(packable.payee, accounts)
    assert near.payer.tolist() == packable.payer[keep].tolist()
    fresh = Transfers(near.payer, near.payee, near.ts)  # what the ball carries is what it would pack to
    assert all(np.array_equal(x, y) for x, y in zip(near.packed, fresh.packed, strict=True))


DENSE = st.lists(st.tuples(st.sampled_from("abcdef"), st.sampled_from("abcdef"),
                           st.one_of(st.sampled_from([AS_OF - WEEK, AS_OF - WEEK + 1, AS_OF, AS_OF + 1, AS_OF - 5]),
                                     st.integers(AS_OF - 9 * 86400, AS_OF))), max_size=45)


@settings(max_examples=200, deadline=None)
@given(DENSE, st.integers(1, 6))
def test_dense_recent_graphs_match_the_reference_in_any_batching(rows, batch_size: int) -> None:
    transfers = [Transfer(f"t{i}", p, q, 1.0, ts) for i, (p, q, ts) in enumerate(rows)]
    ids = list("abcdef")
    whole = check(transfers, ids)
    for start in range(0, len(ids), batch_size):
        part = features(transfers, ids[start:start + batch_size])
        for v, row in part.items():
            assert row == whole[v], v


def test_empty_window() -> None:
    found = check([Transfer("old", "a", "b", 1.0, AS_OF - PATTERN_WINDOW - 5)], ["a", "b", "nobody"])
    assert not any(found[v][name] for v in found for name in NAMES)
    assert np.isfinite(list(found["a"].values())).all()


def test_the_window_cache_holds_one_run_and_nothing_too_large() -> None:
    from fx_workers.engine.graph import WindowCache

    window = Transfers(np.array(["a", "b"]), np.array(["b", "c"]), np.array([1, 2]))
    cache = WindowCache().bind("r1")
    cache.keep(window)
    assert cache.bind("r1").window is window and cache.bind("r2").window is None
    small = WindowCache(max_bytes=window.nbytes - 1).bind("r1")
    small.keep(window)
    assert small.window is None
    assert window.touching(np.array(["c"])).payer.tolist() == ["b"]


def test_time_from_an_inflow_to_the_next_outflow() -> None:
    transfers = [Transfer("i1", "a", "v", 1.0, AS_OF - 100), Transfer("same", "v", "b", 1.0, AS_OF - 100),
                 Transfer("o1", "v", "b", 1.0, AS_OF - 95), Transfer("i2", "c", "v", 1.0, AS_OF - 50),
                 Transfer("self", "v", "v", 1.0, AS_OF - 40), Transfer("late", "v", "b", 1.0, AS_OF + 5),
                 Transfer("old", "d", "v", 1.0, AS_OF - PATTERN_WINDOW)]
    found = check(transfers, ["v", "b"])["v"]
    assert (found["in_to_out_min_30d"], found["in_to_out_mean_30d"]) == (5.0, 5.0)  # i2 has no outflow after it
    assert found["in_followed_share_30d"] == 0.5


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**62), st.integers(0, 2**40)), max_size=30), st.booleans())
def test_sorting_by_key_then_ts_packs_both_into_one_number_only_when_they_fit(rows, small: bool) -> None:
    key = np.array([k >> 40 if small else k for k, _ in rows], dtype=np.int64)
    t = np.array([t >> 20 if small else t for _, t in rows], dtype=np.int64)
    order = np.lexsort((t, key))
    found = patterns._sort_stamped(key, t)
    assert np.array_equal(found[0], key[order]) and np.array_equal(found[1], t[order])
