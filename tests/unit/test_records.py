"""The packed record encoding: float64 little-endian in the run's order, exact, built in bulk."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from fx_workers.store.records import ENCODING, RecordSchema, pack_rows, packed_matrix, schema_fields, unpack_rows
from fx_workers.store.runs import RunError
from fx_workers.store.writer import Checksum


def test_a_row_packs_to_its_float64_little_endian_values() -> None:
    values = np.array([[0.1 + 0.2, -0.0, 1e300, 5e-324], [np.nan, np.inf, 3.0, 2.0]])
    rows = pack_rows(packed_matrix(values))
    assert rows[0] == struct.pack("<4d", *values[0])
    assert rows[1] == struct.pack("<4d", *values[1])
    assert pack_rows(packed_matrix(np.zeros((0, 4)))) == []
    big_endian = values.astype(">f8")
    assert pack_rows(packed_matrix(big_endian)) == rows  # the bytes do not depend on the input's byte order


def test_unpack_is_exact_and_marks_absent_and_corrupt_records() -> None:
    values = np.random.default_rng(1).normal(size=(3, 5)) * 1e6
    rows = pack_rows(packed_matrix(values))
    matrix, present = unpack_rows([rows[0], None, rows[2][:-1], rows[1]], 5)
    assert np.array_equal(matrix[0], values[0]) and np.array_equal(matrix[3], values[1])
    assert np.isnan(matrix[1]).all() and np.isnan(matrix[2]).all()
    assert present == [True, False, True, True]


def test_the_schema_is_read_from_the_manifest() -> None:
    fields = schema_fields(["b", "a"], ["e"])
    assert fields == {"encoding": ENCODING, "node_names": '["b", "a"]', "edge_names": '["e"]'}
    schema = RecordSchema.from_manifest("r1", fields)
    assert (schema.names("node"), schema.names("edge")) == (("b", "a"), ("e",))
    with pytest.raises(RunError, match="run r1 has no float64-le record schema"):
        RecordSchema.from_manifest("r1", {"encoding": "text", "node_names": json.dumps(["a"])})


def test_the_written_and_the_reread_checksums_agree() -> None:
    values = np.arange(6, dtype=float).reshape(2, 3) / 7
    written, reread = Checksum(), Checksum()
    written.add_matrix(["a", "b"], packed_matrix(values))
    reread.add_part(["a", "b"], pack_rows(packed_matrix(values)))
    assert written.hexdigest() == reread.hexdigest()
    lost = Checksum()
    lost.add_part(["a", "b"], [pack_rows(packed_matrix(values))[0], None])
    assert lost.hexdigest() != written.hexdigest()
