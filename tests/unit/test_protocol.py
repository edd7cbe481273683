"""The Kafka protocol: round trips, and every malformed message refused with a reason."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fx_workers.engine.stats import part_stats
from fx_workers.protocol import (
    MAX_ID_LENGTH,
    MAX_IDS,
    MAX_MESSAGE_BYTES,
    BatchStatus,
    CompletionSignal,
    DeadLetter,
    ExtractionRequest,
    MessageError,
    header_value,
)

PLAN = "0123456789abcdef"
META = {"run_id": "a1b2c3d4", "plan": PLAN, "batch_id": 3}


def request_data(**change: object) -> bytes:
    data = {"v": 2, "kind": "request", **META, "batches": 4, "as_of": 1_700_000_000, "schema_version": "s1",
            "ids": ["a"]}
    return json.dumps(data | change).encode()


def ok_signal(accounts: int = 3, transfers: int = 2) -> CompletionSignal:
    rng = np.random.default_rng(0)
    return CompletionSignal(**META, status=BatchStatus.OK, accounts=accounts, transfers=transfers,
                            checksum="f" * 32, nodes=part_stats(rng.normal(size=(accounts, 62))),
                            edges=part_stats(rng.normal(size=(transfers, 11))), worker_id="w1")


def test_request_round_trip() -> None:
    request = ExtractionRequest(**META, batches=4, as_of=1, schema_version="s1", ids=["a", "b", "ü", "x'}) RETURN 1"])
    assert ExtractionRequest.decode(request.encode()) == request


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"v": 1}, "v: Input should be 2"),
        ({"batch_id": "3"}, "batch_id: Input should be a valid integer"),
        ({"ids": []}, "ids: List should have at least 1 item"),
        ({"ids": ["a", "a"]}, "repeats account ids"),
        ({"ids": [""]}, "ids.0: String should have at least 1 character"),
        ({"ids": ["x" * (MAX_ID_LENGTH + 1)]}, f"at most {MAX_ID_LENGTH} characters"),
        ({"ids": [str(i) for i in range(MAX_IDS + 1)]}, f"at most {MAX_IDS} items"),
        ({"batch_id": 4}, "batch_id must be below batches=4. Got 4"),
        ({"batches": -2}, "batches: Input should be greater than or equal to 1"),
        ({"as_of": -1}, "as_of: Input should be greater than or equal to 0"),
        ({"plan": "not-a-plan"}, "plan: String should match pattern"),
        ({"extra": 1}, "extra: Extra inputs are not permitted"),
    ],
)
def test_request_validation_names_the_field(change: dict, expected: str) -> None:
    with pytest.raises(MessageError, match=expected):
        ExtractionRequest.decode(request_data(**change))


@pytest.mark.parametrize("data", [b"", b"\xff\xfe", b"[1, 2]", b'{"v": 2}', b"null", b'{"v": 2' * 1000])
def test_request_garbage(data: bytes) -> None:
    with pytest.raises(MessageError, match="invalid ExtractionRequest"):
        ExtractionRequest.decode(data)


def test_signal_round_trip_and_headers() -> None:
    signal = ok_signal()
    assert CompletionSignal.decode(signal.encode()) == signal
    assert len(signal.encode()) < 100_000  # the statistics stay small: bytes grow with batches, not records
    headers = signal.headers()
    assert [header_value(headers, h) for h in ("fx-kind", "fx-run", "fx-plan", "fx-batch", "fx-status")] == [
        "completion", "a1b2c3d4", PLAN, "3", "ok"]
    failed = CompletionSignal(**META, status=BatchStatus.FAILED, error="neo4j down", attempt=3)
    assert CompletionSignal.decode(failed.encode()) == failed


def test_the_wait_for_a_read_is_a_timing_older_signals_lack() -> None:
    """``extract_wait`` came with the read ahead: a timing, not a field, so an older worker's signal (without
    it) decodes and counts, and an older consumer (``extra="forbid"``) still decodes a newer signal."""
    from fx_workers.store.signals import SignalLedger

    older = ok_signal().model_copy(update={"timings_ms": {"extract": 40.0, "write": 9.0, "stats": 1.0}})
    newer = ok_signal().model_copy(update={"batch_id": 2, "timings_ms": older.timings_ms | {"extract_wait": 0.2}})
    ledger = SignalLedger(run_id=META["run_id"], plan=PLAN, batches=4)
    for signal in (older, newer):
        decoded = CompletionSignal.decode(signal.encode())
        assert decoded == signal
        ledger.add(decoded)
    assert sorted(ledger.counted) == [2, 3]
    assert set(json.loads(newer.encode())) == set(CompletionSignal.model_fields)


def test_an_ok_signal_must_prove_what_it_wrote() -> None:
    with pytest.raises(ValueError, match="must carry a checksum"):
        CompletionSignal(**META, status=BatchStatus.OK, accounts=1)
    data = json.loads(ok_signal(accounts=3).encode()) | {"accounts": 4}
    with pytest.raises(MessageError, match=r"nodes\.rows must equal accounts=4"):
        CompletionSignal.decode(json.dumps(data).encode())
    data = json.loads(ok_signal().encode())
    data["nodes"]["hist"] = data["nodes"]["hist"][:-1]
    with pytest.raises(MessageError, match="one entry per feature"):
        CompletionSignal.decode(json.dumps(data).encode())


def test_statistics_survive_infinities() -> None:
    signal = ok_signal()
    data = json.loads(signal.encode())
    data["nodes"]["sumsq"][0] = 1e308 * 10
    decoded = CompletionSignal.decode(json.dumps(data).encode())
    assert decoded.nodes is not None and decoded.nodes.sumsq[0] == float("inf")


def test_dead_letter_round_trip_and_truncation() -> None:
    letter = DeadLetter(reason="bad", topic="t", partition=1, offset=7, worker_id="0", original_bytes=2_000_000)
    frame = letter.frame(b"x" * 2_000_000)
    assert len(frame) <= MAX_MESSAGE_BYTES
    decoded, original = DeadLetter.decode(frame)
    assert decoded == letter and original == b"x" * len(original)
    with pytest.raises(MessageError, match="too short"):
        DeadLetter.decode(b"\x00")
    with pytest.raises(MessageError, match="exceeds"):
        DeadLetter.decode(b"\x00\x00\xff\xff{}")


def test_headers_of_absent_names() -> None:
    assert header_value(None, "fx-kind") is None
    assert header_value([("fx-kind", None)], "fx-kind") is None
