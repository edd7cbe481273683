"""Many records of the :mod:`~fx_workers.store.records` format at once, with numpy: a whole batch's codes,
varints and bytes are computed as arrays, so no Python loop runs over values (the write path and the
matrix reads); only the split into one ``bytes`` per record loops, once per record."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fx_workers.store.records import CENTS, FIXED_WIDTHS, STEP_BIAS, STEP_BITS, VARINT, VARINT_BYTES, header_size

if TYPE_CHECKING:
    from collections.abc import Sequence

_FIXED = np.array(FIXED_WIDTHS, dtype=np.int64)
_KEPT = np.array([(1 << 8 * width) - 1 for width in range(9)], dtype="<u8")
"""By a width, an 8-byte slot's kept bytes as a little-endian word: its first ``width`` bytes set."""
_SEVENS = np.arange(VARINT_BYTES, dtype=np.uint64)
_CONTINUED = np.array([sum(0x80 << 8 * k for k in range(length - 1)) for length in range(VARINT_BYTES + 1)],
                      dtype=np.uint64)
"""By a varint's length, its continuation bits as a little-endian word: the high bit of every byte but its last."""
EXACT_INTEGERS = 2**53
"""Integers of larger magnitude are not all float64 numbers: an integer matrix holding one is refused."""
_DECIMALS = 2**51
"""Hundredths up to here are decimal varints (``m`` under ``2**56``: 8 bytes at most)."""


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


