"""The I/O floor: every transfer read out of Neo4j once as columns, every feature record written once.

The records are the real ones (computed by the package before the clock starts, kept in an
``.npz``), so the floor writes the same bytes as ``fx extract --local``, with no computation in
the timed part. Two writers: ``redis-cli --pipe`` with pre-encoded RESP (the server's floor) and
redis-py (a Python client's floor). Two layouts: ``packed``, fx's (one STRING of float64 per record,
``MSET`` in chunks, or per master on a cluster, as the ``BatchWriter`` sends them), and ``hash``,
the layout before it (one HASH per record, one field per feature, ``repr`` text), kept to show the
difference side by side: a writer name ending in ``-hash`` (``redis-cli-hash``, ``redis-py-hash``)
writes it.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bench.measure import BenchError, Measurement
from fx_workers.engine.catalogue import EDGE_FEATURE_NAMES, NODE_FEATURE_NAMES
from fx_workers.engine.extract import extract_batch
from fx_workers.engine.graph import Cypher, as_array, open_driver, read_accounts
from fx_workers.steps.plan import lpt_batches
from fx_workers.store.bulk import encode_rows
from fx_workers.store.client import is_cluster, open_redis
from fx_workers.store.keys import RedisKeys
from fx_workers.store.writer import CHUNK, set_on_cluster

if TYPE_CHECKING:
    from collections.abc import Iterator

    from fx_workers.config import Settings

TRANSFER_COLUMNS = (
    "MATCH (p:{A})-[t:{T}]->(q:{A}) WHERE t.{ts} <= $as_of "
    "RETURN collect(t.{tx}) AS tx, collect(p.{id}) AS payer, collect(q.{id}) AS payee, "
    "collect(t.{amount}) AS amount, collect(t.{ts}) AS ts"
)
PREPARE_BATCH = 10_000
"""Accounts per batch when computing the records the floor writes (untimed)."""

LAYOUTS = ("packed", "hash")
Record = tuple[str, bytes | dict[str, str]]
"""A key and its value: packed bytes, or the hash layout's ``{field: text}``."""


def encode_row(row: list[float]) -> list[str]:
    """A record's values as the hash layout stored them: ``repr``, the shortest text that round-trips."""
    return list(map(repr, row))


def prepare_records(settings: Settings, as_of: int, path: Path) -> None:
    """Compute every feature record of the loaded graph and save them to ``path`` (``.npz``)."""
    cypher, database = Cypher(settings.graph), settings.neo4j.database
    with open_driver(settings.neo4j) as driver:
        ids, costs = read_accounts(driver, cypher, database)
        parts = [extract_batch(driver, settings, batch, as_of) for batch in lpt_batches(ids, costs, PREPARE_BATCH)]
    np.savez(
        path,
        node_ids=np.concatenate([p.node_ids for p in parts]),
        node_values=np.concatenate([p.node_values for p in parts]),
        tx_ids=np.concatenate([p.tx_ids for p in parts]),
        edge_values=np.concatenate([p.edge_values for p in parts]),
    )


def load_records(path: Path, prefix: str, run_id: str, layout: str = "packed") -> tuple[list[Record], int, int]:
    """The saved records as ``(key, value)`` in the run-scoped layout, the same bytes the ``BatchWriter``
    stores (or, with ``layout="hash"``, the hash layout's fields), with the counts of accounts and transfers."""
    namespace = RedisKeys(prefix).of_run(run_id)
    saved = np.load(path)
    parts = ((namespace.node, NODE_FEATURE_NAMES, saved["node_ids"], saved["node_values"]),
             (namespace.edge, EDGE_FEATURE_NAMES, saved["tx_ids"], saved["edge_values"]))
    if layout == "hash":
        records: list[Record] = [
            (key_of(entity_id), dict(zip(names, encode_row(row), strict=True)))
            for key_of, names, ids, values in parts
            for entity_id, row in zip(ids.tolist(), values.tolist(), strict=True)
        ]
    else:
        records = [(key_of(entity_id), blob) for key_of, _, ids, values in parts
                   for entity_id, blob in zip(ids.tolist(), encode_rows(values).rows(), strict=True)]
    return records, len(saved["node_ids"]), len(saved["tx_ids"])


