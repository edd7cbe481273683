"""Export a run for model training: one row per account (or transfer), the id first, then the
features in the run's order (the catalogue's, for a run of this code; the run's manifest names them);
the run id, as_of and schema in the file's metadata.

It streams: accounts batch by batch from the run's stored plan, transfers by ``SCAN`` over the run's
namespace, a bounded chunk in memory at a time, so memory stays flat at millions of rows.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from fx_workers.progress import ProgressFactory, no_progress
from fx_workers.store.plan_store import PlanStore
from fx_workers.store.reader import CHUNK, FeatureReader, RunView

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

SCAN_COUNT = 5000
FORMATS = (".parquet", ".csv")


class ExportError(ValueError):
    """The export cannot be written as asked; the message says why."""


@dataclass(frozen=True)
class ExportSummary:
    run_id: str
    rows: int
    path: Path

    def __str__(self) -> str:
        return f"wrote {self.rows} rows of run {self.run_id} to {self.path}"


def _node_ids(reader: FeatureReader, run_id: str, manifest: dict[str, str]) -> Iterator[list[str]]:
    for _, ids in PlanStore(reader.client, reader.keys, run_id).batches(int(manifest["batches"])):
        yield ids


def _tx_ids(reader: FeatureReader, run_id: str) -> Iterator[list[str]]:
    namespace = reader.keys.of_run(run_id)
    head = len(namespace.edge(""))
    chunk: list[str] = []
    for key in reader.client.scan_iter(match=namespace.edge_pattern, count=SCAN_COUNT):
        chunk.append(key.decode(errors="surrogateescape")[head:])
        if len(chunk) >= CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _rows(reader: FeatureReader, view: RunView, part: str,
          chunks: Iterator[list[str]]) -> Iterator[tuple[list[str], np.ndarray]]:
    for ids in chunks:
        yield ids, reader.matrix(part, ids, view)[0]


def export_run(reader: FeatureReader, out: Path, *, edges: bool = False,
               progress: ProgressFactory = no_progress) -> ExportSummary:
    """Write the run ``reader`` reads (``latest`` unless it was given one) to ``out``.

    :raises ExportError: on an unknown file type
    :raises RunError: when the run does not exist
    """
    if out.suffix not in FORMATS:
        raise ExportError(f"--out must end in {' or '.join(FORMATS)}. Got {out.name}")
    view = reader.view()
    run_id, meta, part = view.run_id, view.meta, "edge" if edges else "node"
    manifest = reader.runs.manifest(run_id)
    names = view.schema.names(part)
    total = int(manifest.get("transfers", 0)) if edges else int(manifest["accounts"])
    chunks = _tx_ids(reader, run_id) if edges else _node_ids(reader, run_id, manifest)
    id_column = "tx_id" if edges else "account_id"
    metadata = {"fx_run_id": run_id, "fx_as_of": meta["_as_of"], "fx_schema": meta["_schema"],
                "fx_kind": "edges" if edges else "nodes"}
    rows = 0
    with progress(f"exporting {metadata['fx_kind']}", total or None) as advance:
        writer = _ParquetWriter(out, id_column, names, metadata) if out.suffix == ".parquet" else \
            _CsvWriter(out, id_column, names)
        with writer:
            for ids, values in _rows(reader, view, part, chunks):
                writer.write(ids, values)
                rows += len(ids)
                advance(len(ids))
    return ExportSummary(run_id, rows, out)


class _ParquetWriter:
    def __init__(self, out: Path, id_column: str, names: Sequence[str], metadata: dict[str, str]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self._pa = pa
        self.names = names
        self.id_column = id_column
        schema = pa.schema([(id_column, pa.string()), *((name, pa.float64()) for name in names)],
                           metadata={k: v.encode() for k, v in metadata.items()}
                           | {"fx": json.dumps(metadata).encode()})
        self.schema = schema
        self._writer = pq.ParquetWriter(out, schema)

    def write(self, ids: list[str], values: np.ndarray) -> None:
        columns = [self._pa.array(ids, type=self._pa.string()), *(values[:, i] for i in range(len(self.names)))]
        self._writer.write_table(self._pa.Table.from_arrays(columns, schema=self.schema))

    def __enter__(self) -> _ParquetWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._writer.close()


class _CsvWriter:
    def __init__(self, out: Path, id_column: str, names: Sequence[str]) -> None:
        self._file = out.open("w", newline="", encoding="utf-8")
        self._csv = csv.writer(self._file)
        self._csv.writerow([id_column, *names])

    def write(self, ids: list[str], values: np.ndarray) -> None:
        self._csv.writerows([record_id, *map(repr, row)] for record_id, row in zip(ids, values.tolist(), strict=True))

    def __enter__(self) -> _CsvWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()
