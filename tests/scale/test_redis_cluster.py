"""fx_extract with a Redis Cluster as the online store: readers get what a standalone Redis gives them,
value for value, with the records spread over every master; and a master killed mid-run either leaves
the run right or fails it loudly, and a rerun is right."""

from __future__ import annotations

import signal
import subprocess
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psutil
import pytest

from fx_workers.steps.local import run_local
from fx_workers.store.client import open_redis
from fx_workers.store.reader import META_RUN_ID, FeatureReader
from fx_workers.tools.doctor import redis_checks
from fx_workers.tools.export import export_run
from fx_workers.worker import check_health
from ops.fixtures import AS_OF, redis_cluster
from ops.process import Layout, running
from tests.integration.pipeline_env import Workers, dags_test, migrated_airflow

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    import redis
    from redis.cluster import RedisCluster

    from ops.fixtures import OwnCluster, Slice

BATCH_SIZE = 40
"""A 5,000-transfer graph in about 16 batches: a kill lands mid-run."""
Values = dict[str, dict[str, str]]


def read_all(reader: FeatureReader, accounts: list[str], transfers: list[str]) -> tuple[Values, Values]:
    """Every account's and transfer's features as readers get them (``repr``, so NaN equals NaN), without
    the run id, which differs between two runs of the same graph and as_of."""
    return _text(accounts, reader.nodes(accounts)), _text(transfers, reader.edges(transfers))


def _text(ids: list[str], records: list) -> Values:
    return {record_id: {name: repr(value) for name, value in record.items() if name != META_RUN_ID}
            for record_id, record in zip(ids, records, strict=True) if record is not None}


@pytest.fixture(scope="module")
def standalone(piece: Slice, redis_client: redis.Redis) -> tuple[list[str], list[str], Values, Values]:
    """The slice's graph extracted into the shared standalone Redis: the ids and what readers get."""
    summary = run_local(piece.settings, as_of=AS_OF)
    assert summary.verification.ok, str(summary.verification)
    records = piece.snapshot(redis_client, summary.run_id)
    accounts = sorted(key.split(":", 1)[1] for key in records if key.startswith("n:"))
    transfers = sorted(key.split(":", 1)[1] for key in records if key.startswith("e:"))
    nodes, edges = read_all(FeatureReader(redis_client, piece.keys, summary.run_id), accounts, transfers)
    assert len(nodes) == len(accounts) > 0 and len(edges) == len(transfers) > 0
    return accounts, transfers, nodes, edges


@dataclass(frozen=True)
class ClusterRun:
    cluster: OwnCluster
    piece: Slice
    """The module's slice with its online store on the cluster."""
    env: dict[str, str]
    """``airflow dags test``'s environment: the slice's, with an Airflow metadata database of its own."""
    workers: Workers


@pytest.fixture
def on_cluster(piece: Slice, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ClusterRun]:
    """A cluster (``request.param`` replicas per master), the slice on it, its own Airflow, 2 workers."""
    with redis_cluster(tmp_path / "cluster", request.param) as cluster:
        moved = cluster.slice_of(piece)
        workers = Workers(moved, tmp_path)
        try:
            yield ClusterRun(cluster, moved, migrated_airflow(moved, tmp_path / "airflow"), workers)
        finally:
            workers.stop()


def finish(proc: subprocess.Popen[str]) -> tuple[int, str]:
    output, _ = proc.communicate(timeout=600)
    return proc.returncode, output


def assert_reads_like(client: RedisCluster, moved: Slice, standalone: tuple) -> str:
    """Readers of the cluster get exactly the standalone values; returns the live run's id."""
    accounts, transfers, nodes, edges = standalone
    reader = FeatureReader(client, moved.keys)
    run_id, _ = reader.resolve()
    got_nodes, got_edges = read_all(reader, accounts, transfers)
    assert got_nodes == nodes
    assert got_edges == edges
    return run_id


def keys_per_master(client: RedisCluster, pattern: str) -> dict[str, int]:
    """How many keys matching ``pattern`` each master holds (SCAN on each node alone)."""
    return {node.name: sum(1 for _ in node.redis_connection.scan_iter(match=pattern, count=5000))
            for node in client.get_primaries()}


@pytest.mark.parametrize("on_cluster", [0], indirect=True, ids=["3 masters"])
def test_a_run_on_a_cluster_reads_like_standalone(on_cluster: ClusterRun, standalone: tuple, tmp_path: Path) -> None:
    doctor = next(redis_checks(on_cluster.piece.settings))
    assert doctor.ok and "cluster_state ok, 16384 slots covered by 3 masters" in doctor.detail, doctor

    started = time.monotonic()
    code, output = finish(dags_test(on_cluster.env, BATCH_SIZE))
    seconds = time.monotonic() - started
    assert code == 0, output[-5000:]
    moved = on_cluster.piece
    client = open_redis(moved.settings.redis)
    run_id = assert_reads_like(client, moved, standalone)

    accounts, transfers = len(standalone[0]), len(standalone[1])
    spread = keys_per_master(client, moved.keys.of_run(run_id).pattern)
    manifest = moved.registry(client).manifest(run_id)
    print(f"cluster run: {accounts} accounts, {transfers} transfers in {seconds:.1f}s; keys per master {spread}")
    assert len(spread) == 3 and all(count > 0 for count in spread.values()), spread
    assert sum(spread.values()) == accounts + transfers + int(manifest["batches"])  # plan keys included
    assert manifest["topology"].count("=") == 3

    assert all(check_health(moved.settings, str(worker))[0] for worker in on_cluster.workers.procs)  # health keys
    exported = export_run(FeatureReader(client, moved.keys), tmp_path / "edges.csv", edges=True)
    assert exported.rows == transfers  # SCAN over every master found each transfer once

    registry = moved.registry(client)
    assert [run.run_id for run in registry.list() if run.latest] == [run_id]  # fx runs list
    assert registry.delete(run_id) == sum(spread.values())  # retention's SCAN + UNLINK, on every master
    assert set(keys_per_master(client, moved.keys.of_run(run_id).pattern).values()) == {0}


@pytest.mark.parametrize("on_cluster", [1], indirect=True, ids=["3 masters, 3 replicas"])
def test_a_master_killed_mid_run_ends_right_or_fails_loudly(on_cluster: ClusterRun, standalone: tuple) -> None:
    moved, env = on_cluster.piece, on_cluster.env
    client = open_redis(moved.settings.redis)
    victim = client.get_primaries()[0]

    run = dags_test(env, BATCH_SIZE)
    deadline = time.monotonic() + 300
    while on_cluster.workers.batches_done() < 3:
        assert run.poll() is None and time.monotonic() < deadline, "no batch done before the run ended"
        time.sleep(0.02)
    process = running(Layout(on_cluster.cluster.root), f"redis-{victim.port}")
    process.send_signal(signal.SIGKILL)
    psutil.wait_procs([process], timeout=10)

    code, output = finish(run)
    if code != 0:
        loud = [line for line in output.splitlines() if "failed over during the run" in line]
        assert loud, output[-5000:]
        print(f"master {victim.name} killed mid-run; the run failed loudly: {loud[0][-300:]}")
        code, output = finish(dags_test(env, BATCH_SIZE))
        assert code == 0, output[-5000:]
    else:
        print(f"master {victim.name} killed mid-run; the run ended verified")
    client = open_redis(moved.settings.redis)
    assert victim.name not in {node.name for node in client.get_primaries()}  # its replica took over
    assert_reads_like(client, moved, standalone)
