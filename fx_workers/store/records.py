"""How a feature record is encoded, and where a run keeps the names that decode it.

A record is one Redis STRING in the ``tagged-varint`` encoding: a header of one 2-bit code per feature,
in the run's order (feature ``i`` in bits ``2 * (i % 4)`` and up of header byte ``i // 4``, so the
header is ``ceil(n / 4)`` bytes); then the fixed-width values (codes 1 and 3), in order, little-endian;
then the varints (code 2), in order, each an unsigned LEB128 ``m`` of 1 to 8 bytes:

====  ===========================================================================  ===========
code  value                                                                        bytes
====  ===========================================================================  ===========
0     +0.0                                                                         0
1     an integer from 1 to 255 (uint8)                                             1, fixed
2     ``m`` even: the integer ``m >> 1`` (256 to 2**53 - 1);                      1-8, varint
      ``m`` odd: ``n = m >> 5``, ``d = ((m >> 1) & 15) - 8``: the double whose bits
      are those of ``n / 100`` plus ``d`` (a two-decimal amount, or a sum of them a
      few units in the last place off)
3     anything else (IEEE 754 float64: ratios, -0.0, NaN, negative numbers...)      8, fixed
====  ===========================================================================  ===========

``n / 100`` is the correctly rounded IEEE division of the exact double ``n`` (``n < 2**51``), which
every language computes alike, and the encoder keeps code 2 only where the decoded bits equal the
computed ones, so a record decodes to the computed values bit for bit. The varints come last, so a
record's lengths are known from its codes up to them, and each varint ends at its first byte under
0x80. Most of an account's features are 0, small counts or amounts, and a transfer's record usually
fits in the 28 bytes that put Redis's embedded string in a 48-byte allocation. The names and their
order are stored once per run, in its manifest (``node_names``, ``edge_names``: JSON lists), with the
encoding's name (``encoding``); a record is always decoded with its own run's names, never with the
running code's catalogue. This module needs no numpy (a single-id read decodes here);
:mod:`fx_workers.store.bulk` encodes and decodes many records at once. The README's "Redis layout and
the two-step read" is this format's contract for services outside Python.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fx_workers.store.runs import RunError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

ENCODING = "tagged-varint"
"""The manifest's ``encoding``: the format of this module's docstring."""
FIXED_WIDTHS = (0, 1, 0, 8)
"""Bytes of a value in the fixed-width part, by its code (code 2 is a varint, after them)."""
VARINT = 2
"""The code of a varint value."""
VARINT_BYTES = 8
"""A varint's longest form (56 bits of ``m``); a longer one is corrupt."""
CENTS, STEP_BITS, STEP_BIAS = 100, 4, 8
"""A decimal varint is ``n << 5 | (d + 8) << 1 | 1``: ``n`` hundredths, ``d`` units in the last place."""
_DOUBLE, _BITS = struct.Struct("<d"), struct.Struct("<Q")
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


def varint_value(m: int) -> float:
    """The value of a code-2 varint ``m``: an integer, or hundredths ``d`` units in the last place off."""
    if not m & 1:
        return float(m >> 1)
    bits = _BITS.unpack(_DOUBLE.pack((m >> (1 + STEP_BITS)) / CENTS))[0] + ((m >> 1) & (1 << STEP_BITS) - 1) - STEP_BIAS
    return _DOUBLE.unpack(_BITS.pack(bits & 0xFFFF_FFFF_FFFF_FFFF))[0]


def _varints(data: bytes) -> list[int] | None:
    """The LEB128 varints that fill ``data`` exactly; ``None`` when one is cut off or longer than 8 bytes."""
    out, m, shift = [], 0, 0
    for byte in data:
        m |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            out.append(m)
            m = shift = 0
        elif shift == 7 * VARINT_BYTES:
            return None
    return None if shift else out


def decode_record(value: bytes, width: int) -> list[float] | None:
    """One record's ``width`` values; ``None`` when its bytes are not what its codes say (a corrupt record,
    or one of another schema)."""
    head = header_size(width)
    if len(value) < head:
        return None
    codes = [(value[i >> 2] >> ((i & 3) << 1)) & 3 for i in range(width)]
    at = head + sum(FIXED_WIDTHS[code] for code in codes)
    varints = _varints(value[at:]) if at <= len(value) else None
    if varints is None or len(varints) != codes.count(VARINT):
        return None
    values, offset, next_varint = [], head, iter(varints)
    for code in codes:
        if code == 1:
            values.append(float(value[offset]))
        elif code == 3:
            values.append(_DOUBLE.unpack_from(value, offset)[0])
        else:
            values.append(varint_value(next(next_varint)) if code else 0.0)
        offset += FIXED_WIDTHS[code]
    return values
