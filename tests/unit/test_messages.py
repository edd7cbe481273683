from __future__ import annotations

import json

import numpy as np
import pytest

from fx_workers.engine.batch import BatchFeatures
from fx_workers.messages import (
    MAX_MESSAGE_BYTES,
    BatchStatus,
    CompletionSignal,
    DeadLetter,
    ExtractionRequest,
    FeatureResult,
    MessageError,
    MessageKind,
    ResultPart,
    header_value,
    join_features,
    kafka_headers,
    results_checksum,
    split_features,
)

META = {"run_id": "manual__2026-01-01T00:00:00+00:00", "batch_id": 3, "as_of": 1_700_000_000}


def make_features(accounts: int, transfers: int, seed: int = 0) -> BatchFeatures:
    rng = np.random.default_rng(seed)
    return BatchFeatures(
        node_ids=np.array([f"acct-é{i}" for i in range(accounts)], dtype=np.str_),
        node_values=rng.normal(size=(accounts, 62)),
        tx_ids=np.array([f"tx{i:08d}" for i in range(transfers)], dtype=np.str_),
        edge_values=rng.normal(size=(transfers, 11)),
    )


def completion_for(results: list[FeatureResult], features: BatchFeatures) -> CompletionSignal:
    return CompletionSignal(
        **META, schema_version="s1", status=BatchStatus.OK, accounts=len(features.node_ids),
        transfers=len(features.tx_ids), result_messages=len(results), checksum=results_checksum(results),
    )


def test_request_round_trip() -> None:
    request = ExtractionRequest(**META, batches=4, schema_version="s1", ids=["a", "b", "ü"])
    assert ExtractionRequest.decode(request.encode()) == request
    assert json.loads(request.encode())["v"] == 1


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"v": 2}, "v: Input should be 1"),
        ({"batch_id": "3"}, "batch_id: Input should be a valid integer"),
        ({"ids": []}, "ids: List should have at least 1 item"),
        ({"ids": ["a", "a"]}, "repeats node ids"),
        ({"batch_id": 4}, "batch_id must be below batches=4. Got 4"),
        ({"as_of": -1}, "as_of: Input should be greater than or equal to 0"),
        ({"extra": 1}, "extra: Extra inputs are not permitted"),
    ],
)
def test_request_validation(change: dict, expected: str) -> None:
    data = {"v": 1, "kind": "request", **META, "batches": 4, "schema_version": "s1", "ids": ["a"]} | change
    with pytest.raises(MessageError, match=expected):
        ExtractionRequest.decode(json.dumps(data).encode())


@pytest.mark.parametrize("data", [b"", b"\xff\xfe", b"[1, 2]", b'{"v": 1}'])
def test_request_garbage(data: bytes) -> None:
    with pytest.raises(MessageError, match="invalid ExtractionRequest"):
        ExtractionRequest.decode(data)


def test_completion_round_trip() -> None:
    signal = CompletionSignal(
        **META, schema_version="s1", status=BatchStatus.FAILED, error="neo4j down", worker_id="2",
        attempts=3, timings_ms={"read": 1.5},
    )
    assert CompletionSignal.decode(signal.encode()) == signal


def test_results_round_trip_and_chunking() -> None:
    features = make_features(accounts=5_000, transfers=80_000)
    results = split_features(features, **META, schema_version="s1")
    encoded = [r.encode() for r in results]

    assert len(results) > 2
    assert all(len(data) <= MAX_MESSAGE_BYTES for data in encoded)
    assert [r.chunk for r in results] == list(range(len(results)))
    assert {r.part for r in results} == {ResultPart.NODES, ResultPart.EDGES}

    decoded = [FeatureResult.decode(data) for data in reversed(encoded)]
    joined = join_features(decoded, completion_for(results, features))
    np.testing.assert_array_equal(joined.node_ids, features.node_ids)
    np.testing.assert_array_equal(joined.node_values, features.node_values)
    np.testing.assert_array_equal(joined.tx_ids, features.tx_ids)
    np.testing.assert_array_equal(joined.edge_values, features.edge_values)


def test_empty_batch_keeps_both_parts() -> None:
    features = make_features(accounts=0, transfers=0)
    results = [FeatureResult.decode(r.encode()) for r in split_features(features, **META, schema_version="s1")]
    joined = join_features(results, completion_for(results, features))
    assert joined.node_values.shape == (0, 62)
    assert joined.edge_values.shape == (0, 11)


def test_single_oversized_row_is_refused() -> None:
    features = make_features(accounts=1, transfers=0)
    wide = BatchFeatures(features.node_ids, np.zeros((1, 130_000)), features.tx_ids, features.edge_values)
    with pytest.raises(MessageError, match="must be at most 1000000"):
        split_features(wide, **META, schema_version="s1")[0].encode()


def test_corrupted_result_is_rejected() -> None:
    data = bytearray(split_features(make_features(10, 10), **META, schema_version="s1")[0].encode())
    data[-3] ^= 0xFF
    with pytest.raises(MessageError, match="CRC mismatch"):
        FeatureResult.decode(bytes(data))
    with pytest.raises(MessageError, match="payload is"):
        FeatureResult.decode(bytes(data[:-1]))
    with pytest.raises(MessageError, match="too short"):
        FeatureResult.decode(b"\x00")
    with pytest.raises(MessageError, match="exceeds"):
        FeatureResult.decode(b"\x00\x00\xff\xff{}")


def test_incomplete_batch_is_detected() -> None:
    features = make_features(2_000, 40_000)
    results = split_features(features, **META, schema_version="s1")
    completion = completion_for(results, features)
    with pytest.raises(MessageError, match="expected chunks"):
        join_features(results[:-1], completion)
    other = split_features(make_features(2_000, 40_000, seed=1), **META, schema_version="s1")
    with pytest.raises(MessageError, match="checksum mismatch"):
        join_features(other, completion)


def test_dead_letter_round_trip_and_truncation() -> None:
    letter = DeadLetter(reason="bad", topic="t", partition=1, offset=7, worker_id="0", original=b"x" * 2_000_000)
    decoded = DeadLetter.decode(letter.encode())
    assert len(letter.encode()) <= MAX_MESSAGE_BYTES
    assert decoded.original_bytes == 2_000_000
    assert decoded.original == b"x" * len(decoded.original)
    assert (decoded.reason, decoded.partition, decoded.offset, decoded.run_id) == ("bad", 1, 7, None)


def test_headers() -> None:
    headers = kafka_headers(MessageKind.COMPLETION, "run-1")
    assert header_value(headers, "fx-kind") == "completion"
    assert header_value(headers, "fx-run") == "run-1"
    assert header_value(None, "fx-kind") is None
