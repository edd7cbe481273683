"""Reads features back, the way every reader must: resolve ``latest`` (or a given run) first, then
read only that run's records, decoded with that run's names, so one call never mixes runs or schemas.

Records by id (:meth:`FeatureReader.nodes`, ``fx features get``) decode in pure Python, so a single-id
read never imports numpy (0.3 to 0.5 s of a command's start); matrices decode in bulk with it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fx_workers.store.client import is_cluster
from fx_workers.store.records import RecordSchema, decode_record
from fx_workers.store.runs import RunError, RunRegistry

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    import numpy as np
    import redis

    from fx_workers.store.keys import RedisKeys

CHUNK = 2000
"""Records per ``MGET`` (per pipeline round trip on a cluster)."""
META_RUN_ID, META_AS_OF, META_SCHEMA = "_run_id", "_as_of", "_schema"
"""Fields the reader adds to each record, from the run's manifest."""

Record = dict[str, float | str]


@dataclass(frozen=True)
class RunView:
    """What a reader needs of one run: its id, the metadata added to records, and its record schema."""

    run_id: str
    meta: dict[str, str]
    schema: RecordSchema


class FeatureReader:
    """Reads one run's records: ``run_id``, or whichever run ``latest`` names at each call.

    :raises RunError: from a read when there is no such run (or no published run yet)
    """

    def __init__(self, client: redis.Redis, keys: RedisKeys, run_id: str | None = None) -> None:
        self.client = client
        self.keys = keys
        self.runs = RunRegistry(client, keys)
        self.run_id = run_id

    def view(self) -> RunView:
        """The run this reader reads now: its metadata (as_of, schema) and the names its records decode with."""
        run_id = self.run_id or self.runs.latest()
        if run_id is None:
            raise RunError(f"no published run yet ({self.keys.latest} is not set); run fx_extract or fx extract")
        fields = ("as_of", "schema", "encoding", "node_names", "edge_names")
        manifest = dict(zip(fields, self.runs.fields(run_id, *fields), strict=True))
        if manifest["as_of"] is None:
            raise RunError(f"run {run_id} does not exist (fx runs list shows the retained runs)")
        meta = {META_RUN_ID: run_id, META_AS_OF: manifest["as_of"], META_SCHEMA: manifest["schema"] or ""}
        return RunView(run_id, meta, RecordSchema.from_manifest(run_id, manifest))

    def resolve(self) -> tuple[str, dict[str, str]]:
        """The run this reader reads now, and its metadata (as_of, schema)."""
        view = self.view()
        return view.run_id, view.meta

    def raw(self, key_of: Callable[[str], str], ids: Sequence[str]) -> Iterator[bytes | None]:
        """Each record's stored bytes (``None`` where absent), in order, one ``MGET`` per chunk (on a cluster,
        redis-py's ``mget_nonatomic``: a pipeline of ``GET``s routed to each key's slot)."""
        mget = self.client.mget_nonatomic if is_cluster(self.client) else self.client.mget
        for start in range(0, len(ids), CHUNK):
            chunk = ids[start : start + CHUNK]
            if chunk:
                yield from mget([key_of(record_id) for record_id in chunk])

    def matrix(self, part: str, ids: Sequence[str], view: RunView | None = None) -> tuple[np.ndarray, list[bool]]:
        """The ``node`` or ``edge`` records of ``ids`` as a matrix in the run's column order
        (``view.schema.names(part)``), and which records exist; NaN rows where absent."""
        from fx_workers.store.bulk import decode_rows

        view = view or self.view()
        return decode_rows(list(self._raw(part, ids, view)), len(view.schema.names(part)))

    def _raw(self, part: str, ids: Sequence[str], view: RunView) -> Iterator[bytes | None]:
        namespace = self.keys.of_run(view.run_id)
        return self.raw(namespace.node if part == "node" else namespace.edge, ids)

    def _read(self, part: str, ids: Sequence[str]) -> list[Record | None]:
        """Records by name, decoded one by one (a corrupt record reads as NaN, so a check reports it)."""
        view = self.view()
        names = view.schema.names(part)
        records: list[Record | None] = []
        for value in self._raw(part, ids, view):
            values = None if value is None else decode_record(value, len(names)) or [math.nan] * len(names)
            records.append(None if values is None else dict(zip(names, values, strict=True)) | view.meta)
        return records

    def nodes(self, ids: Sequence[str]) -> list[Record | None]:
        """Each account's features, by the run's names, plus ``_run_id``, ``_as_of``, ``_schema``; None where
        absent."""
        return self._read("node", ids)

    def edges(self, tx_ids: Sequence[str]) -> list[Record | None]:
        """Each transfer's features plus the run's metadata; None where absent."""
        return self._read("edge", tx_ids)

    def node_matrix(self, ids: Sequence[str]) -> np.ndarray:
        """A float matrix, one row per id, in the run's column order (the catalogue's when the run was
        written by this code); NaN where a record is missing."""
        return self.matrix("node", ids)[0]
