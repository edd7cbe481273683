"""The online store against a real Redis: run-scoped layout, tagged-varint records read with their own run's
names, exact round trip, idempotent rewrites, checksums, publication, rollback and retention."""

from __future__ import annotations

import struct
import time
from typing import TYPE_CHECKING

import numpy as np
import pytest
import redis

from fx_workers.engine.batch import BatchFeatures
from fx_workers.engine.catalogue import EDGE_FEATURE_NAMES, NODE_FEATURE_NAMES
from fx_workers.store.bulk import encode_rows
from fx_workers.store.keys import RedisKeys
from fx_workers.store.reader import FeatureReader
from fx_workers.store.records import schema_fields
from fx_workers.store.runs import RunError, RunRegistry, RunStatus
from fx_workers.store.writer import BatchWriter, Checksum, features_checksum

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

PREFIX = "fxtest-store"
KEYS = RedisKeys(PREFIX)
HOSTILE = ["a", "b:c", "ü", "{x}", "*", "it's \"quoted\"", "x') DETACH DELETE n //"]


@pytest.fixture
def client(redis_client: redis.Redis) -> Iterator[redis.Redis]:
    yield redis_client
    for key in redis_client.scan_iter(match=f"{PREFIX}:*"):
        redis_client.delete(key)


def features(seed: int = 5) -> BatchFeatures:
    rng = np.random.default_rng(seed)
    node_values = rng.normal(size=(len(HOSTILE), len(NODE_FEATURE_NAMES))) * 1e6
    node_values[0, 0] = 0.1 + 0.2  # the shortest repr must still round-trip
    edge_values = rng.random((2, len(EDGE_FEATURE_NAMES)))
    edge_values[1, :4] = [0.0, 1.0, 300.0, -0.0]  # each code: +0.0, uint8, varint, float64
    return BatchFeatures(np.array(HOSTILE), node_values, np.array(["t1", "t:2"]), edge_values)


def run(registry: RunRegistry, run_id: str, batch: BatchFeatures | None = None, promote: bool = True,
        names: tuple[Sequence[str], Sequence[str]] = (NODE_FEATURE_NAMES, EDGE_FEATURE_NAMES)) -> None:
    registry.create(run_id, {"as_of": 123, "schema": "s1", "plan": "0" * 16, "batches": 1,
                             "accounts": len(HOSTILE), **schema_fields(*names)})
    BatchWriter(registry.client, KEYS.of_run(run_id)).write(batch or features())
    if promote:
        registry.update(run_id, {"status": RunStatus.VERIFIED})
        registry.promote(run_id)


def test_layout_and_exact_round_trip(client: redis.Redis) -> None:
    batch, registry = features(), RunRegistry(client, KEYS)
    run(registry, "r1", batch)
    codes = [0, 1, 2] + [3] * (len(EDGE_FEATURE_NAMES) - 3)  # the varint (300 << 1) after the fixed widths
    header = bytes(sum(c << 2 * j for j, c in enumerate(codes[i : i + 4])) for i in range(0, len(codes), 4))
    floats = batch.edge_values[1, 3:].tolist()  # no per-record metadata: it is in the manifest
    assert client.get(f"{PREFIX}:r1:e:t:2") == header + struct.pack(f"<B{len(floats)}d", 1, *floats) + b"\xd8\x04"
    assert client.get(f"{PREFIX}:r1:n:b:c") == encode_rows(batch.node_values[1:2]).rows()[0]
    reader = FeatureReader(client, KEYS)
    assert np.array_equal(reader.node_matrix(HOSTILE), batch.node_values)
    edge = reader.edges(["t:2", "missing"])
    assert edge[1] is None and [edge[0][name] for name in EDGE_FEATURE_NAMES] == batch.edge_values[1].tolist()
    assert (edge[0]["_run_id"], edge[0]["_as_of"], edge[0]["_schema"]) == ("r1", "123", "s1")
    assert np.isnan(reader.node_matrix(["nobody"])).all()


def test_a_record_is_read_with_its_own_runs_names(client: redis.Redis, tmp_path) -> None:
    """A run written by another catalogue (other names, another order, another count) is read by its names."""
    from fx_workers.tools.export import export_run

    registry = RunRegistry(client, KEYS)
    old_nodes, old_edges = ["zeta", "out_count", "alpha"], ["pair_count"]
    old = BatchFeatures(np.array(["a", "b:c"]), np.array([[1.5, 2.0, -0.25], [3.0, 0.1 + 0.2, 1e300]]),
                        np.array(["t1"]), np.array([[7.0]]))
    run(registry, "old", old, names=(old_nodes, old_edges))
    run(registry, "new", features(), promote=False)
    reader = FeatureReader(client, KEYS, "old")
    [a, bc] = reader.nodes(["a", "b:c"])
    assert {k: v for k, v in a.items() if not k.startswith("_")} == {"zeta": 1.5, "out_count": 2.0, "alpha": -0.25}
    assert (bc["out_count"], bc["alpha"]) == (0.1 + 0.2, 1e300)
    assert reader.edges(["t1"])[0]["pair_count"] == 7.0
    assert np.array_equal(reader.node_matrix(["b:c"]), old.node_values[1:])
    assert FeatureReader(client, KEYS, "new").nodes(["a"])[0]["out_count"] == features().node_values[0, 0]
    client.set(KEYS.of_run("old").plan_batch(0), '["a", "b:c"]')
    exported = tmp_path / "old.csv"
    export_run(reader, exported)
    assert exported.read_text().splitlines() == ["account_id,zeta,out_count,alpha", "a,1.5,2.0,-0.25",
                                                 "b:c,3.0,0.30000000000000004,1e+300"]

    registry.create("legacy", {"as_of": 1, "schema": "s0", "plan": "0" * 16, "batches": 0, "accounts": 0})
    with pytest.raises(RunError, match="run legacy has no tagged-varint record schema"):
        FeatureReader(client, KEYS, "legacy").nodes(["a"])


