"""Redis, the online store: pipelined idempotent writes in the brief's layout, and the reader API.

A value is ``repr(float)``, the shortest string that ``float()`` turns back into the same number,
so a re-run with the same inputs writes the same bytes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Protocol

import numpy as np

from fx_workers.engine.features import EDGE_FEATURE_NAMES, NODE_FEATURE_NAMES
from fx_workers.store.keys import META_AS_OF, META_FIELDS, META_RUN_ID, META_SCHEMA, RedisKeys

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    import redis

    from fx_workers.config import RedisConfig
    from fx_workers.engine.batch import BatchFeatures

CHUNK = 5000
"""Hashes per pipeline round trip: large enough to amortise it, small enough to bound memory."""


def open_redis(config: RedisConfig, **options: object) -> redis.Redis:
    """A client for the configured server (hiredis parses replies when installed).

    :param options: more ``redis.Redis`` arguments, such as timeouts
    """
    import redis

    password = config.password.get_secret_value() if config.password else None
    return redis.Redis(host=config.host, port=config.port, db=config.db, password=password, **options)


class FeatureSink(Protocol):
    """Where a run's features and its manifest go: the seam between extraction and the online
    store. Redis is the one implementation fx ships; writes must be idempotent."""

    def write(self, features: BatchFeatures, *, run_id: str, as_of: int, schema: str) -> None: ...

    def write_manifest(self, run_id: str, manifest: dict[str, object]) -> None: ...

    def set_latest(self, run_id: str) -> None: ...


def _bulk(data: bytes) -> bytes:
    """A RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(data), data)


class RedisSink:
    """Writes feature hashes, run manifests and the ``latest`` pointer."""

    def __init__(self, client: redis.Redis, keys: RedisKeys) -> None:
        self.client = client
        self.keys = keys

    def _write_hashes(self, key_of: Callable[[str], str], names: Sequence[str], ids: np.ndarray,
                      values: np.ndarray, meta: dict[str, str]) -> None:
        """One ``HSET`` per row, packed as RESP here: 3x faster than redis-py's per-command packing."""
        fields = [_bulk(name.encode()) for name in names]
        tail = b"".join(_bulk(k.encode()) + _bulk(v.encode()) for k, v in meta.items())
        head = b"*%d\r\n$4\r\nHSET\r\n" % (2 + 2 * (len(names) + len(meta)))
        for start in range(0, len(ids), CHUNK):
            commands = [
                head + _bulk(key_of(entity_id).encode())
                + b"".join([f + _bulk(repr(v).encode()) for f, v in zip(fields, row, strict=True)]) + tail
                for entity_id, row in zip(ids[start : start + CHUNK].tolist(),
                                          values[start : start + CHUNK].tolist(), strict=True)
            ]
            self._send(commands)

    def _send(self, commands: list[bytes]) -> None:
        """Send packed commands in one write and read every reply (an error reply raises)."""
        connection = self.client.connection_pool.get_connection()
        try:
            connection.send_packed_command(commands)
            for _ in commands:
                connection.read_response()
        except BaseException:
            connection.disconnect()  # unread replies would corrupt the next user of the connection
            raise
        finally:
            self.client.connection_pool.release(connection)

    def write(self, features: BatchFeatures, *, run_id: str, as_of: int, schema: str) -> None:
        """Write every node and edge hash of a batch; re-writing the same batch changes nothing."""
        meta = {META_RUN_ID: run_id, META_AS_OF: str(as_of), META_SCHEMA: schema}
        self._write_hashes(self.keys.node, NODE_FEATURE_NAMES, features.node_ids, features.node_values, meta)
        self._write_hashes(self.keys.edge, EDGE_FEATURE_NAMES, features.tx_ids, features.edge_values, meta)

    def write_manifest(self, run_id: str, manifest: dict[str, object]) -> None:
        self.client.hset(self.keys.run(run_id), mapping={k: str(v) for k, v in manifest.items()})

    def set_latest(self, run_id: str) -> None:
        self.client.set(self.keys.latest, run_id)


class FeatureReader:
    """Reads features back: as dicts, or as a matrix in catalogue order."""

    def __init__(self, client: redis.Redis, keys: RedisKeys) -> None:
        self.client = client
        self.keys = keys

    def _read(self, key_of, names: Sequence[str], ids: Sequence[str]) -> list[dict[str, float | str] | None]:
        fields = [*names, *META_FIELDS]
        records: list[dict[str, float | str] | None] = []
        for start in range(0, len(ids), CHUNK):
            pipe = self.client.pipeline(transaction=False)
            for entity_id in ids[start : start + CHUNK]:
                pipe.hmget(key_of(entity_id), fields)
            for values in pipe.execute():
                records.append(_record(fields, len(names), values))
        return records

    def nodes(self, ids: Sequence[str]) -> list[dict[str, float | str] | None]:
        """Each account's features plus ``_run_id``, ``_as_of``, ``_schema``; None where absent."""
        return self._read(self.keys.node, NODE_FEATURE_NAMES, ids)

    def edges(self, tx_ids: Sequence[str]) -> list[dict[str, float | str] | None]:
        """Each transfer's features plus metadata; None where absent."""
        return self._read(self.keys.edge, EDGE_FEATURE_NAMES, tx_ids)

    def node_matrix(self, ids: Sequence[str]) -> np.ndarray:
        """A float matrix, one row per id in catalogue column order; NaN where a value is missing."""
        rows = self.nodes(ids)
        matrix = np.full((len(ids), len(NODE_FEATURE_NAMES)), np.nan)
        for i, record in enumerate(rows):
            if record is not None:
                matrix[i] = [record.get(name, math.nan) for name in NODE_FEATURE_NAMES]
        return matrix

    def manifest(self, run_id: str) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.client.hgetall(self.keys.run(run_id)).items()}

    def latest(self) -> str | None:
        value = self.client.get(self.keys.latest)
        return value.decode() if value is not None else None


def _record(fields: list[str], n_features: int, values: list[bytes | None]) -> dict[str, float | str] | None:
    """A hash's fields as floats (features) and strings (metadata); None if the hash is absent."""
    if all(v is None for v in values):
        return None
    record: dict[str, float | str] = {}
    for i, (name, raw) in enumerate(zip(fields, values, strict=True)):
        if raw is None:
            continue
        text = raw.decode()
        record[name] = _parse_float(text) if i < n_features else text
    return record


def _parse_float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return math.nan
