"""The Kafka protocol shared by the DAG, the trigger and the workers: what travels, and how to read it.

Every message is versioned (``v``) and validated on receipt; anything malformed raises the one
:class:`MessageError`. Pure pydantic and the standard library: the Airflow plugin imports this
module, so it must stay light (no numpy, no Kafka client).

- :class:`ExtractionRequest` (JSON): one per batch of a plan, on the requests topic.
- :class:`CompletionSignal` (JSON): one per finished batch attempt, on the results topic. Feature
  values do not travel on Kafka: the worker has written them to Redis, and the signal proves what
  it wrote (record counts, a checksum) and summarises it (mergeable per-feature statistics).
- :class:`DeadLetter` (binary frame): what could not be processed, the reason and where it came from.

Kafka headers (:data:`HEADER_KIND`, :data:`HEADER_RUN`, :data:`HEADER_PLAN`, :data:`HEADER_BATCH`,
:data:`HEADER_STATUS`) let readers such as the trigger count signals without decoding them.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

VERSION = 2
MAX_MESSAGE_BYTES = 1_000_000
"""Kafka's default ``message.max.bytes``; every encoded message must stay below it."""
MAX_IDS = 50_000
"""Accounts in one request: twice the largest batch size the DAG accepts, so a plan always fits."""
MAX_ID_LENGTH = 1024
"""Characters in one account id; longer ids are rejected before they reach Neo4j."""
HEADER_KIND = "fx-kind"
HEADER_RUN = "fx-run"
HEADER_PLAN = "fx-plan"
HEADER_BATCH = "fx-batch"
HEADER_STATUS = "fx-status"
READER_CONFIG = {"group.id": "fx-readers", "enable.auto.commit": False, "enable.auto.offset.store": False,
                 "auto.offset.reset": "earliest"}
"""A consumer that reads by ``assign()`` from recorded offsets: it never joins a group or commits."""
PRODUCER_CONFIG = {"acks": "all", "enable.idempotence": True}
"""Every fx producer's settings (the workers', and the DAG's through the ``fx_kafka`` connection): a
message is acknowledged once every in-sync replica has it (at least 2 of 3 with three brokers, so a
broker loss loses none), and a send retried after a lost acknowledgement is not written twice."""
_FRAME_LENGTH = struct.Struct(">I")


class MessageError(ValueError):
    """A message could not be encoded, decoded or validated; the text says what and why."""


class MessageKind(StrEnum):
    REQUEST = "request"
    COMPLETION = "completion"
    DEAD_LETTER = "dead-letter"


class BatchStatus(StrEnum):
    OK = "ok"
    FAILED = "failed"


def header_value(headers: Sequence[tuple[str, bytes | None]] | None, name: str) -> str | None:
    """A header of a consumed message as text, or ``None`` when it is absent."""
    for key, value in headers or ():
        if key == name and value is not None:
            return value.decode(errors="replace")
    return None


_Id = Annotated[str, Field(min_length=1, max_length=MAX_ID_LENGTH)]
_Count = Annotated[int, Field(ge=0)]
_Fingerprint = Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, ser_json_inf_nan="constants")

    v: Literal[2] = VERSION

    def encode(self) -> bytes:
        data = self.model_dump_json().encode()
        if len(data) > MAX_MESSAGE_BYTES:
            raise MessageError(f"{type(self).__name__} is {len(data)} bytes; must be at most {MAX_MESSAGE_BYTES}")
        return data


_M = TypeVar("_M", bound=BaseModel)


def _validate(model: type[_M], data: bytes) -> _M:
    """Validate JSON as ``model``, raising :class:`MessageError` that names each bad field."""
    try:
        return model.model_validate_json(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'message'}: {err['msg']}"
            for err in exc.errors(include_input=False)[:5]
        )
        raise MessageError(f"invalid {model.__name__}: {problems}") from None


class ExtractionRequest(_Message):
    """Compute the features of ``ids`` as of ``as_of`` with catalogue ``schema_version``, for batch
    ``batch_id`` of plan ``plan`` of run ``run_id``."""

    kind: Literal["request"] = "request"
    run_id: _Id
    plan: _Fingerprint
    batch_id: _Count
    batches: Annotated[int, Field(ge=1)]
    as_of: _Count
    schema_version: _Id
    ids: Annotated[list[_Id], Field(min_length=1, max_length=MAX_IDS)]

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.batch_id >= self.batches:
            raise ValueError(f"batch_id must be below batches={self.batches}. Got {self.batch_id}")
        if len(set(self.ids)) != len(self.ids):
            raise ValueError(f"batch {self.batch_id} repeats account ids")
        return self

    @classmethod
    def decode(cls, data: bytes) -> ExtractionRequest:
        """:raises MessageError: when ``data`` is not a valid request."""
        return _validate(cls, data)


