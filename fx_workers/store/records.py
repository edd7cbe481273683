"""How a feature record is encoded, and where a run keeps the names that decode it.

A record is one Redis STRING: the features as IEEE 754 float64, little-endian, in the order of the
run's names, so an account with ``n`` features is exactly ``8 * n`` bytes. The names and their order
are stored once per run, in its manifest (``node_names``, ``edge_names``: JSON lists), with the
encoding's name (``encoding``); a record is always decoded with its own run's names, never with the
running code's catalogue. The README's "Redis layout and the two-step read" is this module's contract
for services outside Python.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fx_workers.store.runs import RunError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

ENCODING = "float64-le"
"""The manifest's ``encoding``: every record is its values as little-endian IEEE 754 doubles."""
DTYPE = np.dtype("<f8")
NODE_NAMES, EDGE_NAMES, ENCODING_FIELD = "node_names", "edge_names", "encoding"
"""The manifest fields of a run's record schema."""


def schema_fields(node_names: Sequence[str], edge_names: Sequence[str]) -> dict[str, str]:
    """The manifest fields that say how a run's records decode."""
    return {ENCODING_FIELD: ENCODING, NODE_NAMES: json.dumps(list(node_names)),
            EDGE_NAMES: json.dumps(list(edge_names))}


@dataclass(frozen=True)
class RecordSchema:
    """The names a run's records are decoded with, in their stored order."""

    node_names: tuple[str, ...]
    edge_names: tuple[str, ...]

    @classmethod
    def from_manifest(cls, run_id: str, manifest: Mapping[str, str | None]) -> RecordSchema:
        """:raises RunError: when the manifest names no schema or another encoding"""
        encoding = manifest.get(ENCODING_FIELD)
        if encoding != ENCODING or not manifest.get(NODE_NAMES) or not manifest.get(EDGE_NAMES):
            raise RunError(f"run {run_id} has no {ENCODING} record schema in its manifest (encoding "
                           f"{encoding!r}): it was written by an older fx, whose records this one cannot read")
        return cls(tuple(json.loads(manifest[NODE_NAMES] or "[]")), tuple(json.loads(manifest[EDGE_NAMES] or "[]")))

    def names(self, part: str) -> tuple[str, ...]:
        """``node`` or ``edge``."""
        return self.node_names if part == "node" else self.edge_names


def packed_matrix(values: np.ndarray) -> np.ndarray:
    """``values`` as a C-contiguous little-endian float64 matrix (no copy when it is one already)."""
    return np.ascontiguousarray(values, dtype=DTYPE)


def pack_rows(matrix: np.ndarray) -> list[bytes]:
    """Each row of a :func:`packed_matrix` as its record's bytes, in bulk: one view, no loop over values."""
    rows, width = matrix.shape
    if rows == 0:
        return []
    if width == 0:
        return [b""] * rows
    return matrix.view(np.dtype((np.void, width * DTYPE.itemsize))).ravel().tolist()


def unpack_rows(values: Sequence[bytes | None], width: int) -> tuple[np.ndarray, list[bool]]:
    """Records as stored (``None`` where absent) as a ``(len, width)`` float matrix, and which were present.

    An absent record is a row of NaN; so is a value whose length is not ``8 * width`` (a corrupt record, or
    one of another schema), which is present, so a check that compares values reports it.
    """
    matrix = np.full((len(values), width), np.nan)
    size = width * DTYPE.itemsize
    good = [i for i, v in enumerate(values) if v is not None and len(v) == size]
    if good and width:
        matrix[good] = np.frombuffer(b"".join([values[i] for i in good]), dtype=DTYPE).reshape(len(good), width)
    return matrix, [v is not None for v in values]
