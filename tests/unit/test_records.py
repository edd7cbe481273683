"""The record encoding (``tagged-varint``): 2-bit codes, the fixed-width values, then the varints (integers
and hundredths), exact bit for bit, built and read in bulk with numpy and one by one without it."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from typing import TYPE_CHECKING

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fx_workers.config import REPO_ROOT
from fx_workers.store.bulk import RecordError, decode_rows, encode_rows
from fx_workers.store.records import ENCODING, RecordSchema, decode_record, schema_fields
from fx_workers.store.runs import RunError
from fx_workers.store.writer import Checksum

if TYPE_CHECKING:
    from collections.abc import Callable


def from_bits(bits: int) -> float:
    return struct.unpack("<d", struct.pack("<Q", bits))[0]


AMOUNTS = st.integers(1, 10**12).map(lambda n: n / 100)
ENGINE_VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True),  # NaN, -0.0, inf, ratios
    st.integers(0, 300).map(float), st.integers(0, 2**32 + 5).map(float),  # counts, flags, seconds
    st.integers(-(2**53), 2**53).map(float), AMOUNTS, AMOUNTS.map(lambda a: -a),  # amounts, net flows
    st.lists(AMOUNTS, min_size=2, max_size=6).map(math.fsum), st.lists(AMOUNTS, min_size=2, max_size=6).map(sum),
    st.integers(0, 2**64 - 1).map(from_bits),  # any bits: NaN payloads, subnormals, huge and tiny numbers
    st.sampled_from([0.0, -0.0, 255.0, 256.0, 2.0**32, 2.0**53 - 1, 2.0**53, 2.0**53 + 2, 5e-324, 0.01, 0.07,
                     0.1 + 0.2, 2.0**51 / 100, 2.0**51 / 100 + 1, 1e300, -1e300, math.inf, -math.inf,
                     from_bits(0x7FF0_0000_0000_0001), from_bits(0xFFF8_0000_DEAD_BEEF)]))


def bits(matrix: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(matrix, dtype="<f8").view("<u8")


def varint(m: int) -> bytes:
    out = bytearray()
    while m >= 0x80:
        out.append(m & 0x7F | 0x80)
        m >>= 7
    return bytes(out + bytes([m]))


def test_a_record_is_its_codes_then_its_fixed_values_then_its_varints() -> None:
    values = np.array([[0.0, 7.0, 300.0, 0.5, -0.0, 12.34, 0.1 + 0.2, -3.0, 2.0**53]])
    (record,) = encode_rows(values).rows()
    codes = [0, 1, 2, 2, 3, 2, 2, 3, 3]  # +0.0, uint8, the integer 300, 50 hundredths, -0.0 as float64, ...
    header = bytes(sum(code << 2 * j for j, code in enumerate(codes[i : i + 4])) for i in (0, 4, 8))
    fixed = struct.pack("<Bddd", 7, -0.0, -3.0, 2.0**53)
    # 0.1 + 0.2 is 30 hundredths one unit in the last place up: d = 1, stored as d + 8 = 9
    varints = varint(300 << 1) + varint(50 << 5 | 8 << 1 | 1) + varint(1234 << 5 | 8 << 1 | 1) + varint(
        30 << 5 | 9 << 1 | 1)
    assert record == header + fixed + varints
    assert varints.hex() == "d804d10cd1b402d307" and len(record) == 3 + 25 + 9
    assert encode_rows(np.zeros((2, 5))).rows() == [b"\x00\x00", b"\x00\x00"]  # only the header
    assert encode_rows(np.zeros((0, 4))).rows() == []
    assert encode_rows(values.astype(">f8")).rows() == [record]  # the bytes do not depend on the input's byte order


def test_the_readme_example_is_what_is_written() -> None:
    (record,) = encode_rows(np.array([[0.0, 7.0, 300.0, 0.5, 1561.23]])).rows()
    assert record.hex(" ") == "a4 02 07 d8 04 d1 0c f1 f6 b0 02"


@given(arrays(np.float64, st.tuples(st.integers(0, 6), st.integers(0, 13)), elements=ENGINE_VALUES))
def test_every_value_round_trips_bit_for_bit_in_bulk_and_one_by_one(values: np.ndarray) -> None:
    encoded = encode_rows(values)
    rows = encoded.rows()
    assert [len(r) for r in rows] == encoded.lengths.tolist() and b"".join(rows) == encoded.data
    matrix, present = decode_rows(rows, values.shape[1])
    assert np.array_equal(bits(matrix), bits(values)) and all(present)
    for row, record in zip(values, rows, strict=True):
        assert np.array_equal(bits(np.array(decode_record(record, values.shape[1]))), bits(row))


@given(st.lists(st.binary(max_size=24), max_size=8), st.integers(1, 9))
def test_any_bytes_decode_alike_in_bulk_and_one_by_one(records: list[bytes], width: int) -> None:
    """Corrupt records too: a cut-off, extra or overlong varint spoils its own record, never its neighbour's."""
    matrix, present = decode_rows(records, width)
    assert all(present)
    for row, record in zip(matrix, records, strict=True):
        one = decode_record(record, width)
        if one is None:
            assert np.isnan(row).all()
        else:
            assert np.array_equal(bits(np.array(one)), bits(row))


