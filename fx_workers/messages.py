"""Kafka message contracts shared by the DAG, the trigger and the workers.

Every message is versioned (``v``) and validated on receipt; anything malformed raises the one
:class:`MessageError`. This module is pure: no Kafka client, no Airflow import.

- :class:`ExtractionRequest` (JSON): one per batch, on the requests topic.
- :class:`FeatureResult` (binary frame): a chunk of rows of one batch, on the results topic.
  Chunks are cut by size so every message stays under Kafka's default 1 MB limit.
- :class:`CompletionSignal` (JSON): one per finished batch, after its results, on the results
  topic; its counts and checksum let the aggregation tell a batch is whole.
- :class:`DeadLetter` (binary frame): what could not be processed, the reason and where it came from.

A binary frame is a 4-byte big-endian header length, a JSON header, then the payload. Kafka
headers (:data:`HEADER_KIND`, :data:`HEADER_RUN`) let readers skip messages without decoding them.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fx_workers.engine.batch import BatchFeatures

VERSION = 1
MAX_MESSAGE_BYTES = 1_000_000
"""Kafka's default ``message.max.bytes``; every encoded message must stay below it."""
CHUNK_BYTES = 768 * 1024
"""Target payload size of one :class:`FeatureResult`, leaving room for the header."""
HEADER_KIND = "fx-kind"
HEADER_RUN = "fx-run"
_FRAME_LENGTH = struct.Struct(">I")


class MessageError(ValueError):
    """A message could not be encoded, decoded or validated; the text says what and why."""


class MessageKind(StrEnum):
    REQUEST = "request"
    RESULT = "result"
    COMPLETION = "completion"
    DEAD_LETTER = "dead-letter"


class BatchStatus(StrEnum):
    OK = "ok"
    FAILED = "failed"


class ResultPart(StrEnum):
    NODES = "nodes"
    EDGES = "edges"


def kafka_headers(kind: MessageKind, run_id: str | None) -> list[tuple[str, bytes]]:
    """The Kafka headers every fx message carries."""
    headers = [(HEADER_KIND, kind.value.encode())]
    if run_id is not None:
        headers.append((HEADER_RUN, run_id.encode()))
    return headers


def header_value(headers: Sequence[tuple[str, bytes | None]] | None, name: str) -> str | None:
    """A header of a consumed message as text, or ``None`` when it is absent."""
    for key, value in headers or ():
        if key == name and value is not None:
            return value.decode(errors="replace")
    return None


_Id = Annotated[str, Field(min_length=1)]
_Count = Annotated[int, Field(ge=0)]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    v: Literal[1] = VERSION

    def encode(self) -> bytes:
        return self.model_dump_json().encode()


_M = TypeVar("_M", bound=_Message)


def _validate(model: type[_M], data: bytes) -> _M:
    """Validate JSON as ``model``, raising :class:`MessageError`."""
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'message'}: {err['msg']}"
            for err in exc.errors(include_input=False)
        )
        raise MessageError(f"invalid {model.__name__}: {problems}") from None


class ExtractionRequest(_Message):
    """Compute the features of ``ids`` as of ``as_of`` with catalogue version ``schema_version``."""

    kind: Literal["request"] = "request"
    run_id: _Id
    batch_id: _Count
    batches: Annotated[int, Field(ge=1)]
    as_of: _Count
    schema_version: _Id
    ids: Annotated[list[_Id], Field(min_length=1)]

    @classmethod
    def decode(cls, data: bytes) -> ExtractionRequest:
        """:raises MessageError: when ``data`` is not a valid request."""
        request = _validate(cls, data)
        if len(set(request.ids)) != len(request.ids):
            raise MessageError(f"invalid ExtractionRequest: batch {request.batch_id} repeats node ids")
        if request.batch_id >= request.batches:
            raise MessageError(
                f"invalid ExtractionRequest: batch_id must be below batches={request.batches}. "
                f"Got {request.batch_id}"
            )
        return request


class CompletionSignal(_Message):
    """A batch is finished: ``result_messages`` chunks with ``checksum`` precede it, or it failed."""

    kind: Literal["completion"] = "completion"
    run_id: _Id
    batch_id: _Count
    as_of: _Count
    schema_version: _Id
    status: BatchStatus
    accounts: _Count = 0
    transfers: _Count = 0
    result_messages: _Count = 0
    checksum: _Count = 0
    worker_id: str = ""
    attempts: _Count = 1
    error: str | None = None
    timings_ms: dict[str, float] = Field(default_factory=dict)

    @classmethod
    def decode(cls, data: bytes) -> CompletionSignal:
        """:raises MessageError: when ``data`` is not a valid completion signal."""
        return _validate(cls, data)


def _encode_frame(header: BaseModel, payload: bytes) -> bytes:
    head = header.model_dump_json().encode()
    return _FRAME_LENGTH.pack(len(head)) + head + payload