class PartStats(BaseModel):
    """Mergeable statistics of one part (node or edge records) of a batch, one list entry per feature
    in catalogue order. ``nan`` counts non-finite values; the others are over the finite ones
    (``min``/``max`` are ``None`` when there are none). ``hist`` counts values per bin of the
    engine's fixed bin edges, the same for every run, so runs can be compared."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, ser_json_inf_nan="constants")

    rows: _Count
    nan: list[_Count]
    min: list[float | None]
    max: list[float | None]
    sum: list[float]
    sumsq: list[float]
    hist: list[list[_Count]]

    @model_validator(mode="after")
    def _aligned(self) -> Self:
        n = len(self.nan)
        if not len(self.min) == len(self.max) == len(self.sum) == len(self.sumsq) == len(self.hist) == n:
            raise ValueError("nan, min, max, sum, sumsq and hist must have one entry per feature")
        if len({len(h) for h in self.hist}) > 1:
            raise ValueError("every feature's histogram must have the same bins")
        return self


class CompletionSignal(_Message):
    """Attempt ``attempt`` of batch ``batch_id`` finished: on ``ok`` the worker wrote ``accounts``
    node and ``transfers`` edge records with content ``checksum`` into the run's namespace."""

    kind: Literal["completion"] = "completion"
    run_id: _Id
    plan: _Fingerprint
    batch_id: _Count
    status: BatchStatus
    attempt: Annotated[int, Field(ge=1)] = 1
    worker_id: Annotated[str, Field(max_length=256)] = ""
    accounts: _Count = 0
    transfers: _Count = 0
    checksum: Annotated[str, Field(pattern=r"^([0-9a-f]{32})?$")] = ""
    nodes: PartStats | None = None
    edges: PartStats | None = None
    error: Annotated[str, Field(max_length=4000)] | None = None
    transient: bool = False
    """On ``failed``: the batch failed only through an outage that outlasted ``workers.retry_seconds``
    (a service down or restarting), so the DAG sends it again while its deadline allows."""
    timings_ms: dict[str, float] = Field(default_factory=dict)
    """On ``ok``, the worker's own milliseconds by part: ``extract`` the batch's read (timed on the thread
    that read it), ``write`` and ``stats``; and, since the read ahead, ``extract_wait``: how long the
    worker's loop waited for that read (less than ``extract`` when it ran while another batch was written).
    Every name is optional to a consumer: a signal of an older worker has no ``extract_wait``."""

    @model_validator(mode="after")
    def _proof(self) -> Self:
        if self.status is BatchStatus.OK and (not self.checksum or self.nodes is None or self.edges is None):
            raise ValueError("an ok signal must carry a checksum and the statistics of both parts")
        if self.nodes is not None and self.nodes.rows != self.accounts:
            raise ValueError(f"nodes.rows must equal accounts={self.accounts}. Got {self.nodes.rows}")
        if self.edges is not None and self.edges.rows != self.transfers:
            raise ValueError(f"edges.rows must equal transfers={self.transfers}. Got {self.edges.rows}")
        return self

    @classmethod
    def decode(cls, data: bytes) -> CompletionSignal:
        """:raises MessageError: when ``data`` is not a valid completion signal."""
        return _validate(cls, data)

    def headers(self) -> list[tuple[str, bytes]]:
        return [(HEADER_KIND, MessageKind.COMPLETION.encode()), (HEADER_RUN, self.run_id.encode()),
                (HEADER_PLAN, self.plan.encode()), (HEADER_BATCH, str(self.batch_id).encode()),
                (HEADER_STATUS, self.status.encode())]


def _encode_frame(header: BaseModel, payload: bytes) -> bytes:
    head = header.model_dump_json().encode()
    return _FRAME_LENGTH.pack(len(head)) + head + payload


def _split_frame(data: bytes, what: str) -> tuple[bytes, bytes]:
    """The JSON header and the payload of a binary frame."""
    if len(data) < _FRAME_LENGTH.size:
        raise MessageError(f"invalid {what}: {len(data)} bytes is too short for a frame")
    (length,) = _FRAME_LENGTH.unpack_from(data)
    end = _FRAME_LENGTH.size + length
    if end > len(data):
        raise MessageError(f"invalid {what}: header length {length} exceeds the {len(data)}-byte message")
    return data[_FRAME_LENGTH.size : end], data[end:]


class DeadLetter(_Message):
    """A message that could not be processed: why, where it was read, and (as the frame's payload,
    truncated to fit) the original bytes."""

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

    def frame(self, original: bytes) -> bytes:
        """The binary frame: this header, then as much of ``original`` as fits in one message."""
        header = self.model_copy(update={"reason": self.reason[:2000]})
        return _encode_frame(header, original[: MAX_MESSAGE_BYTES - 20_000])

    @classmethod
    def decode(cls, data: bytes) -> tuple[DeadLetter, bytes]:
        """The header and the (possibly truncated) original. :raises MessageError: when not a frame."""
        head, payload = _split_frame(data, "DeadLetter")
        return _validate(cls, head), payload
