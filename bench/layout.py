"""The record layouts side by side in one run: Redis bytes and client CPU per record, hash against
float64 against tagged against varint.

``python -m bench.layout`` (``--sizes 100000,amlsim`` by default) loads each
graph under a private slice of the shared stack (as ``bench.capacity`` does), computes every record
once with the package (untimed, kept in an ``.npz``), starts a standalone Redis of its own on a free
port (so ``used_memory`` is ours alone), and writes the same records in each layout, one after the
other, through the write path of that layout:

- ``hash``: the first layout, as its ``BatchWriter`` wrote it (one ``HSET`` per record, one field per
  feature, ``repr`` text, pipelines of 2,000, keys ``{run}:node_features:{id}``), kept here for the
  comparison;
- ``float64``: the second, as its ``BatchWriter`` wrote it (one STRING per record, float64
  little-endian, ``MSET`` of 2,000, the same long keys), kept here too;
- ``tagged``: the third, as its ``BatchWriter`` wrote it (the ``tagged-le`` encoding: 2-bit codes, then
  each value that is not +0.0 as uint8, uint32 or float64, in order; :func:`encode_tagged_le`), keys
  ``{run}:n:{id}`` and ``{run}:e:{tx}``, kept here too;
- ``varint``: today's ``BatchWriter`` (the ``tagged-varint`` encoding of :mod:`fx_workers.store.records`:
  integers from 256 and two-decimal amounts as varints after the fixed-width values; the same keys).

With ``--cluster``, the same again into a 3-master Redis Cluster of our own (``used_memory`` summed over
the masters; the float64, tagged and varint writers send ``SET``s packed per master there, as ``MSET`` needs
one slot).

Per layout: ``used_memory`` per account record and per transfer record (nodes written first, then the
transfers; each read once it has settled, see :func:`settled_memory`), per account with its transfers,
and the client's CPU (thread time: encoding, packing, redis-py, the socket) per record. Prints a Markdown
table and writes ``bench/results/layout-<time>.json``.
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
from fx_workers.store.bulk import EncodedRows
from fx_workers.store.client import is_cluster, open_redis
from fx_workers.store.keys import RedisKeys
from fx_workers.store.writer import CHUNK, BatchWriter, Checksum, set_on_cluster

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import redis

    from fx_workers.store.keys import RunKeys

LAYOUTS = ("hash", "float64", "tagged", "varint")
BATCH = 1000
"""Accounts per written batch (the DAG's default batch size)."""
PREFIX = "fxlayout"


def long_keys(keys: RunKeys, features: BatchFeatures) -> tuple[tuple[Callable[[str], str], tuple[str, ...],
                                                                   np.ndarray, np.ndarray], ...]:
    """Each part's key (as the hash and float64 layouts named them), names, ids and values."""
    def key_of(part: str) -> Callable[[str], str]:
        return lambda record_id: f"{keys.namespace}:{part}_features:{record_id}"

    return ((key_of("node"), NODE_FEATURE_NAMES, features.node_ids, features.node_values),
            (key_of("edge"), EDGE_FEATURE_NAMES, features.tx_ids, features.edge_values))


def write_hash(client: redis.Redis, keys: RunKeys, features: BatchFeatures) -> None:
    """The hash layout's ``BatchWriter.write``, its checksum left out."""
    for key_of, names, ids, values in long_keys(keys, features):
        args: list[str] = ["HSET", "", *(x for name in names for x in (name, ""))]
        id_list, rows = ids.tolist(), values.tolist()
        for start in range(0, len(id_list), CHUNK):
            pipe = client.pipeline(transaction=False)
            for record_id, row in zip(id_list[start : start + CHUNK], rows[start : start + CHUNK], strict=True):
                args[1], args[3::2] = key_of(record_id), encode_row(row)
                pipe.execute_command(*args)
            pipe.execute()


def write_float64(client: redis.Redis, keys: RunKeys, features: BatchFeatures) -> None:
    """The float64 layout's ``BatchWriter.write``: each row's doubles as one value, from one view of the
    matrix, hashed and sent as today's writer sends its records."""
    checksum = Checksum()
    for key_of, _, ids, values in long_keys(keys, features):
        matrix, id_list = np.ascontiguousarray(values, dtype="<f8"), ids.tolist()
        blobs = matrix.view(np.dtype((np.void, matrix.shape[1] * 8))).ravel().tolist() if matrix.size else []
        checksum.add_part(id_list, blobs)
        set_many(client, key_of, id_list, blobs)


def set_many(client: redis.Redis, key_of: Callable[[str], str], ids: list[str], blobs: list[bytes]) -> None:
    """One STRING per record, as ``BatchWriter`` sends them: an ``MSET`` per chunk, or ``SET``s packed per
    master on a cluster."""
    for start in range(0, len(ids), CHUNK):
        names = [key_of(record_id) for record_id in ids[start : start + CHUNK]]
        if is_cluster(client):
            set_on_cluster(client, names, blobs[start : start + CHUNK])
        else:
            pairs: list[str | bytes] = [""] * (2 * len(names))
            pairs[::2], pairs[1::2] = names, blobs[start : start + CHUNK]
            client.execute_command("MSET", *pairs)


_TAGGED_WIDTHS = np.array([0, 1, 4, 8], dtype=np.int64)
_TAGGED_KEPT = np.array([(1 << 8 * width) - 1 for width in (0, 1, 4, 8)], dtype="<u8")


def encode_tagged_le(values: np.ndarray) -> EncodedRows:
    """The ``tagged-le`` encoding of the third layout, in bulk as its ``encode_rows`` built it: a header of
    2-bit codes (0: +0.0; 1: uint8; 2: uint32; 3: float64), then each value whose code is not 0, in order."""
    matrix = np.ascontiguousarray(values, dtype="<f8")
    rows, width = matrix.shape
    head = (width + 3) // 4
    with np.errstate(invalid="ignore"):
        whole = (matrix == np.floor(matrix)) & ~np.signbit(matrix)
        narrower = (whole & (matrix < 2**32)).view(np.uint8) + (whole & (matrix < 256)).view(np.uint8)
    codes = (3 - narrower) * (matrix.view("<u8") != 0).view(np.uint8)
    padded = np.zeros((rows, 4 * head), dtype=np.uint8)
    padded[:, :width] = codes
    header = padded[:, 0::4] | padded[:, 1::4] << 2 | padded[:, 2::4] << 4 | padded[:, 3::4] << 6
    slots = np.where(codes == 3, matrix.view("<u8"), np.where((codes == 1) | (codes == 2), matrix, 0).astype("<u8"))
    kept = np.concatenate([np.ones((rows, head), dtype=bool),
                           _TAGGED_KEPT[codes].view(np.uint8).reshape(rows, 8 * width) != 0], axis=1)
    data = np.concatenate([header, slots.view(np.uint8).reshape(rows, 8 * width)], axis=1)[kept]
    return EncodedRows(data.tobytes(), head + _TAGGED_WIDTHS[codes].sum(axis=1))


def write_tagged(client: redis.Redis, keys: RunKeys, features: BatchFeatures) -> None:
    """The tagged layout's ``BatchWriter.write``: today's, with the ``tagged-le`` encoding."""
    checksum = Checksum()
    for key_of, ids, values in ((keys.node, features.node_ids, features.node_values),
                                (keys.edge, features.tx_ids, features.edge_values)):
        id_list, encoded = ids.tolist(), encode_tagged_le(values)
        checksum.add_encoded(id_list, encoded)
        set_many(client, key_of, id_list, encoded.rows())


def write_varint(client: redis.Redis, keys: RunKeys, features: BatchFeatures) -> None:
    BatchWriter(client, keys).write(features)


WRITERS: dict[str, Callable[[redis.Redis, RunKeys, BatchFeatures], None]] = {
    "hash": write_hash, "float64": write_float64, "tagged": write_tagged, "varint": write_varint}


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


def settled_memory(client: redis.Redis, every: float = 0.5, limit: float = 30.0) -> int:
    """:func:`used_memory` once two samples ``every`` seconds apart agree: Redis resizes its key space's hash
    table in its cron (a shrink after the last layout's keys are deleted, the end of a growth's incremental
    rehash, when both tables are held), which would otherwise land in whichever part is measured next."""
    last, deadline = used_memory(client), time.monotonic() + limit
    while time.monotonic() < deadline:
        time.sleep(every)
        if (now := used_memory(client)) == last:
            break
        last = now
    return last


def measure_layout(client: redis.Redis, layout: str, saved: dict[str, np.ndarray]) -> dict[str, Any]:
    """Write every record in ``layout`` into an empty prefix; bytes and client CPU per record, per part."""
    keys = RedisKeys(PREFIX).of_run(f"{layout}0")
    clear_prefix(client, PREFIX)
    result: dict[str, Any] = {"layout": layout, "target": "cluster" if is_cluster(client) else "standalone"}
    for part in ("nodes", "edges"):
        work = batches(saved, part)
        records = sum(len(b.node_ids) + len(b.tx_ids) for b in work)
        before = settled_memory(client)
        started, used = time.perf_counter(), time.thread_time()
        for batch in work:
            WRITERS[layout](client, keys, batch)
        seconds, cpu = time.perf_counter() - started, time.thread_time() - used
        after = settled_memory(client)
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
    """The Markdown rows of docs/benchmarks.md's layout section: each layout, and the older layouts' bytes
    and CPU over each newer one's."""
    lines = ["| graph | layout | B/account record | B/transfer record | B/account, transfers included | "
             "client CPU µs/record | hash / this: bytes, CPU | float64 / this: bytes, CPU | "
             "tagged / this: bytes, CPU |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for graph in results["graphs"]:
        name = "AMLSim" if graph["name"] == AMLSIM else f"{graph['transactions']:,} generated"
        name += f" ({graph['transfers'] / graph['accounts']:.1f} transfers/account)"
        by = {(row.get("target", "standalone"), row["layout"]): row for row in graph["layouts"]}
        for target, layout in by:
            row = by[target, layout]
            ratios = [f"{by[target, older]['bytes_per_account'] / row['bytes_per_account']:.2f}x, "
                      f"{by[target, older]['client_cpu_us_per_record'] / row['client_cpu_us_per_record']:.2f}x"
                      if LAYOUTS.index(older) < LAYOUTS.index(layout) and (target, older) in by else ""
                      for older in ("hash", "float64", "tagged")]
            where = "" if target == "standalone" else f", {target}"
            lines.append(f"| {name} | {layout}{where} | {row['nodes']['bytes_per_record']:,.0f} | "
                         f"{row['edges']['bytes_per_record']:,.0f} | {row['bytes_per_account']:,.0f} | "
                         f"{row['client_cpu_us_per_record']:.1f} | {' | '.join(ratios)} |")
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