def test_a_reader_needs_a_published_run(client: redis.Redis) -> None:
    with pytest.raises(RunError, match="no published run yet"):
        FeatureReader(client, KEYS).nodes(["a"])
    with pytest.raises(RunError, match="run zz does not exist"):
        FeatureReader(client, KEYS, "zz").nodes(["a"])


def test_rewrite_is_byte_identical_and_the_checksum_is_of_what_is_stored(client: redis.Redis) -> None:
    batch, writer = features(), BatchWriter(client, KEYS.of_run("r1"))
    first_checksum = writer.write(batch)
    first = {k: client.get(k) for k in client.scan_iter(match=f"{PREFIX}:*")}
    assert writer.write(batch) == first_checksum == features_checksum(batch)
    assert {k: client.get(k) for k in client.scan_iter(match=f"{PREFIX}:*")} == first

    reader = FeatureReader(client, KEYS, "r1")
    reread = Checksum()
    for key_of, ids in ((KEYS.of_run("r1").node, HOSTILE), (KEYS.of_run("r1").edge, ["t1", "t:2"])):
        reread.add_part(ids, list(reader.raw(key_of, ids)))
    assert reread.hexdigest() == first_checksum
    assert features_checksum(features(seed=6)) != first_checksum
    client.delete(KEYS.of_run("r1").edge("t1"))
    lost = Checksum()
    for key_of, ids in ((KEYS.of_run("r1").node, HOSTILE), (KEYS.of_run("r1").edge, ["t1", "t:2"])):
        lost.add_part(ids, list(reader.raw(key_of, ids)))
    assert lost.hexdigest() != first_checksum


def test_a_key_of_another_type_is_overwritten_and_otherwise_reads_as_absent(client: redis.Redis) -> None:
    registry = RunRegistry(client, KEYS)
    client.hset(KEYS.of_run("r1").node("a"), "out_count", "1.0")  # a record of the hash layout
    run(registry, "r1")
    assert FeatureReader(client, KEYS).nodes(["a"])[0]["out_count"] == features().node_values[0, 0]
    client.delete(KEYS.of_run("r1").node("a"))
    client.hset(KEYS.of_run("r1").node("a"), "out_count", "1.0")
    assert FeatureReader(client, KEYS).nodes(["a", "b:c"])[0] is None  # MGET gives nil for a key of another type


def test_only_a_verified_run_is_published_and_rollback_is_one_write(client: redis.Redis) -> None:
    registry = RunRegistry(client, KEYS)
    run(registry, "r1", features(1))
    run(registry, "r2", features(2), promote=False)
    with pytest.raises(RunError, match="run r2 is running"):
        registry.promote("r2")
    with pytest.raises(RunError, match="does not exist"):
        registry.promote("nope")
    registry.update("r2", {"status": RunStatus.VERIFIED})
    registry.promote("r2")
    reader = FeatureReader(client, KEYS)
    assert reader.nodes(["a"])[0]["_run_id"] == "r2"
    registry.promote("r1")
    assert reader.nodes(["a"])[0] == FeatureReader(client, KEYS, "r1").nodes(["a"])[0]
    assert reader.nodes(["a"])[0]["out_count"] == features(1).node_values[0, 0]
    registry.update("r2", {"encoding": "tagged-le"})  # as an older fx wrote it
    with pytest.raises(RunError, match="run r2 has no tagged-varint record schema"):
        registry.promote("r2")  # readers would refuse every record of it
    assert registry.latest() == "r1"


def test_retention_keeps_the_live_and_the_last_published_runs(client: redis.Redis) -> None:
    registry = RunRegistry(client, KEYS)
    for run_id in ("r1", "r2", "r3"):
        run(registry, run_id)
        time.sleep(0.01)
    run(registry, "failed", promote=False)
    registry.update("failed", {"status": RunStatus.FAILED})
    run(registry, "running", promote=False)
    assert sorted(registry.retire(keep=2, stale_seconds=3600)) == ["failed", "r1"]
    namespaces = {k.decode().split(":")[1] for k in client.scan_iter(match=f"{PREFIX}:*")} - {"run", "runs", "latest"}
    assert namespaces == {"r2", "r3", "running"}
    assert [(r.run_id, r.status) for r in registry.list()] == [
        ("running", "running"), ("failed", "failed (deleted)"), ("r3", "verified"), ("r2", "verified"),
        ("r1", "verified (deleted)")]
    with pytest.raises(RunError, match="is verified and deleted"):
        registry.promote("r1")
    assert registry.retire(keep=1, stale_seconds=0) == ["running", "r2"]
    assert registry.latest() == "r3"