def readme_decode() -> Callable[[bytes, int], list[float]]:
    """The README's Python ``decode``, the contract's worked two-step read."""
    text = (REPO_ROOT / "README.md").read_text()
    start = text.index("def decode(value: bytes, n: int)")
    scope: dict = {"struct": struct}
    exec(text[start : text.index("\nrun = ", start)], scope)  # our own README
    return scope["decode"]


@given(arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(0, 13)), elements=ENGINE_VALUES))
def test_the_readmes_decode_reads_what_is_written(values: np.ndarray) -> None:
    decode = readme_decode()
    for row, record in zip(values, encode_rows(values).rows(), strict=True):
        assert np.array_equal(bits(np.array(decode(record, values.shape[1]))), bits(row))


def test_absent_and_corrupt_records_read_as_nan() -> None:
    values = np.random.default_rng(1).normal(size=(3, 5)) * 1e6
    values[:, 0] = [300.0, 12.5, 1e6]  # each record ends with a varint
    rows = encode_rows(values).rows()
    cut, overlong = rows[2][:-1], rows[0][:-2] + b"\x80" * 8 + rows[0][-2:]
    matrix, present = decode_rows([rows[0], None, cut, rows[1], b"", rows[2] + b"\x00", overlong, rows[2]], 5)
    assert np.array_equal(matrix[0], values[0]) and np.array_equal(matrix[3], values[1])
    assert np.array_equal(matrix[7], values[2])
    assert np.isnan(matrix[[1, 2, 4, 5, 6]]).all()
    assert present == [True, False, True, True, True, True, True, True]
    assert decode_record(cut, 5) is None and decode_record(b"", 5) is None and decode_record(overlong, 5) is None


def test_a_value_float64_cannot_hold_is_refused() -> None:
    with pytest.raises(RecordError, match=r"within 2\*\*53 of 0"):
        encode_rows(np.array([[1, 2**53 + 1]], dtype=np.int64))
    with pytest.raises(RecordError, match=r"must be numbers\. Got an array of <U1$"):
        encode_rows(np.array([["a"]]))
    assert encode_rows(np.array([[3, 2**53]], dtype=np.int64)).rows() == encode_rows(np.array([[3.0, 2.0**53]])).rows()


def test_the_schema_is_read_from_the_manifest() -> None:
    fields = schema_fields(["b", "a"], ["e"])
    assert fields == {"encoding": ENCODING, "node_names": '["b", "a"]', "edge_names": '["e"]'}
    schema = RecordSchema.from_manifest("r1", fields)
    assert (schema.names("node"), schema.names("edge")) == (("b", "a"), ("e",))
    with pytest.raises(RunError, match="run r1 has no tagged-varint record schema"):
        RecordSchema.from_manifest("r1", {"encoding": "tagged-le", "node_names": json.dumps(["a"]),
                                          "edge_names": "[]"})


def test_the_written_and_the_reread_checksums_agree() -> None:
    values = np.arange(6, dtype=float).reshape(2, 3) / 7
    written, reread = Checksum(), Checksum()
    written.add_encoded(["a", "b"], encode_rows(values))
    reread.add_part(["a", "b"], encode_rows(values).rows())
    assert written.hexdigest() == reread.hexdigest()
    lost = Checksum()
    lost.add_part(["a", "b"], [encode_rows(values).rows()[0], None])
    assert lost.hexdigest() != written.hexdigest()


NUMPY_FREE_READ = """
import json, sys
from fx_workers.store.keys import RedisKeys
from fx_workers.store.reader import FeatureReader
from fx_workers.store.records import schema_fields

class Redis:  # what FeatureReader.nodes asks of a client, for one run with one account
    manifest = {"as_of": "1", "schema": "s", **schema_fields(["a", "b"], [])}
    def get(self, key): return b"r1"
    def hmget(self, key, names): return [self.manifest.get(n, "").encode() or None for n in names]
    def mget(self, keys): return [bytes([0b1001, 7, 0xD8, 0x04])]  # 7 (uint8), 300 (varint 600)

record = FeatureReader(Redis(), RedisKeys()).nodes(["A1"])[0]
print(json.dumps([record["a"], record["b"], "numpy" in sys.modules]))
"""


def test_a_read_by_id_decodes_without_numpy() -> None:
    """``fx features get ID`` reads through this path: numpy costs 0.3 to 0.5 s of its start (checked by
    module name, as tests/unit/test_cli_imports.py does, never by time)."""
    result = subprocess.run([sys.executable, "-c", NUMPY_FREE_READ], capture_output=True, text=True, timeout=60,
                            check=True)
    assert json.loads(result.stdout) == [7.0, 300.0, False]
