"""The record encoding (``tagged-le``): 2-bit codes then the values that are not +0.0, exact bit for bit,
built and read in bulk with numpy and one by one without it."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fx_workers.store.bulk import RecordError, decode_rows, encode_rows
from fx_workers.store.records import ENCODING, RecordSchema, decode_record, schema_fields
from fx_workers.store.runs import RunError
from fx_workers.store.writer import Checksum

ENGINE_VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True),  # NaN, -0.0, inf, ratios
    st.integers(0, 300).map(float), st.integers(0, 2**32 + 5).map(float),  # counts, flags, seconds
    st.integers(-(2**53), 2**53).map(float), st.sampled_from([0.0, -0.0, 255.0, 256.0, 2.0**32 - 1, 2.0**32]))


def bits(matrix: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(matrix, dtype="<f8").view("<u8")


def test_a_record_is_its_codes_then_its_values_that_are_not_zero() -> None:
    values = np.array([[0.0, 7.0, 300.0, 0.5, -0.0, 2.0**32, 0.0]])
    (record,) = encode_rows(values).rows()
    codes = [0, 1, 2, 3, 3, 3, 0]  # +0.0, uint8, uint32, then float64 for 0.5, -0.0 and 2**32
    header = bytes(sum(code << 2 * j for j, code in enumerate(codes[i : i + 4])) for i in (0, 4))
    assert record == header + struct.pack("<BIddd", 7, 300, 0.5, -0.0, 2.0**32)
    assert encode_rows(np.zeros((2, 5))).rows() == [b"\x00\x00", b"\x00\x00"]  # only the header
    assert encode_rows(np.zeros((0, 4))).rows() == []
    assert encode_rows(values.astype(">f8")).rows() == [record]  # the bytes do not depend on the input's byte order


@given(arrays(np.float64, st.tuples(st.integers(0, 6), st.integers(0, 13)), elements=ENGINE_VALUES))
def test_every_value_round_trips_bit_for_bit_in_bulk_and_one_by_one(values: np.ndarray) -> None:
    encoded = encode_rows(values)
    rows = encoded.rows()
    assert [len(r) for r in rows] == encoded.lengths.tolist() and b"".join(rows) == encoded.data
    matrix, present = decode_rows(rows, values.shape[1])
    assert np.array_equal(bits(matrix), bits(values)) and all(present)
    for row, record in zip(values, rows, strict=True):
        assert np.array_equal(bits(np.array(decode_record(record, values.shape[1]))), bits(row))


def test_absent_and_corrupt_records_read_as_nan() -> None:
    values = np.random.default_rng(1).normal(size=(3, 5)) * 1e6
    rows = encode_rows(values).rows()
    matrix, present = decode_rows([rows[0], None, rows[2][:-1], rows[1], b"", rows[2] + b"\x00"], 5)
    assert np.array_equal(matrix[0], values[0]) and np.array_equal(matrix[3], values[1])
    assert np.isnan(matrix[[1, 2, 4, 5]]).all()
    assert present == [True, False, True, True, True, True]
    assert decode_record(rows[2][:-1], 5) is None and decode_record(b"", 5) is None


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
    with pytest.raises(RunError, match="run r1 has no tagged-le record schema"):
        RecordSchema.from_manifest("r1", {"encoding": "float64-le", "node_names": json.dumps(["a"]),
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
    def mget(self, keys): return [bytes([0b1001, 7]) + (300).to_bytes(4, "little")]

record = FeatureReader(Redis(), RedisKeys()).nodes(["A1"])[0]
print(json.dumps([record["a"], record["b"], "numpy" in sys.modules]))
"""


def test_a_read_by_id_decodes_without_numpy() -> None:
    """``fx features get ID`` reads through this path: numpy costs 0.3 to 0.5 s of its start (checked by
    module name, as tests/unit/test_cli_imports.py does, never by time)."""
    result = subprocess.run([sys.executable, "-c", NUMPY_FREE_READ], capture_output=True, text=True, timeout=60,
                            check=True)
    assert json.loads(result.stdout) == [7.0, 300.0, False]
