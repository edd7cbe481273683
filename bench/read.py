"""Where the batch read's time goes: today's read against the one before issue 17 and against the floor, in one run.

``python -m bench.read`` (``--sizes 100000`` by default) loads each generated graph under a private slice
of the shared stack (as ``bench.capacity`` does: labels of its own, dropped at the end, so the stack's
graph and other sessions' runs are untouched) and reads every batch of its plan (``lpt_batches`` at the
configured batch size) at two ``as_of``: the data's end (every transfer counts: the counts are degrees,
read from the degree store) and ``--before`` days earlier (the counts filter every relationship on ts).
Per part, the wall seconds (the query, the driver's decoding and the numpy columns; the best of
``--repeats``, parts interleaved, in reverse order every other pass) and Neo4j's db hits (``PROFILE``, once):

- transfers: before, ``out_edges`` and ``in_edges`` (kept here), one row per account each, so a transfer
  between two batch accounts is read twice; after, ``Cypher.edges``, each transfer once, as columns;
- counts: before, every counterparty's out and in counts, found again through the batch's transfers, batch
  after batch (kept here); after, the counterparties' counts by id per batch, or every account's once per
  run (``Cypher.account_counts``), which a run's ``WindowCache`` switches to;
- the ``transfers_after`` check: before, once per batch; after, once per run (a run's cache keeps it);
- ``read_batch`` itself as a worker runs it, with a run's cache, without the pattern window (unchanged, and
  read once per run from the cache): with the cache's rent-or-buy rule, which weighs the relationships a
  filtered count goes through, and with the rule before it (``AccountsRule``, kept here), which counted
  accounts alone; each with the batch from which it read every account's counts;
- the floor: every transfer once as columns (``bench.floor.read_columns``).

Prints a Markdown table and writes ``bench/results/read-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.floor import TRANSFER_COLUMNS
from bench.run import RESULTS, commit, machine
from fx_workers.config import load_settings
from fx_workers.engine.graph import Cypher, WindowCache, open_driver, read_accounts, read_batch
from fx_workers.steps.plan import lpt_batches

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from neo4j import Driver, Session

    from fx_workers.config import Settings

BEFORE = {
    "out_edges": "UNWIND $ids AS id "
                 "OPTIONAL MATCH (:{A} {{{id}: id}})-[t:{T}]->(q:{A}) WHERE t.{ts} <= $as_of "
                 "RETURN id, collect(t.{tx}) AS tx, collect(q.{id}) AS other, "
                 "collect(t.{amount}) AS amount, collect(t.{ts}) AS ts",
    "in_edges": "UNWIND $ids AS id "
                "OPTIONAL MATCH (:{A} {{{id}: id}})<-[t:{T}]-(p:{A}) WHERE t.{ts} <= $as_of "
                "RETURN id, collect(t.{tx}) AS tx, collect(p.{id}) AS other, "
                "collect(t.{amount}) AS amount, collect(t.{ts}) AS ts",
    "neighbour_counts": "UNWIND $ids AS id "
                        "MATCH (:{A} {{{id}: id}})-[t:{T}]-(u:{A}) WHERE t.{ts} <= $as_of "
                        "WITH DISTINCT u WHERE u.{id} IS NOT NULL "
                        "RETURN collect(u.{id}) AS ids, "
                        "collect(COUNT {{ (u)-[x:{T}]->(){where} }}) AS out_count, "
                        "collect(COUNT {{ (u)<-[x:{T}]-(){where} }}) AS in_count",
}
"""The batch read's queries before issue 17, for the comparison."""


class AccountsRule(WindowCache):
    """The run's cache with the rent-or-buy rule before it weighed relationships (kept for the comparison): a
    counterparty costs one and every account's counts the graph's accounts, whether the counts filter on ts
    or not."""

    def counts_whole(self, others: int, graph: Callable[[], tuple[int, int]], *, filtered: bool) -> bool:
        return super().counts_whole(others, graph, filtered=False)

    def rent(self, others: int, degrees: int | None) -> None:
        super().rent(others, None)


def _columns(session: Session, query: str, params: dict[str, Any]) -> None:
    """Run ``query`` and make its list columns numpy arrays, flattened over its rows, as ``read_batch`` does."""
    records = list(session.run(query, params))
    for key in records[0].keys() if records else ():
        if isinstance(records[0][key], list):
            np.asarray([x for r in records for x in r[key]])


def _db_hits(plan: dict[str, Any]) -> int:
    return plan.get("dbHits", 0) + sum(_db_hits(child) for child in plan.get("children", []))


def _profile(session: Session, query: str, batches: list[dict[str, Any]]) -> int:
    total = 0
    for params in batches:
        result = session.run("PROFILE " + query, params)
        list(result)
        total += _db_hits(result.consume().profile)
    return total