def _split_frame(data: bytes, what: str) -> tuple[bytes, memoryview]:
    """The JSON header and the payload of a binary frame."""
    view = memoryview(data)
    if len(view) < _FRAME_LENGTH.size:
        raise MessageError(f"invalid {what}: {len(view)} bytes is too short for a frame")
    (length,) = _FRAME_LENGTH.unpack_from(view)
    end = _FRAME_LENGTH.size + length
    if end > len(view):
        raise MessageError(f"invalid {what}: header length {length} exceeds the {len(view)}-byte message")
    return bytes(view[_FRAME_LENGTH.size : end]), view[end:]


class _ResultHeader(_Message):
    kind: Literal["result"] = "result"
    run_id: _Id
    batch_id: _Count
    as_of: _Count
    schema_version: _Id
    chunk: _Count
    chunks: Annotated[int, Field(ge=1)]
    part: ResultPart
    rows: _Count
    cols: _Count
    ids_bytes: _Count
    crc: _Count


@dataclass(frozen=True)
class FeatureResult:
    """Rows ``ids`` x ``values`` of one part (node or edge features) of one batch: chunk ``chunk`` of
    ``chunks``. ``crc`` is the CRC-32 of the encoded payload."""

    run_id: str
    batch_id: int
    as_of: int
    schema_version: str
    chunk: int
    chunks: int
    part: ResultPart
    ids: np.ndarray  # str, shape (rows,)
    values: np.ndarray  # float64, shape (rows, cols)
    crc: int

    def encode(self) -> bytes:
        """The binary frame; :raises MessageError: when it would exceed :data:`MAX_MESSAGE_BYTES`."""
        payload = _result_payload(self.ids, self.values)
        id_bytes = len(payload) - self.values.size * 8
        header = _ResultHeader(
            run_id=self.run_id, batch_id=self.batch_id, as_of=self.as_of, schema_version=self.schema_version,
            chunk=self.chunk, chunks=self.chunks, part=self.part, rows=len(self.ids),
            cols=self.values.shape[1], ids_bytes=id_bytes, crc=self.crc,
        )
        data = _encode_frame(header, payload)
        if len(data) > MAX_MESSAGE_BYTES:
            raise MessageError(
                f"FeatureResult batch {self.batch_id} chunk {self.chunk} is {len(data)} bytes; "
                f"must be at most {MAX_MESSAGE_BYTES}"
            )
        return data

    @classmethod
    def decode(cls, data: bytes) -> FeatureResult:
        """:raises MessageError: on a malformed frame, a header/payload mismatch or a bad CRC."""
        head, payload = _split_frame(data, "FeatureResult")
        header = _validate(_ResultHeader, head)
        if header.chunk >= header.chunks:
            raise MessageError(f"invalid FeatureResult: chunk {header.chunk} of {header.chunks}")
        expected = header.ids_bytes + header.rows * header.cols * 8
        if len(payload) != expected:
            raise MessageError(f"invalid FeatureResult: payload is {len(payload)} bytes, header says {expected}")
        if zlib.crc32(payload) != header.crc:
            raise MessageError(f"invalid FeatureResult: CRC mismatch in batch {header.batch_id} chunk {header.chunk}")
        ids = _decode_ids(bytes(payload[: header.ids_bytes]), header.rows)
        values = np.frombuffer(payload[header.ids_bytes :], dtype="<f8").reshape(header.rows, header.cols)
        return cls(
            run_id=header.run_id, batch_id=header.batch_id, as_of=header.as_of, schema_version=header.schema_version,
            chunk=header.chunk, chunks=header.chunks, part=header.part, ids=ids,
            values=values, crc=header.crc,
        )


def _result_payload(ids: np.ndarray, values: np.ndarray) -> bytes:
    """NUL-separated UTF-8 ids followed by the little-endian float64 values, row-major."""
    if len(ids) != len(values):
        raise MessageError(f"{len(ids)} ids but {len(values)} rows of values")
    id_bytes = "\0".join(ids.tolist()).encode()
    if len(ids) and id_bytes.count(b"\0") != len(ids) - 1:
        raise MessageError("ids must not contain NUL characters")
    return id_bytes + np.ascontiguousarray(values, dtype="<f8").tobytes()


def _decode_ids(data: bytes, rows: int) -> np.ndarray:
    ids = data.decode().split("\0") if rows else []
    if len(ids) != rows:
        raise MessageError(f"invalid FeatureResult: {len(ids)} ids for {rows} rows")
    return np.array(ids, dtype=np.str_) if ids else np.array([], dtype="<U1")


def _row_ranges(ids: np.ndarray, cols: int, budget: int) -> list[tuple[int, int]]:
    """Consecutive row ranges whose payload stays within ``budget`` bytes (at least one row each)."""
    if not len(ids):
        return [(0, 0)]
    sizes = np.char.str_len(np.char.encode(ids, "utf-8")) + 1 + cols * 8
    ends = np.cumsum(sizes)
    ranges, start = [], 0
    while start < len(ids):
        base = ends[start - 1] if start else 0
        stop = max(int(np.searchsorted(ends, base + budget, side="right")), start + 1)
        ranges.append((start, stop))
        start = stop
    return ranges


