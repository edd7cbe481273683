"""Writes a batch's features into its run's namespace and says what it wrote.

One STRING per record, its values packed in bulk (:mod:`fx_workers.store.records`: float64
little-endian in the catalogue's order, which the run's manifest names), so a redelivered batch
writes the same bytes (``SET`` overwrites: idempotent). On one server a chunk of records is one
``MSET``; on a Redis Cluster, whose ``MSET`` needs one slot, a pipeline of ``SET``s that redis-py's
cluster client splits per node (never a raw connection). Records have no TTL: retention deletes a
run's namespace. The checksum covers exactly the bytes stored, so re-reading the records, or
recomputing the batch, and hashing them the same way must give the same checksum.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np

from fx_workers.store.client import is_cluster
from fx_workers.store.records import DTYPE, pack_rows, packed_matrix

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import redis

    from fx_workers.engine.batch import BatchFeatures
    from fx_workers.store.keys import RunKeys

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

    def add_matrix(self, ids: Sequence[str], matrix: np.ndarray) -> None:
        """Records as written: a :func:`~fx_workers.store.records.packed_matrix`, one row per id."""
        rows, width = matrix.shape
        self._add(ids, np.full(rows, width * DTYPE.itemsize, dtype="<i8"), matrix.tobytes())

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
        checksum.add_matrix(ids.tolist(), packed_matrix(values))
    return checksum.hexdigest()


class BatchWriter:
    """Writes batches of one run into its namespace."""

    def __init__(self, client: redis.Redis, keys: RunKeys) -> None:
        self.client = client
        self.keys = keys
        self._cluster = is_cluster(client)

    def _write_part(self, key_of: Callable[[str], str], ids: np.ndarray, values: np.ndarray,
                    checksum: Checksum) -> None:
        id_list, matrix = ids.tolist(), packed_matrix(values)
        checksum.add_matrix(id_list, matrix)
        blobs = pack_rows(matrix)
        for start in range(0, len(id_list), CHUNK):
            keys = [key_of(record_id) for record_id in id_list[start : start + CHUNK]]
            self._set_many(keys, blobs[start : start + CHUNK])

    def _set_many(self, keys: list[str], blobs: list[bytes]) -> None:
        if self._cluster:
            pipe = self.client.pipeline(transaction=False)
            for key, blob in zip(keys, blobs, strict=True):
                pipe.execute_command("SET", key, blob)  # one key per command: routed to its slot's node
            pipe.execute()
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