def codes_of(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each value's code, and the varint ``m`` of those of code 2, in row-major order.

    Code 0 for +0.0; 1 for an integer from 1 to 255; 2 for a larger integer under 2**53 (``m = n << 1``)
    or for hundredths ``n`` whose ``n / 100`` is at most 8 units in the last place from the value
    (``m = n << 5 | (d + 8) << 1 | 1``, checked bit for bit); else 3.
    """
    with np.errstate(invalid="ignore", over="ignore"):
        positive = matrix > 0  # not ±0.0, NaN or a negative number
        whole = positive & (np.floor(matrix) == matrix) & (matrix < EXACT_INTEGERS)
        small = whole & (matrix < 256)
        big, fraction = whole ^ small, positive ^ whole
        m = np.zeros(matrix.shape, dtype=np.uint64)
        m[big] = matrix[big].astype(np.uint64) << np.uint64(1)
        numbers = matrix[fraction]
        cents = np.round(numbers * CENTS)
        steps = numbers.view("<i8") - (cents / CENTS).view("<i8")
        decimal = (cents < _DECIMALS) & (steps >= -STEP_BIAS) & (steps < STEP_BIAS)
        m[fraction] = np.where(decimal, cents.astype(np.uint64) << np.uint64(1 + STEP_BITS)
                               | (steps + STEP_BIAS).astype(np.uint64) << np.uint64(1) | np.uint64(1), 0)
    varint = big
    varint[fraction] = decimal
    codes = (3 - (small.view(np.uint8) << 1) - varint.view(np.uint8)) * (matrix.view("<u8") != 0).view(np.uint8)
    return codes, m[varint]


def _leb128(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each varint as a little-endian word whose first ``length`` bytes are its LEB128 form, and its length."""
    words, lengths, low = np.zeros(len(m), dtype=np.uint64), np.ones(len(m), dtype=np.int64), np.uint64(0x7F)
    for k in range(VARINT_BYTES):
        words |= (m >> np.uint64(7 * k) & low) << np.uint64(8 * k)
        if k:
            lengths += m >= np.uint64(1 << 7 * k)
    return words | _CONTINUED[lengths], lengths


def _kept(widths: np.ndarray) -> np.ndarray:
    """Which bytes of each value's 8-byte slot are stored: its first ``widths`` bytes, row by row."""
    return _KEPT[widths].view(np.uint8).reshape(len(widths), 8 * widths.shape[1]) != 0


def encode_rows(values: np.ndarray) -> EncodedRows:
    """A ``(records, features)`` matrix as records, in bulk: each record's header, its fixed-width values
    in 8-byte slots and its varints in 8-byte slots, then the bytes each record keeps, compacted in one step.

    :raises RecordError: from :func:`as_float64`
    """
    matrix = as_float64(values)
    rows, width = matrix.shape
    head, (codes, m) = header_size(width), codes_of(matrix)
    padded = np.zeros((rows, 4 * head), dtype=np.uint8)
    padded[:, :width] = codes
    header = padded[:, 0::4] | padded[:, 1::4] << 2 | padded[:, 2::4] << 4 | padded[:, 3::4] << 6
    fixed = np.where(codes == 3, matrix.view("<u8"), np.where(codes == 1, matrix, 0).astype("<u8"))
    varints = np.zeros((rows, width), dtype="<u8")
    varint_widths = np.zeros((rows, width), dtype=np.int64)
    is_varint = codes == VARINT
    varints[is_varint], varint_widths[is_varint] = _leb128(m)
    fixed_widths = _FIXED[codes]
    kept = np.concatenate([np.ones((rows, head), dtype=bool), _kept(fixed_widths), _kept(varint_widths)], axis=1)
    data = np.concatenate([header, fixed.view(np.uint8).reshape(rows, 8 * width),
                           varints.view(np.uint8).reshape(rows, 8 * width)], axis=1)[kept]
    return EncodedRows(data.tobytes(), head + fixed_widths.sum(axis=1) + varint_widths.sum(axis=1))


def _spans(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The indices ``starts[i]`` to ``starts[i] + lengths[i]`` (exclusive), for each ``i`` in turn."""
    ends = np.cumsum(lengths)
    return np.arange(ends[-1] if len(ends) else 0) + np.repeat(starts - (ends - lengths), lengths)


def varint_values(m: np.ndarray) -> np.ndarray:
    """The values of code-2 varints (:func:`fx_workers.store.records.varint_value`, in bulk)."""
    one = np.uint64(1)
    cents = (m >> np.uint64(1 + STEP_BITS)).astype(np.float64) / CENTS
    steps = (m >> one) & np.uint64((1 << STEP_BITS) - 1)
    decimal = (cents.view("<u8") + steps - np.uint64(STEP_BIAS)).view("<f8")
    return np.where(m & one == 0, (m >> one).astype(np.float64), decimal)


def _read_varints(part: np.ndarray, owners: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The LEB128 varints filling ``part`` (records' varint parts back to back, each ending a varint;
    ``owners`` the record of each byte): each varint's ``m`` and record, and the records with a varint
    longer than 8 bytes."""
    ends = part < 0x80
    index = np.cumsum(ends) - ends
    first = np.flatnonzero(np.concatenate([[True], ends]))[:-1]
    place = np.arange(len(part)) - first[index]
    fits = place < VARINT_BYTES
    slots = np.zeros((len(first), VARINT_BYTES), dtype=np.uint8)
    slots[index[fits], place[fits]] = part[fits] & 0x7F
    groups = (slots.view("<u8") >> (8 * _SEVENS)) & np.uint64(0x7F)
    return np.bitwise_or.reduce(groups << (7 * _SEVENS), axis=1), owners[ends], np.unique(owners[~fits])


def decode_rows(values: Sequence[bytes | None], width: int) -> tuple[np.ndarray, list[bool]]:
    """Records as stored (``None`` where absent) as a ``(len, width)`` float matrix, and which were present.

    An absent record is a row of NaN; so is a record whose bytes are not what its codes say (a corrupt
    record, or one of another schema), which is present, so a check that compares values reports it.
    """
    matrix = np.full((len(values), width), np.nan)
    head = header_size(width)
    good = np.array([i for i, v in enumerate(values) if v is not None and len(v) >= head], dtype=np.int64)
    if not len(good) or not width:
        return matrix, [v is not None for v in values]
    blobs = [values[i] for i in good.tolist()]
    lengths = np.fromiter(map(len, blobs), dtype=np.int64, count=len(blobs))
    data = np.frombuffer(b"".join(blobs), dtype=np.uint8)
    starts = np.cumsum(lengths) - lengths
    header = data[starts[:, None] + np.arange(head)]
    codes = (header[:, :, None] >> np.array([0, 2, 4, 6], dtype=np.uint8)) & 3
    codes = codes.reshape(len(good), 4 * head)[:, :width]
    fixed_widths = _FIXED[codes]
    fixed_length, count = fixed_widths.sum(axis=1), (codes == VARINT).sum(axis=1)
    varint_length = lengths - head - fixed_length
    whole = np.flatnonzero((varint_length >= count) & (varint_length <= VARINT_BYTES * count))
    # each record's varint part must hold exactly its count of varints, the last ending it; then no varint
    # runs into the next record's part, and one longer than 8 bytes spoils only its own record
    part = data[_spans(starts[whole] + head + fixed_length[whole], varint_length[whole])]
    owners = np.repeat(np.arange(len(whole)), varint_length[whole])
    ends = part < 0x80
    last = np.cumsum(varint_length[whole]) - 1
    closed = (count[whole] == 0) | ends[np.maximum(last, 0)] if len(part) else count[whole] == 0
    ok = closed & (np.bincount(owners[ends], minlength=len(whole)) == count[whole])
    if not ok.all():
        kept = ok[owners]
        part, owners, whole = part[kept], (np.cumsum(ok) - 1)[owners[kept]], whole[ok]
    m, varint_owners, too_long = _read_varints(part, owners)
    if len(too_long):
        fine = np.ones(len(whole), dtype=bool)
        fine[too_long] = False
        m, whole = m[fine[varint_owners]], whole[fine]
    fixed_kept = _kept(fixed_widths[whole])
    slots = np.zeros(fixed_kept.shape, dtype=np.uint8)
    slots[fixed_kept] = data[_spans(starts[whole] + head, fixed_length[whole])]
    words, kept_codes = slots.view("<u8"), codes[whole]
    rows = np.where(kept_codes == 3, words.view("<f8"), words.astype(np.float64))
    rows[kept_codes == VARINT] = varint_values(m)
    matrix[good[whole]] = rows
    return matrix, [v is not None for v in values]
