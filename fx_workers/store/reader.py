"""Reads features back, the way every reader must: resolve ``latest`` (or a given run) first, then
read only that run's records, so one call never mixes runs."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from fx_workers.engine.catalogue import EDGE_FEATURE_NAMES, NODE_FEATURE_NAMES
from fx_workers.store.runs import RunError, RunRegistry

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    import redis

    from fx_workers.store.keys import RedisKeys

CHUNK = 2000
"""Records per pipeline round trip."""
META_RUN_ID, META_AS_OF, META_SCHEMA = "_run_id", "_as_of", "_schema"
"""Fields the reader adds to each record, from the run's manifest."""

Record = dict[str, float | str]


class FeatureReader:
    """Reads one run's records: ``run_id``, or whichever run ``latest`` names at each call.

    :raises RunError: from a read when there is no such run (or no published run yet)
    """

    def __init__(self, client: redis.Redis, keys: RedisKeys, run_id: str | None = None) -> None:
        self.client = client
        self.keys = keys
        self.runs = RunRegistry(client, keys)
        self.run_id = run_id

    def resolve(self) -> tuple[str, dict[str, str]]:
        """The run this reader reads now, and its metadata (as_of, schema)."""
        run_id = self.run_id or self.runs.latest()
        if run_id is None:
            raise RunError(f"no published run yet ({self.keys.latest} is not set); run fx_extract or fx extract")
        as_of, schema = self.runs.fields(run_id, "as_of", "schema")
        if as_of is None:
            raise RunError(f"run {run_id} does not exist (fx runs list shows the retained runs)")
        return run_id, {META_RUN_ID: run_id, META_AS_OF: as_of, META_SCHEMA: schema or ""}

    def raw(self, key_of: Callable[[str], str], names: Sequence[str], ids: Sequence[str]) -> Iterator[list]:
        """Each record's stored values in ``names`` order (``None`` where absent), chunk by chunk."""
        for start in range(0, len(ids), CHUNK):
            pipe = self.client.pipeline(transaction=False)
            for record_id in ids[start : start + CHUNK]:
                pipe.hmget(key_of(record_id), names)
            yield from pipe.execute()

    def _read(self, part: str, names: Sequence[str], ids: Sequence[str]) -> list[Record | None]:
        run_id, meta = self.resolve()
        namespace = self.keys.of_run(run_id)
        key_of = namespace.node if part == "node" else namespace.edge
        return [_record(names, values, meta) for values in self.raw(key_of, names, ids)]

    def nodes(self, ids: Sequence[str]) -> list[Record | None]:
        """Each account's features plus ``_run_id``, ``_as_of``, ``_schema``; None where absent."""
        return self._read("node", NODE_FEATURE_NAMES, ids)

    def edges(self, tx_ids: Sequence[str]) -> list[Record | None]:
        """Each transfer's features plus the run's metadata; None where absent."""
        return self._read("edge", EDGE_FEATURE_NAMES, tx_ids)

    def node_matrix(self, ids: Sequence[str]) -> np.ndarray:
        """A float matrix, one row per id in catalogue column order; NaN where a value is missing."""
        matrix = np.full((len(ids), len(NODE_FEATURE_NAMES)), np.nan)
        for i, record in enumerate(self.nodes(ids)):
            if record is not None:
                matrix[i] = [record.get(name, math.nan) for name in NODE_FEATURE_NAMES]
        return matrix


def _record(names: Sequence[str], values: list[bytes | None], meta: dict[str, str]) -> Record | None:
    """A hash's fields as floats plus the run's metadata; None if the hash is absent."""
    if all(v is None for v in values):
        return None
    record: Record = {name: _parse_float(raw) for name, raw in zip(names, values, strict=True) if raw is not None}
    return record | meta


def _parse_float(raw: bytes) -> float:
    try:
        return float(raw)
    except ValueError:
        return math.nan
