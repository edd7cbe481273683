"""Many records of the :mod:`~fx_workers.store.records` format at once, with numpy: a whole batch's codes
and bytes are computed as arrays, so no Python loop runs over values (the write path and the matrix
reads); only the split into one ``bytes`` per record loops, once per record."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fx_workers.store.records import WIDTHS, header_size

if TYPE_CHECKING:
    from collections.abc import Sequence

_WIDTHS = np.array(WIDTHS, dtype=np.int64)
_KEPT = np.array([(1 << 8 * width) - 1 for width in WIDTHS], dtype="<u8")
"""By code, an 8-byte slot's kept bytes as a little-endian word: its first ``WIDTHS[code]`` bytes set."""
EXACT_INTEGERS = 2**53
"""Integers of larger magnitude are not all float64 numbers: an integer matrix holding one is refused."""


class RecordError(ValueError):
    """Values that cannot be stored exactly."""


@dataclass(frozen=True)
class EncodedRows:
    """A batch of records: their bytes back to back, and each record's length."""

    data: bytes
    lengths: np.ndarray

    def rows(self) -> list[bytes]:
        """Each record's bytes."""
        ends = np.cumsum(self.lengths)
        return [self.data[start:end] for start, end in zip((ends - self.lengths).tolist(), ends.tolist(), strict=True)]


def as_float64(values: np.ndarray) -> np.ndarray:
    """``values`` as a C-contiguous little-endian float64 matrix (no copy when it is one already).

    :raises RecordError: for integers that float64 cannot hold exactly
    """
    if values.dtype.kind not in "iuf":
        raise RecordError(f"feature values must be numbers. Got an array of {values.dtype}")
    if values.dtype.kind in "iu" and values.size and (values.min() < -EXACT_INTEGERS or values.max() > EXACT_INTEGERS):
        raise RecordError(f"integers must be within 2**53 of 0 to be stored exactly as float64. Got "
                          f"{values.min()} to {values.max()}")
    return np.ascontiguousarray(values, dtype="<f8")


def codes_of(matrix: np.ndarray) -> np.ndarray:
    """Each value's code: 0 for +0.0, 1 and 2 for integers that fit uint8 and uint32, else 3."""
    with np.errstate(invalid="ignore"):
        whole = (matrix == np.floor(matrix)) & ~np.signbit(matrix)
        narrower = (whole & (matrix < 2**32)).view(np.uint8) + (whole & (matrix < 256)).view(np.uint8)
    return (3 - narrower) * (matrix.view("<u8") != 0).view(np.uint8)


def _kept(codes: np.ndarray, head: int) -> np.ndarray:
    """Which bytes of each record's header and 8-byte value slots are stored: the header, and each value's
    first ``WIDTHS[code]`` bytes (a little-endian integer's low bytes are its narrower self)."""
    slots = _KEPT[codes].view(np.uint8).reshape(len(codes), 8 * codes.shape[1]) != 0
    return np.concatenate([np.ones((len(codes), head), dtype=bool), slots], axis=1)


def encode_rows(values: np.ndarray) -> EncodedRows:
    """A ``(records, features)`` matrix as records, in bulk: every value in an 8-byte slot, then the bytes
    each record keeps, compacted in one step.

    :raises RecordError: from :func:`as_float64`
    """
    matrix = as_float64(values)
    rows, width = matrix.shape
    head, codes = header_size(width), codes_of(matrix)
    padded = np.zeros((rows, 4 * head), dtype=np.uint8)
    padded[:, :width] = codes
    header = padded[:, 0::4] | padded[:, 1::4] << 2 | padded[:, 2::4] << 4 | padded[:, 3::4] << 6
    whole = (codes == 1) | (codes == 2)
    slots = np.where(codes == 3, matrix.view("<u8"), np.where(whole, matrix, 0).astype("<u8"))
    kept = _kept(codes, head)
    data = np.concatenate([header, slots.view(np.uint8).reshape(rows, 8 * width)], axis=1)[kept]
    return EncodedRows(data.tobytes(), head + _WIDTHS[codes].sum(axis=1))


def decode_rows(values: Sequence[bytes | None], width: int) -> tuple[np.ndarray, list[bool]]:
    """Records as stored (``None`` where absent) as a ``(len, width)`` float matrix, and which were present.

    An absent record is a row of NaN; so is a record whose length is not what its codes say (a corrupt
    record, or one of another schema), which is present, so a check that compares values reports it.
    """
    matrix = np.full((len(values), width), np.nan)
    head = header_size(width)
    good = np.array([i for i, v in enumerate(values) if v is not None and len(v) >= head], dtype=np.int64)
    if len(good) and width:
        blobs = [values[i] for i in good.tolist()]
        lengths = np.fromiter(map(len, blobs), dtype=np.int64, count=len(blobs))
        data = np.frombuffer(b"".join(blobs), dtype=np.uint8)
        starts = np.cumsum(lengths) - lengths
        header = data[starts[:, None] + np.arange(head)]
        codes = (header[:, :, None] >> np.array([0, 2, 4, 6], dtype=np.uint8)) & 3
        codes = codes.reshape(len(good), 4 * head)[:, :width]
        whole = head + _WIDTHS[codes].sum(axis=1) == lengths
        codes, kept = codes[whole], _kept(codes[whole], head)
        full = np.zeros(kept.shape, dtype=np.uint8)
        full[kept] = data[np.repeat(whole, lengths)]
        slots = full[:, head:].copy().view("<u8")
        matrix[good[whole]] = np.where(codes == 3, slots.view("<f8"), slots)
    return matrix, [v is not None for v in values]
