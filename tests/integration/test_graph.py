"""Bulk graph reads against the real Neo4j, on a label of their own."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import pytest
from neo4j import Neo4jDriver

from fx_workers.config import GraphModel, load_settings
from fx_workers.engine.graph import Cypher, open_driver, read_accounts
from ops.fixtures import Slice

if TYPE_CHECKING:
    from neo4j import Driver

    from fx_workers.config import Settings
    from fx_workers.engine.batch import BatchInput, Transfers

MODEL = GraphModel(account_label="TGraphAccount", transfer_type="TGRAPH_TRANSFER")


def test_accounts_without_an_id_do_not_shift_the_costs(neo4j_driver: Driver, settings: Settings) -> None:
    database = settings.neo4j.database
    neo4j_driver.execute_query(  # the id-less account comes first, with more transfers than the other
        "CREATE (n:TGraphAccount), (x:TGraphAccount {id: 'x'}), (y:TGraphAccount {id: 'y'}) "
        "CREATE (n)-[:TGRAPH_TRANSFER {tx_id: 't1', amount: 1.0, ts: 1}]->(n), "
        "(n)-[:TGRAPH_TRANSFER {tx_id: 't2', amount: 1.0, ts: 1}]->(n), "
        "(x)-[:TGRAPH_TRANSFER {tx_id: 't3', amount: 1.0, ts: 1}]->(y)",
        database_=database,
    )
    try:
        ids, costs = read_accounts(neo4j_driver, Cypher(MODEL), database)
        assert ids.tolist() == ["x", "y"] and costs.tolist() == [1, 1]
    finally:
        neo4j_driver.execute_query("MATCH (a:TGraphAccount) DETACH DELETE a", database_=database)


def test_a_routing_uri_extracts_what_a_direct_one_does(piece: Slice, redis_client, settings: Settings) -> None:
    """``neo4j://`` (routing; Community serves it from its single instance) gives the same run as ``bolt://``:
    every read is a read transaction, which a cluster would route to a follower or read replica."""
    env = {**piece.env, "FX__NEO4J__URI": f"neo4j://{urlsplit(settings.neo4j.uri).hostname}:{settings.neo4j.port}"}
    routed = Slice(load_settings(environ=env), env)
    with open_driver(routed.settings.neo4j) as driver:
        assert isinstance(driver, Neo4jDriver), type(driver)  # the routing driver, not a direct one
    assert routed.local_snapshot(redis_client) == piece.local_snapshot(redis_client)


def _rows(window: Transfers) -> list[tuple]:
    return sorted(zip(window.payer.tolist(), window.payee.tolist(), window.ts.tolist(), strict=True))


@pytest.mark.parametrize("window_size", [0, 2**62, None], ids=["whole window", "through the ball", "cached"])
def test_the_window_read_returns_the_pattern_ball(neo4j_driver: Driver, settings: Settings, monkeypatch,
                                                  window_size: int | None) -> None:
    """``read_batch``'s windowed neighbourhood is the one ``tests.graphs.batch_input`` builds from the
    definition (each transfer once, the window's edges exact), whichever way it is read, and the pattern
    features computed from it equal the naive reference's, with hostile ids, a hub, window edges and
    transfers after ``as_of``."""
    from fx_workers.engine.batch import PATTERN_WINDOW
    from fx_workers.engine.catalogue import NODE_FEATURE_NAMES, compute_features
    from fx_workers.engine.graph import WindowCache, read_batch
    from fx_workers.engine.patterns import PATTERNS
    from tests.graphs import AS_OF, batch_input
    from tests.reference import Reference, Transfer

    hostile = ["it's", "a:b", "{x}", "n') DETACH DELETE n //", "ü"]
    rows = [(hostile[i], hostile[(i + 1) % 5], AS_OF - 100 + i) for i in range(5)]  # a 5-cycle: no count
    rows += [(hostile[0], hostile[2], AS_OF - 50), (hostile[2], hostile[0], AS_OF - 40)]
    rows += [("hub", f"leaf{i % 300}", AS_OF - i) for i in range(900)] + [("leaf1", "hub", AS_OF - 5)]
    rows += [("e", "hub", AS_OF - PATTERN_WINDOW), ("f", "hub", AS_OF - PATTERN_WINDOW + 1), ("e", "e", AS_OF),
             ("hub", "e", AS_OF + 1), ("hub", "f", AS_OF - 3)]
    transfers = [Transfer(f"t{i}", p, q, float(i), ts) for i, (p, q, ts) in enumerate(rows)]
    if window_size is not None:
        monkeypatch.setattr(Cypher, "window_size", f"RETURN {window_size} AS n")  # picks the read under test
    cache = WindowCache().bind("run") if window_size is None else None  # read once, then every batch from it
    database = settings.neo4j.database
    neo4j_driver.execute_query(
        "UNWIND $rows AS r MERGE (p:TGraphAccount {id: r.payer}) MERGE (q:TGraphAccount {id: r.payee}) "
        "CREATE (p)-[:TGRAPH_TRANSFER {tx_id: r.tx, amount: r.amount, ts: r.ts}]->(q)",
        rows=[{"tx": t.tx_id, "payer": t.payer, "payee": t.payee, "amount": t.amount, "ts": t.ts} for t in transfers],
        database_=database)
    try:
        ids = [*hostile, "hub", "leaf1", "e", "f", "nobody"]
        reference = Reference(transfers, AS_OF)
        expected = {v: reference.patterns(v) for v in ids}
        names = [s.name for s in PATTERNS.specs("node")]
        for batch in (ids, ids[:3], ids[5:]):
            read = read_batch(neo4j_driver, Cypher(MODEL), batch, AS_OF, database, cache=cache)
            assert _rows(read.window) == _rows(batch_input(transfers, batch, AS_OF).window)
            assert cache is None or cache.window is not None
            result = compute_features(read)
            for v, row in zip(batch, result.node_values, strict=True):
                found = dict(zip(NODE_FEATURE_NAMES, row.tolist(), strict=True))
                assert {n: found[n] for n in names} == expected[v], v
    finally:
        neo4j_driver.execute_query("MATCH (a:TGraphAccount) DETACH DELETE a", database_=database)


def _load(driver: Driver, database: str, transfers: list) -> None:
    driver.execute_query(
        "UNWIND $rows AS r MERGE (p:TGraphAccount {id: r.payer}) MERGE (q:TGraphAccount {id: r.payee}) "
        "CREATE (p)-[:TGRAPH_TRANSFER {tx_id: r.tx, amount: r.amount, ts: r.ts}]->(q)",
        rows=[{"tx": t.tx_id, "payer": t.payer, "payee": t.payee, "amount": t.amount, "ts": t.ts} for t in transfers],
        database_=database)


def _legs(batch: BatchInput) -> dict[str, list[tuple]]:
    """Each side's rows as (account, tx, counterparty, amount, ts), sorted: a row read twice shows twice."""
    return {side: sorted(zip(batch.ids[e.owner].tolist(), e.tx.tolist(), e.other.tolist(), e.amount.tolist(),
                             e.ts.tolist(), strict=True))
            for side, e in (("out", batch.out), ("in", batch.inc))}


def _neighbours(batch: BatchInput) -> dict[str, tuple[int, int]]:
    return dict(zip(batch.neighbour_ids.tolist(), zip(batch.neighbour_out_count.tolist(),
                                                      batch.neighbour_in_count.tolist(), strict=True), strict=True))


@pytest.mark.parametrize("cached", [False, True], ids=["counterparties' counts", "every account's counts"])
def test_the_batch_read_is_the_definitions(neo4j_driver: Driver, settings: Settings, monkeypatch,
                                           cached: bool) -> None:
    """Each transfer of the batch once per side (one between two batch accounts, or a self-transfer, an OUT
    row of its payer and an IN row of its payee, never twice), and every counterparty's own counts up to
    ``as_of``, with transfers after it, read per batch or from the run's counts of every account; whether a
    transfer is after ``as_of`` is asked of Neo4j once per run with a run's cache."""
    from fx_workers.engine.graph import WindowCache, read_batch
    from tests.graphs import AS_OF, batch_input
    from tests.reference import Transfer

    rows = [("a", "b", AS_OF - 9), ("b", "a", AS_OF - 8), ("a", "b", AS_OF), ("b", "c", AS_OF - 7),
            ("c", "c", AS_OF - 6), ("a", "x", AS_OF - 5), ("x", "a", AS_OF + 1), ("x", "y", AS_OF - 4),
            ("y", "x", AS_OF + 2), ("y", "b", AS_OF - 3), ("z", "y", AS_OF - 2), ("a", "b", AS_OF + 3),
            ("z", "z", AS_OF + 4)]
    transfers = [Transfer(f"t{i}", p, q, float(i), ts) for i, (p, q, ts) in enumerate(rows)]
    database = settings.neo4j.database
    cache = WindowCache().bind("run") if cached else None
    asked = []
    query = Cypher.transfers_after.fget
    monkeypatch.setattr(Cypher, "transfers_after", property(lambda c: asked.append(1) or query(c)))  # a query each
    _load(neo4j_driver, database, transfers)
    try:
        batches = (["a", "b", "c"], ["x", "z"], ["y", "b"], ["a", "b", "c"])
        for batch in batches:
            read = read_batch(neo4j_driver, Cypher(MODEL), batch, AS_OF, database, window=False, cache=cache)
            expected = batch_input(transfers, batch, AS_OF)
            assert _legs(read) == _legs(expected), batch
            assert _neighbours(read) == _neighbours(expected), batch
        assert cache is None or cache.counts is not None  # the later batches read the run's counts
        assert len(asked) == (1 if cached else len(batches))
    finally:
        neo4j_driver.execute_query("MATCH (a:TGraphAccount) DETACH DELETE a", database_=database)


def test_a_transfer_without_an_amount_names_its_account(neo4j_driver: Driver, settings: Settings) -> None:
    from fx_workers.engine.graph import GraphDataError, read_batch
    from tests.graphs import AS_OF
    from tests.reference import Transfer

    database = settings.neo4j.database
    _load(neo4j_driver, database, [Transfer("t0", "p", "q", 1.0, AS_OF - 1), Transfer("t1", "q", "r", 1.0, AS_OF)])
    neo4j_driver.execute_query("MATCH ()-[t:TGRAPH_TRANSFER {tx_id: 't1'}]->() REMOVE t.amount", database_=database)
    try:
        with pytest.raises(GraphDataError, match="account 'q' has a transfer without"):
            read_batch(neo4j_driver, Cypher(MODEL), ["p", "q"], AS_OF, database)
    finally:
        neo4j_driver.execute_query("MATCH (a:TGraphAccount) DETACH DELETE a", database_=database)
