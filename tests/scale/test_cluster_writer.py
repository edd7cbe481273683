"""The batch writer on a Redis Cluster: records packed per master on redis-py's node connections, each
on its slot's master; a record refused by a master whose slot map is stale (``MOVED``) is written again
through the cluster client; readers get every value exactly."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
import pytest

from fx_workers.config import load_settings
from fx_workers.engine.batch import BatchFeatures
from fx_workers.store.bulk import encode_rows
from fx_workers.store.client import open_redis
from fx_workers.store.keys import RedisKeys
from fx_workers.store.reader import FeatureReader
from fx_workers.store.records import schema_fields
from fx_workers.store.runs import RunRegistry
from fx_workers.store.writer import BatchWriter, features_checksum
from ops.fixtures import redis_cluster

if TYPE_CHECKING:
    from collections.abc import Iterator

    from redis.cluster import RedisCluster

KEYS = RedisKeys("fxtest-cw")
NAMES = (["n0", "n1", "n2"], ["e0"])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    with redis_cluster(tmp_path_factory.mktemp("cluster")) as running:
        yield open_redis(load_settings(environ={**os.environ, **running.env}).redis)


def batch(accounts: int = 3000) -> BatchFeatures:
    rng = np.random.default_rng(9)
    ids = np.array([f"A{i}" if i % 100 else f"A{i}:{{x}}" for i in range(accounts)])  # a brace is a hash tag
    return BatchFeatures(ids, rng.normal(size=(accounts, 3)) * 1e9, np.array(["t:1", "t:2"]), rng.random((2, 1)))


def test_records_land_on_their_masters_and_read_back_exactly(cluster: RedisCluster) -> None:
    registry, features = RunRegistry(cluster, KEYS), batch()
    registry.create("c1", {"as_of": 1, "schema": "s", "plan": "0" * 16, "batches": 1, "accounts": 3000,
                           **schema_fields(*NAMES)})
    assert BatchWriter(cluster, KEYS.of_run("c1")).write(features) == features_checksum(features)
    reader = FeatureReader(cluster, KEYS, "c1")
    assert np.array_equal(reader.node_matrix(features.node_ids.tolist()), features.node_values)
    assert [r["e0"] for r in reader.edges(["t:1", "t:2"])] == features.edge_values[:, 0].tolist()
    per_master = [sum(1 for _ in node.redis_connection.scan_iter(match=KEYS.of_run("c1").pattern, count=5000))
                  for node in cluster.get_primaries()]
    assert len(per_master) == 3 and min(per_master) > 0 and sum(per_master) == 3002


def test_a_record_sent_to_the_wrong_master_is_written_again_through_the_cluster_client(
        cluster: RedisCluster, caplog: pytest.LogCaptureFixture) -> None:
    features = batch(200)
    key = KEYS.of_run("c2").node(str(features.node_ids[0]))
    manager = cluster.nodes_manager
    slot = cluster.keyslot(key)
    owner = manager.slots_cache[slot]
    wrong = next(node for node in cluster.get_primaries() if node.name != owner[0].name)
    manager.slots_cache[slot] = [wrong]  # a stale slot map: that master answers MOVED
    try:
        with caplog.at_level("INFO", logger="fx_workers.store.writer"):
            BatchWriter(cluster, KEYS.of_run("c2")).write(features)
    finally:
        manager.slots_cache[slot] = owner
    assert "records refused or lost by their master" in caplog.text
    assert owner[0].redis_connection.get(key) == encode_rows(features.node_values[:1]).rows()[0]
