"""The record layouts side by side in one run: Redis bytes and client CPU per record, hash against packed.

``python -m bench.layout`` (``--sizes 100000,amlsim`` by default) loads each
graph under a private slice of the shared stack (as ``bench.capacity`` does), computes every record
once with the package (untimed, kept in an ``.npz``), starts a standalone Redis of its own on a free
port (so ``used_memory`` is ours alone), and writes the same records in each layout, one after the
other, through the write path of that layout:

- ``hash``: the layout before the packed records, as its ``BatchWriter`` wrote it (one ``HSET`` per
  record, one field per feature, ``repr`` text, pipelines of 2,000), kept here for the comparison;
- ``packed``: today's ``BatchWriter`` (float64 little-endian per record, packed in bulk, ``MSET`` of 2,000).

With ``--cluster``, the same again into a 3-master Redis Cluster of our own (``used_memory`` summed over
the masters; the packed writer sends ``SET``s packed per master there, as ``MSET`` needs one slot).

Per layout: ``used_memory`` per account record and per transfer record (nodes written first, then the
transfers), per account with its transfers, and the client's CPU (thread time: encoding, packing,
redis-py, the socket) per record. Prints a Markdown table and writes ``bench/results/layout-<time>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bench.floor import encode_row, prepare_records
from bench.run import AMLSIM, RESULTS, clear_prefix, commit, machine
from fx_workers.config import load_settings
from fx_workers.engine.batch import BatchFeatures
from fx_workers.engine.catalogue import EDGE_FEATURE_NAMES, NODE_FEATURE_NAMES
from fx_workers.store.client import is_cluster, open_redis
from fx_workers.store.keys import RedisKeys
from fx_workers.store.writer import CHUNK, BatchWriter

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import redis

    from fx_workers.store.keys import RunKeys

LAYOUTS = ("hash", "packed")
BATCH = 1000
"""Accounts per written batch (the DAG's default batch size)."""
PREFIX = "fxlayout"


def write_hash(client: redis.Redis, keys: RunKeys, features: BatchFeatures) -> None:
    """The hash layout's ``BatchWriter.write`` (before the packed records), its checksum left out."""
    for key_of, names, ids, values in ((keys.node, NODE_FEATURE_NAMES, features.node_ids, features.node_values),
                                       (keys.edge, EDGE_FEATURE_NAMES, features.tx_ids, features.edge_values)):
        args: list[str] = ["HSET", "", *(x for name in names for x in (name, ""))]
        id_list, rows = ids.tolist(), values.tolist()
        for start in range(0, len(id_list), CHUNK):
            pipe = client.pipeline(transaction=False)
            for record_id, row in zip(id_list[start : start + CHUNK], rows[start : start + CHUNK], strict=True):
                args[1], args[3::2] = key_of(record_id), encode_row(row)
                pipe.execute_command(*args)
            pipe.execute()


def write_packed(client: redis.Redis, keys: RunKeys, features: BatchFeatures) -> None:
    BatchWriter(client, keys).write(features)


WRITERS: dict[str, Callable[[redis.Redis, RunKeys, BatchFeatures], None]] = {"hash": write_hash,
                                                                            "packed": write_packed}


def batches(saved: dict[str, np.ndarray], part: str) -> list[BatchFeatures]:
    """The saved records as batches of :data:`BATCH` accounts (``nodes``) or as many transfers (``edges``),
    the other part empty, so each part's memory and CPU show alone."""
    empty_ids, out = np.array([], dtype=str), []
    ids, values = (saved["node_ids"], saved["node_values"]) if part == "nodes" else (saved["tx_ids"],
                                                                                     saved["edge_values"])
    width = saved["edge_values" if part == "nodes" else "node_values"].shape[1]
    for start in range(0, len(ids), BATCH):
        chunk, rows = ids[start : start + BATCH], values[start : start + BATCH]
        nothing = np.zeros((0, width))
        out.append(BatchFeatures(chunk, rows, empty_ids, nothing) if part == "nodes"
                   else BatchFeatures(empty_ids, nothing, chunk, rows))
    return out


def used_memory(client: redis.Redis) -> int:
    """``used_memory`` of the server, or summed over a cluster's masters."""
    if is_cluster(client):
        return sum(node.redis_connection.info("memory")["used_memory"] for node in client.get_primaries())
    return client.info("memory")["used_memory"]


def measure_layout(client: redis.Redis, layout: str, saved: dict[str, np.ndarray]) -> dict[str, Any]:
    """Write every record in ``layout`` into an empty prefix; bytes and client CPU per record, per part."""
    keys = RedisKeys(PREFIX).of_run(f"{layout}0")
    clear_prefix(client, PREFIX)
    result: dict[str, Any] = {"layout": layout, "target": "cluster" if is_cluster(client) else "standalone"}
    for part in ("nodes", "edges"):
        work = batches(saved, part)
        records = sum(len(b.node_ids) + len(b.tx_ids) for b in work)
        before = used_memory(client)
        started, used = time.perf_counter(), time.thread_time()
        for batch in work:
            WRITERS[layout](client, keys, batch)
        seconds, cpu = time.perf_counter() - started, time.thread_time() - used
        after = used_memory(client)
        result[part] = {"records": records, "bytes_per_record": (after - before) / records,
                        "client_cpu_us_per_record": cpu / records * 1e6, "wall_us_per_record": seconds / records * 1e6}
    clear_prefix(client, PREFIX)
    accounts, transfers = result["nodes"]["records"], result["edges"]["records"]
    result["bytes_per_account"] = (result["nodes"]["bytes_per_record"] * accounts
                                   + result["edges"]["bytes_per_record"] * transfers) / accounts
    result["client_cpu_us_per_record"] = (result["nodes"]["client_cpu_us_per_record"] * accounts
                                          + result["edges"]["client_cpu_us_per_record"] * transfers) / (
                                              accounts + transfers)
    return result


def measure_graph(size: str, seed: int, clients: list[redis.Redis], folder: Path) -> dict[str, Any]:
    """One graph: loaded privately, its records computed once, written in each layout into our own Redis."""
    from bench.capacity import private_graph

    with private_graph(size, seed) as (piece, graph):
        path = folder / f"records-{size}.npz"
        prepare_records(piece.settings, graph.as_of, path)
        transactions, as_of = graph.transactions, graph.as_of
    saved = dict(np.load(path))
    rows = [measure_layout(client, layout, saved) for client in clients for layout in LAYOUTS]
    print(f"{size}: " + "; ".join(f"{r['layout']} ({r['target']}) {r['bytes_per_account']:,.0f} B/account, "
                                  f"{r['client_cpu_us_per_record']:.1f} us/record" for r in rows), file=sys.stderr)
    return {"name": size if size == AMLSIM else None, "transactions": transactions, "as_of": as_of,
            "accounts": len(saved["node_ids"]), "transfers": len(saved["tx_ids"]),
            "node_features": saved["node_values"].shape[1], "edge_features": saved["edge_values"].shape[1],
            "layouts": rows}


def table(results: dict[str, Any]) -> str:
    """The Markdown rows of docs/benchmarks.md's layout section."""
    lines = ["| graph | layout | B/account record | B/transfer record | B/account, transfers included | "
             "client CPU µs/record | ratio (hash / packed): bytes, CPU |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for graph in results["graphs"]:
        name = "AMLSim" if graph["name"] == AMLSIM else f"{graph['transactions']:,} generated"
        name += f" ({graph['transfers'] / graph['accounts']:.1f} transfers/account)"
        by = {(row.get("target", "standalone"), row["layout"]): row for row in graph["layouts"]}
        for target, layout in by:
            row, hashed = by[target, layout], by[target, "hash"]
            ratio = "" if layout == "hash" else (
                f"{hashed['bytes_per_account'] / row['bytes_per_account']:.1f}x, "
                f"{hashed['client_cpu_us_per_record'] / row['client_cpu_us_per_record']:.1f}x")
            where = "" if target == "standalone" else f", {target}"
            lines.append(f"| {name} | {layout}{where} | {row['nodes']['bytes_per_record']:,.0f} | "
                         f"{row['edges']['bytes_per_record']:,.0f} | {row['bytes_per_account']:,.0f} | "
                         f"{row['client_cpu_us_per_record']:.1f} | {ratio} |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.layout", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default=f"100000,{AMLSIM}",
                        help=f"transactions per generated graph, or {AMLSIM}, comma separated")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--cluster", action="store_true", help="also into a 3-master Redis Cluster of our own")
    parser.add_argument("--render", type=Path, metavar="JSON", help="only print the table of a results file")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    from bench.capacity import own_redis

    args = parse_args(argv)
    if args.render:
        print(table(json.loads(args.render.read_text())))
        return 0
    settings = load_settings()
    results: dict[str, Any] = {"command": " ".join(["python -m bench.layout", *(argv or sys.argv[1:])]),
                               "commit": commit(), "machine": machine(settings), "graphs": []}
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"layout-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
    with tempfile.TemporaryDirectory(prefix="fx-layout-") as tmp, ExitStack() as servers:
        modes = ["standalone", *(["cluster"] if args.cluster else [])]
        clients = [open_redis(load_settings(environ={**os.environ, **servers.enter_context(
            own_redis(Path(tmp) / mode, mode))}).redis) for mode in modes]
        for size in [s.strip() for s in args.sizes.split(",") if s.strip()]:
            results["graphs"].append(measure_graph(size, args.seed, clients, Path(tmp)))
            results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
            out.write_text(json.dumps(results, indent=1))  # after each graph: a later failure keeps it
    print(table(results))
    print(f"wrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