def measure_as_of(driver: Driver, settings: Settings, as_of: int, repeats: int) -> dict[str, Any]:
    """Every part of the read of every batch at ``as_of``, before and after, and the floor."""
    cypher, database = Cypher(settings.graph), settings.neo4j.database
    ids, costs = read_accounts(driver, cypher, database)
    batches = lpt_batches(ids, costs, settings.extraction.batch_size)
    with driver.session(database=database) as session:
        every = session.run(cypher.transfers_after, as_of=as_of).single() is None
    where = "" if every else " WHERE x.{ts} <= $as_of"
    before = {name: cypher.render(query.replace("{where}", where)) for name, query in BEFORE.items()}
    inputs: list = []
    bought: dict[str, int | None] = {}

    def read_batches(rule: type[WindowCache]) -> Callable[[], None]:
        def call() -> None:
            nonlocal inputs
            cache = rule().bind("bench")  # a new run's, as a worker's: rent or buy from its first batch
            inputs, bought[rule.__name__] = [], None
            for at, batch in enumerate(batches):
                inputs.append(read_batch(driver, cypher, batch, as_of, database, window=False, cache=cache))
                if cache.counts is not None and bought[rule.__name__] is None:
                    bought[rule.__name__] = at
        return call

    read_batches(WindowCache)()
    per_batch = [{"ids": batch, "as_of": as_of, "others": read.neighbour_ids.tolist()}
                 for batch, read in zip(batches, inputs, strict=True)]
    run = [{"as_of": as_of}]
    parts: dict[str, tuple[list[tuple[str, list[dict[str, Any]]]], Callable[[], None] | None]] = {
        "transfers, before": ([(before["out_edges"], per_batch), (before["in_edges"], per_batch)], None),
        "transfers, after": ([(cypher.edges, per_batch)], None),
        "counts, before (per batch)": ([(before["neighbour_counts"], per_batch)], None),
        "counts, after (per batch)": ([(cypher.neighbour_counts(every_transfer_counts=every), per_batch)], None),
        "counts, after (per run)": ([(cypher.account_counts(every_transfer_counts=every), run)], None),
        "as_of check (per batch)": ([(cypher.transfers_after, per_batch)], None),
        "as_of check (per run)": ([(cypher.transfers_after, run)], None),
        "read_batch, accounts rule (a run's cache, no window)": ([], read_batches(AccountsRule)),
        "read_batch, after (a run's cache, no window)": ([], read_batches(WindowCache)),
        "floor: every transfer once as columns": ([(cypher.render(TRANSFER_COLUMNS), run)], None),
    }
    seconds: dict[str, list[float]] = {name: [] for name in parts}
    with driver.session(database=database) as session:
        for repeat in range(repeats):  # in reverse every other pass: no part always follows the same one
            for name, (queries, call) in (reversed if repeat % 2 else iter)(list(parts.items())):
                started = time.perf_counter()
                if call is not None:
                    call()
                for query, params in queries:
                    for p in params:
                        _columns(session, query, p)
                seconds[name].append(time.perf_counter() - started)
        hits = {name: sum(_profile(session, query, params) for query, params in queries)
                for name, (queries, call) in parts.items() if call is None}
    print(f"as_of {as_of}: " + "; ".join(f"{name} {min(s):.2f} s" for name, s in seconds.items())
          + f"; every account's counts read from batch {bought}", file=sys.stderr)
    return {"as_of": as_of, "every_transfer_counts": every, "batches": len(batches), "accounts": len(ids),
            "counterparties": sum(len(read.neighbour_ids) for read in inputs),
            "whole_counts_from_batch": {"after": bought["WindowCache"], "accounts rule": bought["AccountsRule"]},
            "parts": {name: {"seconds": min(s), "runs": s, "db_hits": hits.get(name)} for name, s in seconds.items()}}


def measure_graph(size: str, seed: int, before_days: int, repeats: int) -> dict[str, Any]:
    from bench.capacity import private_graph

    with private_graph(size, seed) as (piece, graph), open_driver(piece.settings.neo4j) as driver:
        return {"transactions": graph.transactions, "as_of": [
            measure_as_of(driver, piece.settings, as_of, repeats)
            for as_of in (graph.as_of, graph.as_of - before_days * 86400)]}


def table(results: dict[str, Any]) -> str:
    """One Markdown table: each part's seconds and db hits, and its seconds over the floor's, per graph and as_of."""
    lines = ["| graph | as_of | part | seconds | / floor | db hits |", "| --- | --- | --- | --- | --- | --- |"]
    for graph in results["graphs"]:
        for at in graph["as_of"]:
            floor = at["parts"]["floor: every transfer once as columns"]["seconds"]
            when = "end (degrees)" if at["every_transfer_counts"] else "earlier (counts filtered on ts)"
            rows = {name: (part["seconds"], part["db_hits"]) for name, part in at["parts"].items()}
            checks = {"before": "as_of check (per batch)", "after": "as_of check (per run)"}
            for side, counts in (("before", "counts, before (per batch)"), ("after", "counts, after (per run)")):
                parts = [rows[f"transfers, {side}"], rows[counts], rows.get(checks[side], rows[checks["before"]])]
                rows[f"{side} in all: transfers, counts {counts.removeprefix(f'counts, {side} ')}, check"] = (
                    sum(p[0] for p in parts), sum(p[1] for p in parts))
            for name, (seconds, hits) in rows.items():
                hits_text = "" if hits is None else f"{hits:,}"
                lines.append(f"| {graph['transactions']:,} | {when} | {name} | {seconds:.2f} | "
                             f"{seconds / floor:.1f}x | {hits_text} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.read", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000", help="transactions per generated graph, comma separated")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--before", type=int, default=10, help="days before the data's end of the second as_of")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--render", type=Path, metavar="JSON", help="only print the table of a results file")
    return parser.parse_args(argv)


def measure(args: argparse.Namespace, argv: Sequence[str] | None) -> dict[str, Any]:
    """Every graph of ``args.sizes`` measured; the results, also written to ``bench/results``."""
    results = {"command": " ".join(["python -m bench.read", *(argv or sys.argv[1:])]), "commit": commit(),
               "machine": machine(load_settings()),
               "graphs": [measure_graph(size.strip(), args.seed, args.before, args.repeats)
                          for size in args.sizes.split(",") if size.strip()]}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"read-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"wrote {out}", file=sys.stderr)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(table(json.loads(args.render.read_text()) if args.render else measure(args, argv)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