def read_columns(settings: Settings, as_of: int) -> dict[str, np.ndarray]:
    """Every transfer with ``ts <= as_of`` in one query, as numpy columns."""
    query = Cypher(settings.graph).render(TRANSFER_COLUMNS)
    with open_driver(settings.neo4j) as driver, driver.session(database=settings.neo4j.database) as session:
        row = session.run(query, as_of=as_of).single(strict=True)
    return {
        "tx": as_array(row["tx"], str),
        "payer": as_array(row["payer"], str),
        "payee": as_array(row["payee"], str),
        "amount": as_array(row["amount"], np.float64),
        "ts": as_array(row["ts"], np.int64),
    }


def _bulk(data: str | bytes) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return b"$%d\r\n%b\r\n" % (len(raw), raw)


def resp_commands(records: list[Record]) -> Iterator[bytes]:
    """One RESP command per record, as ``redis-cli --pipe`` reads them: ``SET key value`` for a packed
    record, ``HSET key field value ...`` for the hash layout's."""
    for key, value in records:
        if isinstance(value, bytes):
            yield b"*3\r\n$3\r\nSET\r\n%b%b" % (_bulk(key), _bulk(value))
            continue
        yield b"*%d\r\n$4\r\nHSET\r\n%b%b" % (
            2 + 2 * len(value),
            _bulk(key),
            b"".join(_bulk(name) + _bulk(text) for name, text in value.items()),
        )


def write_redis_cli(settings: Settings, records: list[Record]) -> float:
    """Pipe pre-encoded records through ``redis-cli --pipe``; the seconds the pipe took.

    :raises BenchError: when redis-cli reports an error reply
    """
    config = settings.redis
    with tempfile.NamedTemporaryFile(suffix=".resp") as payload:
        payload.writelines(resp_commands(records))
        payload.flush()
        secret = config.secret()
        env = os.environ | ({"REDISCLI_AUTH": secret} if secret else {})
        user = ["--user", config.user] if secret and config.user else []
        argv = ["redis-cli", "-h", config.host, "-p", str(config.port), *user, "-n", str(config.db), "--pipe"]
        with Path(payload.name).open("rb") as stdin:
            started = time.perf_counter()
            result = subprocess.run(argv, stdin=stdin, capture_output=True, text=True, env=env, check=False)
            seconds = time.perf_counter() - started
    if result.returncode != 0 or "errors: 0," not in result.stdout:
        raise BenchError(f"redis-cli --pipe failed ({result.returncode}): {result.stdout} {result.stderr}")
    return seconds


def write_redis_py(settings: Settings, records: list[Record]) -> float:
    """Write the records with redis-py as the ``BatchWriter`` sends them, :data:`~fx_workers.store.writer.CHUNK`
    at a time: packed records in one ``MSET`` per chunk (``SET``s packed per master on a cluster), hashes in
    a pipeline of ``HSET``s; the seconds taken."""
    client = open_redis(settings.redis)
    cluster = is_cluster(client)
    started = time.perf_counter()
    for start in range(0, len(records), CHUNK):
        chunk = records[start : start + CHUNK]
        if isinstance(chunk[0][1], bytes):
            if cluster:
                set_on_cluster(client, [key for key, _ in chunk], [value for _, value in chunk])
            else:
                client.execute_command("MSET", *(part for record in chunk for part in record))
            continue
        pipe = client.pipeline(transaction=False)
        for key, value in chunk:
            if isinstance(value, bytes):
                pipe.execute_command("SET", key, value)
            else:
                pipe.hset(key, mapping=value)
        pipe.execute()
    return time.perf_counter() - started


def run_floor(settings: Settings, *, as_of: int, run_id: str, records_path: Path, writer: str) -> Measurement:
    """Read every transfer once, then write every record once with ``writer`` (``redis-cli`` or ``redis-py``,
    packed; with ``-hash`` appended, in the hash layout)."""
    layout = "hash" if writer.endswith("-hash") else "packed"
    writer = writer.removesuffix("-hash")
    records, accounts, transfers = load_records(records_path, settings.redis.prefix, run_id, layout)
    started = time.perf_counter()
    columns = read_columns(settings, as_of)
    read_seconds = time.perf_counter() - started
    if len(columns["tx"]) != transfers:
        raise BenchError(f"Neo4j returned {len(columns['tx'])} transfers; the prepared records have {transfers}")
    write = write_redis_cli if writer == "redis-cli" else write_redis_py
    write_seconds = write(settings, records)
    return Measurement(read_seconds + write_seconds, accounts, transfers,
                       {"neo4j": read_seconds, "redis": write_seconds})
