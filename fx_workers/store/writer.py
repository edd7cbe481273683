"""Writes a batch's features into its run's namespace and says what it wrote.

One ``HSET`` per record, one field per feature; a value is ``repr(float)``, the shortest text that
``float()`` turns back into the same number, so a redelivered batch writes the same bytes. Writes
go through redis-py pipelines (never a raw connection), which its cluster client splits per node.
The checksum covers exactly those bytes in write order, so re-reading the records, or recomputing
the batch, and hashing them the same way must give the same checksum.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from fx_workers.engine.catalogue import EDGE_FEATURE_NAMES, NODE_FEATURE_NAMES

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import numpy as np
    import redis

    from fx_workers.engine.batch import BatchFeatures
    from fx_workers.store.keys import RunKeys

CHUNK = 2000
"""Records per pipeline round trip: large enough to amortise it, small enough to bound memory."""
_PART_SEPARATOR = b"\x1e"
MISSING = "\x7f"
"""Stands for a missing field in a checksum (no stored value is this text)."""


def encode_row(row: Sequence[float]) -> list[str]:
    """A record's values as stored."""
    return list(map(repr, row))


class Checksum:
    """A content checksum of records as stored: each record's id and values (text), in order."""

    def __init__(self) -> None:
        self._hash = hashlib.blake2b(digest_size=16)

    def add(self, record_id: str, values: Sequence[str | None]) -> None:
        """One record; ``None`` stands for a missing field (re-read records may have lost one)."""
        text = "\0".join([record_id, *(MISSING if v is None else v for v in values)]) + "\n"
        self._hash.update(text.encode(errors="surrogatepass"))

    def next_part(self) -> None:
        self._hash.update(_PART_SEPARATOR)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def features_checksum(features: BatchFeatures) -> str:
    """The checksum a worker reports for writing ``features``."""
    checksum = Checksum()
    for ids, values in ((features.node_ids, features.node_values), (features.tx_ids, features.edge_values)):
        for record_id, row in zip(ids.tolist(), values.tolist(), strict=True):
            checksum.add(record_id, encode_row(row))
        checksum.next_part()
    return checksum.hexdigest()


class BatchWriter:
    """Writes batches of one run into its namespace."""

    def __init__(self, client: redis.Redis, keys: RunKeys) -> None:
        self.client = client
        self.keys = keys

    def _write_part(self, key_of: Callable[[str], str], names: Sequence[str], ids: np.ndarray, values: np.ndarray,
                    checksum: Checksum) -> None:
        args: list[str] = ["HSET", "", *(x for name in names for x in (name, ""))]  # reused: key and values change
        id_list, rows = ids.tolist(), values.tolist()
        for start in range(0, len(id_list), CHUNK):
            pipe = self.client.pipeline(transaction=False)
            for record_id, row in zip(id_list[start : start + CHUNK], rows[start : start + CHUNK], strict=True):
                encoded = encode_row(row)
                checksum.add(record_id, encoded)
                args[1], args[3::2] = key_of(record_id), encoded
                pipe.execute_command(*args)
            pipe.execute()
        checksum.next_part()

    def write(self, features: BatchFeatures) -> str:
        """Write every node and edge record of a batch; returns the checksum of what was written."""
        checksum = Checksum()
        self._write_part(self.keys.node, NODE_FEATURE_NAMES, features.node_ids, features.node_values, checksum)
        self._write_part(self.keys.edge, EDGE_FEATURE_NAMES, features.tx_ids, features.edge_values, checksum)
        return checksum.hexdigest()
