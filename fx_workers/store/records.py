"""How a feature record is encoded, and where a run keeps the names that decode it.

A record is one Redis STRING in the ``tagged-le`` encoding: a header of one 2-bit code per feature,
in the run's order (feature ``i`` in bits ``2 * (i % 4)`` and up of header byte ``i // 4``, so the
header is ``ceil(n / 4)`` bytes), then each value whose code is not 0, in order, little-endian:

====  ==============================================  =====
code  value                                           bytes
====  ==============================================  =====
0     +0.0                                            0
1     an integer from 0 to 255 (uint8)                1
2     an integer from 256 to 2**32 - 1 (uint32)       4
3     anything else (IEEE 754 float64: -0.0, NaN...)  8
====  ==============================================  =====

Every float64 has exactly one code, so a record decodes to the computed values bit for bit. Most of an
account's features are 0 or small counts, so its record is about half its float64 size, and a transfer
record fits in the 44 bytes Redis embeds in its object. The names and their order are stored once per
run, in its manifest (``node_names``, ``edge_names``: JSON lists), with the encoding's name
(``encoding``); a record is always decoded with its own run's names, never with the running code's
catalogue. This module needs no numpy (a single-id read decodes here); :mod:`fx_workers.store.bulk`
encodes and decodes many records at once. The README's "Redis layout and the two-step read" is this
format's contract for services outside Python.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fx_workers.store.runs import RunError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

ENCODING = "tagged-le"
"""The manifest's ``encoding``: the format of this module's docstring."""
WIDTHS = (0, 1, 4, 8)
"""Bytes of a value, by its code."""
_FORMATS = {1: struct.Struct("<B"), 2: struct.Struct("<I"), 3: struct.Struct("<d")}
NODE_NAMES, EDGE_NAMES, ENCODING_FIELD = "node_names", "edge_names", "encoding"
"""The manifest fields of a run's record schema."""


def header_size(width: int) -> int:
    """Bytes of the codes of ``width`` features."""
    return (width + 3) // 4


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
                           f"{encoding!r}): it was written by another fx, whose records this one cannot read")
        return cls(tuple(json.loads(manifest[NODE_NAMES] or "[]")), tuple(json.loads(manifest[EDGE_NAMES] or "[]")))

    def names(self, part: str) -> tuple[str, ...]:
        """``node`` or ``edge``."""
        return self.node_names if part == "node" else self.edge_names


def decode_record(value: bytes, width: int) -> list[float] | None:
    """One record's ``width`` values; ``None`` when its length is not what its codes say (a corrupt record,
    or one of another schema)."""
    head = header_size(width)
    if len(value) < head:
        return None
    codes = [(value[i >> 2] >> ((i & 3) << 1)) & 3 for i in range(width)]
    if head + sum(WIDTHS[code] for code in codes) != len(value):
        return None
    values, offset = [], head
    for code in codes:
        if code:
            values.append(float(_FORMATS[code].unpack_from(value, offset)[0]))
            offset += WIDTHS[code]
        else:
            values.append(0.0)
    return values
