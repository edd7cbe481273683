from __future__ import annotations

import zlib
from types import SimpleNamespace

import numpy as np
import pytest

from fx_workers.config import load_settings
from fx_workers.engine.batch import BatchFeatures
from fx_workers.engine.features import EDGE_FEATURE_NAMES, NODE_FEATURE_NAMES, SCHEMA_VERSION
from fx_workers.messages import (
    BatchStatus,
    CompletionSignal,
    MessageKind,
    kafka_headers,
    results_checksum,
    split_features,
)
from fx_workers.pipeline import (
    PipelineError,
    Plan,
    aggregate_run,
    balanced_batches,
    batches_digest,
    missing_topics,
    request_key,
)


@pytest.mark.parametrize("partitions", [1, 3, 4, 7])
def test_request_keys_go_round_robin_under_the_crc32_partitioner(partitions: int) -> None:
    keys = [request_key(batch_id, partitions) for batch_id in range(40)]
    assert [zlib.crc32(key) % partitions for key in keys] == [b % partitions for b in range(40)]
    assert len(set(keys)) == len(keys)


@pytest.mark.parametrize(("accounts", "batch_size", "count"), [(100, 30, 4), (11, 3, 4), (13, 10, 4), (1, 5, 1)])
def test_batches_come_in_multiples_of_the_partitions_when_they_can(accounts: int, batch_size: int,
                                                                   count: int) -> None:
    ids = np.array([f"a{i:03d}" for i in range(accounts)])
    costs = np.arange(accounts)[::-1]
    batches = balanced_batches(ids, costs, batch_size, partitions=4)
    assert len(batches) == count
    assert max(len(b) for b in batches) <= batch_size
    assert sorted(i for b in batches for i in b) == ids.tolist()


def test_digest_is_order_sensitive() -> None:
    assert batches_digest([["a", "b"], ["c"]]) == batches_digest([["a", "b"], ["c"]])
    assert batches_digest([["a", "b"], ["c"]]) != batches_digest([["c"], ["a", "b"]])
    assert batches_digest([["a", "b"]]) != batches_digest([["a"], ["b"]])


def fake_admin(partitions: dict[str, int]) -> SimpleNamespace:
    topics = {name: SimpleNamespace(partitions=dict.fromkeys(range(n))) for name, n in partitions.items()}
    return SimpleNamespace(list_topics=lambda timeout: SimpleNamespace(topics=topics))


def test_missing_topics_are_created_and_too_few_partitions_refused() -> None:
    settings = load_settings()
    topics = settings.kafka.topics
    assert missing_topics(fake_admin({topics.requests: 4}), settings) == [
        (topics.results, 4, -1), (topics.dead_letter, 1, -1)
    ]
    with pytest.raises(PipelineError, match=r"must have at least 4 partitions .* Got 2"):
        missing_topics(fake_admin({topics.requests: 2}), settings)


class FakeMessage:
    def __init__(self, offset: int, kind: MessageKind, value: bytes) -> None:
        self._offset, self._value = offset, value
        self._headers = kafka_headers(kind, "r")

    def error(self) -> None:
        return None

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def headers(self) -> list[tuple[str, bytes]]:
        return self._headers

    def value(self) -> bytes:
        return self._value


class OnePartitionLog:
    """A results topic of one partition holding ``messages``, read the way ``read_run`` reads."""

    def __init__(self, messages: list[tuple[MessageKind, bytes]]) -> None:
        self.messages = [FakeMessage(i, kind, value) for i, (kind, value) in enumerate(messages)]

    def list_topics(self, topic: str, timeout: float) -> SimpleNamespace:
        return SimpleNamespace(topics={topic: SimpleNamespace(error=None, partitions={0: None})})

    def get_watermark_offsets(self, partition, timeout: float, cached: bool) -> tuple[int, int]:
        return 0, len(self.messages)

    def incremental_assign(self, partitions: list) -> None: ...

    def incremental_unassign(self, partitions: list) -> None: ...

    def consume(self, num_messages: int, timeout: float) -> list[FakeMessage]:
        batch, self.messages = self.messages, []
        return batch


class RecordingSink:
    def __init__(self) -> None:
        self.written: list[BatchFeatures] = []

    def write(self, features: BatchFeatures, *, run_id: str, as_of: int, schema: str) -> None:
        self.written.append(features)


def test_aggregation_skips_an_incomplete_copy_and_writes_the_whole_one_once() -> None:
    batch = BatchFeatures(np.array(["a", "b"]), np.ones((2, len(NODE_FEATURE_NAMES))),
                          np.array(["t"]), np.ones((1, len(EDGE_FEATURE_NAMES))))
    chunks = split_features(batch, run_id="r", batch_id=0, as_of=1, schema_version=SCHEMA_VERSION)
    completion = CompletionSignal(run_id="r", batch_id=0, as_of=1, schema_version=SCHEMA_VERSION,
                                  status=BatchStatus.OK, accounts=2, transfers=1, result_messages=len(chunks),
                                  checksum=results_checksum(chunks)).encode()
    whole = [*((MessageKind.RESULT, c.encode()) for c in chunks), (MessageKind.COMPLETION, completion)]
    lost_first_chunk = whole[1:]
    sink = RecordingSink()
    plan = Plan(run_id="r", as_of=1, schema_version=SCHEMA_VERSION, batch_size=2, batches=1, accounts=2,
                cost=2, digest="d", partitions=1, start_offsets={"0": 0}).to_dict()
    summary = aggregate_run(OnePartitionLog(lost_first_chunk + whole + whole), sink, load_settings(), plan)
    assert (summary.batch_ids, summary.incomplete, summary.accounts) == ([0], 1, 2)
    assert summary.duplicates == len(whole)
    assert len(sink.written) == 1 and sink.written[0].node_ids.tolist() == ["a", "b"]
