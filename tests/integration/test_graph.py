"""Bulk graph reads against the real Neo4j, on a label of their own."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fx_workers.config import GraphModel
from fx_workers.engine.graph import Cypher, read_accounts

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