def split_features(
    features: BatchFeatures,
    *,
    run_id: str,
    batch_id: int,
    as_of: int,
    schema_version: str,
    chunk_bytes: int = CHUNK_BYTES,
) -> list[FeatureResult]:
    """Cut a batch's features into :class:`FeatureResult` chunks of at most ``chunk_bytes`` payload.

    The node part always comes first; an empty part still yields one empty chunk, so both parts
    (and their column counts) are always present.
    """
    pieces = []
    for part, ids, values in (
        (ResultPart.NODES, features.node_ids, features.node_values),
        (ResultPart.EDGES, features.tx_ids, features.edge_values),
    ):
        values = np.asarray(values, dtype=np.float64)
        for start, stop in _row_ranges(ids, values.shape[1], chunk_bytes):
            pieces.append((part, ids[start:stop], values[start:stop]))
    return [
        FeatureResult(
            run_id=run_id, batch_id=batch_id, as_of=as_of, schema_version=schema_version, chunk=i, chunks=len(pieces),
            part=part, ids=ids, values=values, crc=zlib.crc32(_result_payload(ids, values)),
        )
        for i, (part, ids, values) in enumerate(pieces)
    ]


def results_checksum(results: Sequence[FeatureResult]) -> int:
    """CRC-32 over the chunks' CRCs in chunk order: equal only for the same rows, cut the same way."""
    ordered = sorted(results, key=lambda r: r.chunk)
    return zlib.crc32(b"".join(r.crc.to_bytes(4, "big") for r in ordered))


def join_features(results: Sequence[FeatureResult], completion: CompletionSignal) -> BatchFeatures:
    """Reassemble a batch from its chunks, checking them against the completion signal.

    :raises MessageError: when a chunk is missing or the counts or checksum disagree.
    """
    where = f"batch {completion.batch_id} of run {completion.run_id}"
    ordered = sorted(results, key=lambda r: r.chunk)
    if [r.chunk for r in ordered] != list(range(completion.result_messages)):
        raise MessageError(
            f"{where}: expected chunks 0..{completion.result_messages - 1}, "
            f"got {[r.chunk for r in ordered]}"
        )
    if results_checksum(ordered) != completion.checksum:
        raise MessageError(f"{where}: checksum mismatch")
    nodes = [r for r in ordered if r.part is ResultPart.NODES]
    edges = [r for r in ordered if r.part is ResultPart.EDGES]
    features = BatchFeatures(
        node_ids=np.concatenate([r.ids for r in nodes]),
        node_values=np.concatenate([r.values for r in nodes]),
        tx_ids=np.concatenate([r.ids for r in edges]),
        edge_values=np.concatenate([r.values for r in edges]),
    )
    if (len(features.node_ids), len(features.tx_ids)) != (completion.accounts, completion.transfers):
        raise MessageError(
            f"{where}: expected {completion.accounts} accounts and {completion.transfers} transfers, "
            f"got {len(features.node_ids)} and {len(features.tx_ids)}"
        )
    return features


class _DeadLetterHeader(_Message):
    kind: Literal["dead-letter"] = "dead-letter"
    reason: Annotated[str, Field(min_length=1)]
    topic: str
    partition: int
    offset: int
    worker_id: str
    run_id: str | None = None
    batch_id: int | None = None
    original_bytes: _Count
    """The length of the original message; larger than the payload when it was truncated."""


@dataclass(frozen=True)
class DeadLetter:
    """A message that could not be processed: the original bytes, why, and where it was read."""

    reason: str
    topic: str
    partition: int
    offset: int
    worker_id: str
    original: bytes
    run_id: str | None = None
    batch_id: int | None = None
    original_bytes: int | None = None

    def encode(self) -> bytes:
        """The binary frame; an original too big to fit is truncated (``original_bytes`` keeps its size)."""
        header = _DeadLetterHeader(
            reason=self.reason[:2000], topic=self.topic, partition=self.partition, offset=self.offset,
            worker_id=self.worker_id, run_id=self.run_id, batch_id=self.batch_id,
            original_bytes=len(self.original) if self.original_bytes is None else self.original_bytes,
        )
        return _encode_frame(header, self.original[: MAX_MESSAGE_BYTES - 20_000])

    @classmethod
    def decode(cls, data: bytes) -> DeadLetter:
        """:raises MessageError: when ``data`` is not a dead-letter frame."""
        head, payload = _split_frame(data, "DeadLetter")
        header = _validate(_DeadLetterHeader, head)
        fields = header.model_dump(exclude={"v", "kind"})
        return cls(original=bytes(payload), **fields)

