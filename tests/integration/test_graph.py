"""Bulk graph reads against the real Neo4j, on a label of their own."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from neo4j import Neo4jDriver

from fx_workers.config import GraphModel, load_settings
from fx_workers.engine.graph import Cypher, open_driver, read_accounts
from tests.integration.pipeline_env import Slice

if TYPE_CHECKING:
    from neo4j import Driver

    from fx_workers.config import Settings

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
