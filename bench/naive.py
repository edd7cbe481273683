"""The naive extractor: what the seed's single-threaded script did, kept as the baseline.

One Cypher query per account for its neighbourhood, the core features of the brief computed per
account in plain Python, and one unpipelined ``HSET`` per record (an account, or one of its
outgoing transfers). Only the 16 core node and 2 core edge features, not the full catalogue.
"""

from __future__ import annotations

import statistics
import time
from collections import Counter
from typing import TYPE_CHECKING, NamedTuple

from bench.measure import Measurement, PhaseClock
from fx_workers.engine.catalogue import SCHEMA_VERSION
from fx_workers.engine.graph import Cypher, open_driver
from fx_workers.store.client import open_redis
from fx_workers.store.keys import RedisKeys
from fx_workers.store.reader import META_AS_OF, META_RUN_ID, META_SCHEMA

if TYPE_CHECKING:
    from fx_workers.config import Settings

DAY = 86_400
ACCOUNT_IDS = "MATCH (a:{A}) RETURN a.{id} AS id ORDER BY id"
NEIGHBOURHOOD = (
    "MATCH (v:{A} {{{id}: $id}}) "
    "CALL (v) {{ MATCH (v)-[t:{T}]->(q:{A}) WHERE t.{ts} <= $as_of "
    "RETURN collect([t.{tx}, q.{id}, t.{amount}, t.{ts}]) AS out }} "
    "CALL (v) {{ MATCH (v)<-[t:{T}]-(p:{A}) WHERE t.{ts} <= $as_of "
    "RETURN collect([t.{tx}, p.{id}, t.{amount}, t.{ts}]) AS inc }} "
    "CALL (v) {{ MATCH (v)-[t:{T}]-(u:{A}) WHERE t.{ts} <= $as_of AND u <> v WITH DISTINCT u "
    "RETURN collect(COUNT {{ (u)-[x:{T}]->() WHERE x.{ts} <= $as_of }} "
    "+ COUNT {{ (u)<-[x:{T}]-() WHERE x.{ts} <= $as_of }}) AS neighbour_totals }} "
    "RETURN out, inc, neighbour_totals"
)
"""An account's transfers both ways, and out_count + in_count of each other counterparty."""


class Leg(NamedTuple):
    """One transfer seen from an account: ``other`` is the payee of an outgoing one, the payer of an incoming one."""

    tx_id: str
    other: str
    amount: float
    ts: int


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else 0.0


def core_node_features(out: list[Leg], inc: list[Leg], neighbour_totals: list[int], as_of: int) -> dict[str, float]:
    """The 16 core node features of one account, straight from the brief's definitions.

    :param out: its outgoing transfers with ``ts <= as_of``
    :param inc: its incoming transfers with ``ts <= as_of``
    :param neighbour_totals: out_count + in_count of each counterparty other than itself
    """
    out_amounts, in_amounts = [leg.amount for leg in out], [leg.amount for leg in inc]
    payees, payers = {leg.other for leg in out}, {leg.other for leg in inc}
    stamps = [leg.ts for leg in out + inc]
    counterparties = payees | payers
    features = {
        "out_count": len(out),
        "in_count": len(inc),
        "out_unique_counterparties": len(payees),
        "in_unique_counterparties": len(payers),
        "out_amount_sum": sum(out_amounts),
        "in_amount_sum": sum(in_amounts),
        "out_amount_mean": _mean(out_amounts),
        "in_amount_mean": _mean(in_amounts),
        "out_amount_max": max(out_amounts, default=0.0),
        "in_amount_max": max(in_amounts, default=0.0),
        "out_amount_std": statistics.pstdev(out_amounts) if out_amounts else 0.0,
        "net_flow": sum(in_amounts) - sum(out_amounts),
        "reciprocity": len(payees & payers) / len(counterparties) if counterparties else 0.0,
        "active_span_seconds": max(stamps) - min(stamps) if stamps else 0,
        "count_24h": sum(1 for ts in stamps if ts > as_of - DAY),
        "neighbor_mean_total_count": _mean(neighbour_totals),
    }
    return {name: float(value) for name, value in features.items()}


def core_edge_features(out: list[Leg]) -> dict[str, dict[str, float]]:
    """The 2 core edge features of each of one account's outgoing transfers, by tx id."""
    amounts = [leg.amount for leg in out]
    mean = _mean(amounts)
    std = statistics.pstdev(amounts) if amounts else 0.0
    pairs = Counter(leg.other for leg in out)
    return {
        leg.tx_id: {
            "amount_zscore_payer": (leg.amount - mean) / std if std else 0.0,
            "pair_count": float(pairs[leg.other]),
        }
        for leg in out
    }


def run_naive(settings: Settings, *, as_of: int, run_id: str) -> Measurement:
    """Extract every account the naive way, timed from the first query to the last write."""
    cypher = Cypher(settings.graph)
    keys = RedisKeys(settings.redis.prefix).of_run(run_id)
    meta = {META_RUN_ID: run_id, META_AS_OF: str(as_of), META_SCHEMA: SCHEMA_VERSION}
    clock = PhaseClock()
    hset = clock.wrap("redis", open_redis(settings.redis).hset)
    transfers = 0
    started = time.perf_counter()
    with open_driver(settings.neo4j) as driver, driver.session(database=settings.neo4j.database) as session:
        fetch = clock.wrap("neo4j", lambda query, **params: list(session.run(query, params)))
        ids = [record["id"] for record in fetch(cypher.render(ACCOUNT_IDS))]
        query = cypher.render(NEIGHBOURHOOD)
        for account in ids:
            [record] = fetch(query, id=account, as_of=as_of)
            out, inc = [Leg(*row) for row in record["out"]], [Leg(*row) for row in record["inc"]]
            hset(keys.node(account), mapping=core_node_features(out, inc, record["neighbour_totals"], as_of) | meta)
            for tx_id, values in core_edge_features(out).items():
                hset(keys.edge(tx_id), mapping=values | meta)
            transfers += len(out)
    seconds = time.perf_counter() - started
    phases = dict(clock.seconds)
    return Measurement(seconds, len(ids), transfers, phases | {"compute": seconds - sum(phases.values())})
