"""The Redis sink and reader against a real Redis: layout, exact round trip, idempotence."""

from __future__ import annotations

import numpy as np
import pytest
import redis

from fx_workers.config import load_settings
from fx_workers.engine.batch import BatchFeatures
from fx_workers.engine.features import EDGE_FEATURE_NAMES, NODE_FEATURE_NAMES
from fx_workers.sink import FeatureReader, RedisSink, open_redis
from fx_workers.store.keys import RedisKeys

PREFIX = "fxtest-sink"


@pytest.fixture
def client() -> redis.Redis:
    client = open_redis(load_settings().redis)
    yield client
    for key in client.scan_iter(match=f"{PREFIX}:*"):
        client.delete(key)


def features() -> BatchFeatures:
    rng = np.random.default_rng(5)
    node_values = rng.normal(size=(3, len(NODE_FEATURE_NAMES))) * 1e6
    node_values[0, 0] = 0.1 + 0.2  # shortest repr must still round-trip
    return BatchFeatures(np.array(["a", "b:c", "ü"]), node_values,
                         np.array(["t1", "t2"]), rng.random((2, len(EDGE_FEATURE_NAMES))))


def test_layout_and_exact_round_trip(client: redis.Redis) -> None:
    keys, batch = RedisKeys(PREFIX), features()
    RedisSink(client, keys).write(batch, run_id="r1", as_of=123, schema="s1")
    stored = client.hgetall(f"{PREFIX}:node_features:b:c")
    assert stored[b"_run_id"] == b"r1" and stored[b"_as_of"] == b"123" and stored[b"_schema"] == b"s1"
    assert stored[NODE_FEATURE_NAMES[0].encode()] == repr(float(batch.node_values[1, 0])).encode()
    assert len(stored) == len(NODE_FEATURE_NAMES) + 3
    reader = FeatureReader(client, keys)
    assert np.array_equal(reader.node_matrix(["a", "b:c", "ü"]), batch.node_values)
    edge = reader.edges(["t2", "missing"])
    assert edge[1] is None
    assert [edge[0][name] for name in EDGE_FEATURE_NAMES] == batch.edge_values[1].tolist()
    assert np.isnan(reader.node_matrix(["nobody"])).all()


def test_rewrite_is_byte_identical_apart_from_run_metadata(client: redis.Redis) -> None:
    keys, batch = RedisKeys(PREFIX), features()
    sink = RedisSink(client, keys)
    sink.write(batch, run_id="r1", as_of=123, schema="s1")
    first = {k: client.hgetall(k) for k in client.scan_iter(match=f"{PREFIX}:*")}
    sink.write(batch, run_id="r2", as_of=123, schema="s1")
    second = {k: client.hgetall(k) for k in client.scan_iter(match=f"{PREFIX}:*")}
    for record in (*first.values(), *second.values()):
        record.pop(b"_run_id")
    assert first == second


def test_an_error_reply_raises_and_leaves_the_connection_usable(client: redis.Redis) -> None:
    keys, batch = RedisKeys(PREFIX), features()
    client.set(keys.node("a"), "a string, not a hash")
    with pytest.raises(redis.ResponseError):
        RedisSink(client, keys).write(batch, run_id="r1", as_of=1, schema="s")
    assert client.ping()
