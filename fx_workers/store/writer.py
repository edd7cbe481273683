"""Writes a batch's features into its run's namespace and says what it wrote.

One STRING per record, its values encoded in bulk (:mod:`fx_workers.store.records`'s format, in the
catalogue's order, which the run's manifest names; :mod:`fx_workers.store.bulk`), so a redelivered batch
writes the same bytes (``SET`` overwrites: idempotent). On one server a chunk of records is one
``MSET``. On a Redis Cluster, whose ``MSET`` needs one slot, each record is a ``SET`` to its slot's
master: the chunk's ``SET``s are packed per master in bulk and sent on a connection from that master's
redis-py pool (the cluster client's own slot map routes them; redis-py's cluster pipeline costs about
20 times the CPU per command). Any record a master refuses (``MOVED`` after a resharding, a failover)
or a connection that fails is written again through the cluster client, which follows redirections.
Records have no TTL: retention deletes a run's namespace. The checksum covers exactly the bytes
stored, so re-reading the records, or recomputing the batch, and hashing them the same way must give
the same checksum.
"""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING

import numpy as np

from fx_workers.store.bulk import EncodedRows, encode_rows
from fx_workers.store.client import is_cluster

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import redis
    from redis.cluster import RedisCluster

    from fx_workers.engine.batch import BatchFeatures
    from fx_workers.store.keys import RunKeys

log = logging.getLogger(__name__)

CHUNK = 2000
"""Records per ``MSET`` (or pipeline round trip): large enough to amortise it, small enough to bound memory."""
_PART_SEPARATOR = b"\x1e"
_ID_SEPARATOR = "\0"
MISSING = -1
"""A missing record's length in a checksum (no stored value has it)."""


class Checksum:
    """A content checksum of records as stored, part by part (nodes, then edges): the ids in order, each
    value's length (:data:`MISSING` where absent), then the values' bytes in order."""

    def __init__(self) -> None:
        self._hash = hashlib.blake2b(digest_size=16)

    def add_part(self, ids: Sequence[str], values: Sequence[bytes | None]) -> None:
        """Records as re-read: ``None`` where a record is missing."""
        lengths = np.array([MISSING if v is None else len(v) for v in values], dtype="<i8")
        self._add(ids, lengths, b"".join(v for v in values if v is not None))

    def add_encoded(self, ids: Sequence[str], encoded: EncodedRows) -> None:
        """Records as written, one per id."""
        self._add(ids, encoded.lengths.astype("<i8"), encoded.data)

    def _add(self, ids: Sequence[str], lengths: np.ndarray, data: bytes) -> None:
        self._hash.update(_ID_SEPARATOR.join(ids).encode(errors="surrogatepass"))
        self._hash.update(_PART_SEPARATOR)
        self._hash.update(lengths.tobytes())
        self._hash.update(data)
        self._hash.update(_PART_SEPARATOR)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def features_checksum(features: BatchFeatures) -> str:
    """The checksum a worker reports for writing ``features``."""
    checksum = Checksum()
    for ids, values in ((features.node_ids, features.node_values), (features.tx_ids, features.edge_values)):
        checksum.add_encoded(ids.tolist(), encode_rows(values))
    return checksum.hexdigest()


class BatchWriter:
    """Writes batches of one run into its namespace."""

    def __init__(self, client: redis.Redis, keys: RunKeys) -> None:
        self.client = client
        self.keys = keys
        self._cluster = is_cluster(client)

    def _write_part(self, key_of: Callable[[str], str], ids: np.ndarray, values: np.ndarray,
                    checksum: Checksum) -> None:
        id_list, encoded = ids.tolist(), encode_rows(values)
        checksum.add_encoded(id_list, encoded)
        blobs = encoded.rows()
        for start in range(0, len(id_list), CHUNK):
            keys = [key_of(record_id) for record_id in id_list[start : start + CHUNK]]
            self._set_many(keys, blobs[start : start + CHUNK])

    def _set_many(self, keys: list[str], blobs: list[bytes]) -> None:
        if self._cluster:
            set_on_cluster(self.client, keys, blobs)
            return
        pairs: list[str | bytes] = [""] * (2 * len(keys))
        pairs[::2], pairs[1::2] = keys, blobs
        self.client.execute_command("MSET", *pairs)

    def write(self, features: BatchFeatures) -> str:
        """Write every node and edge record of a batch; returns the checksum of what was written."""
        checksum = Checksum()
        self._write_part(self.keys.node, features.node_ids, features.node_values, checksum)
        self._write_part(self.keys.edge, features.tx_ids, features.edge_values, checksum)
        return checksum.hexdigest()


def set_on_cluster(client: RedisCluster, keys: list[str], blobs: list[bytes]) -> None:
    """``SET`` each key to its value on a Redis Cluster: packed per master, one round trip each, then
    whatever failed through the cluster client (see the module's docstring)."""
    from redis.crc import key_slot

    by_node: dict[str, tuple[redis.Redis, list[int]]] = {}
    encoded = [key.encode() for key in keys]  # redis-py's default encoder: UTF-8, strict
    slots = client.nodes_manager.slots_cache  # slot -> [master, replicas...], as the cluster client routes
    for i, key in enumerate(encoded):
        owners = slots.get(key_slot(key))
        node = owners[0] if owners else client.nodes_manager.get_node_from_slot(key_slot(key))  # raises: uncovered
        by_node.setdefault(node.name, (node.redis_connection, []))[1].append(i)
    retry = [i for connection, indices in by_node.values() for i in _set_on_node(connection, encoded, blobs, indices)]
    if retry:
        log.info("%d of %d records refused or lost by their master: written again through the cluster client",
                 len(retry), len(keys))
        pipe = client.pipeline(transaction=False)
        for i in retry:
            pipe.execute_command("SET", keys[i], blobs[i])
        pipe.execute()


def _set_on_node(connection: redis.Redis, keys: list[bytes], blobs: list[bytes], indices: list[int]) -> list[int]:
    """``SET`` the records ``indices`` on one master in one round trip; returns those not confirmed."""
    import redis

    payload = b"".join([b"*3\r\n$3\r\nSET\r\n$%d\r\n%b\r\n$%d\r\n%b\r\n" % (len(keys[i]), keys[i], len(blobs[i]),
                                                                            blobs[i]) for i in indices])
    pool = connection.connection_pool
    conn = None
    refused: list[int] = []
    try:
        conn = pool.get_connection()
        conn.send_packed_command([payload])
        for i in indices:
            try:
                conn.read_response(disable_decoding=True)
            except redis.ResponseError:
                refused.append(i)
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        if conn is not None:
            conn.disconnect()
        return indices  # some may be written: SET again is harmless
    finally:
        if conn is not None:
            pool.release(conn)
    return refused
