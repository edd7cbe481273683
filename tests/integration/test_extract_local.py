"""``fx extract --local``, ``fx verify``, ``fx features`` and ``fx runs`` as a user runs them, on a graph
with hostile ids, against the naive reference; and what readers see while runs come and go."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest

from fx_workers.engine.catalogue import EDGE_FEATURE_NAMES, NODE_FEATURE_NAMES
from fx_workers.store.bulk import decode_rows, encode_rows
from fx_workers.store.reader import FeatureReader
from fx_workers.store.records import decode_record
from fx_workers.tools.generate import write_csv
from ops.fixtures import Slice
from tests.reference import Reference, Transfer

if TYPE_CHECKING:
    import redis

FX = str(Path(sys.executable).parent / "fx")
HOSTILE = ["it's", 'say "hi"', "a:b:c", "{tag}", "x}{y", "n') DETACH DELETE n //", "*", "ü ß", "a\\b", "[0-9]?"]


def hostile_graph(path: Path) -> list[Transfer]:
    """A generated graph whose account and transfer ids include quotes, colons, braces, globs and Cypher."""
    plain = path.with_suffix(".plain.csv")
    write_csv(plain, transactions=1200, seed=11)
    with plain.open() as f:
        rows = list(csv.DictReader(f))
    accounts = sorted({r["payer"] for r in rows} | {r["payee"] for r in rows})
    rename = {a: f"{HOSTILE[i % len(HOSTILE)]}#{a}" if i % 3 == 0 else a for i, a in enumerate(accounts)}
    for i, row in enumerate(rows):
        row["payer"], row["payee"] = rename[row["payer"]], rename[row["payee"]]
        if i % 5 == 0:
            row["tx_id"] = f"{HOSTILE[i % len(HOSTILE)]}:{row['tx_id']}"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return [Transfer(r["tx_id"], r["payer"], r["payee"], float(r["amount"]), int(r["ts"])) for r in rows]


@pytest.fixture(scope="module")
def piece(redis_client, kafka_admin, neo4j_driver) -> Slice:
    piece = Slice.create()
    yield piece
    piece.drop(redis_client, kafka_admin, neo4j_driver)


@pytest.fixture(scope="module")
def graph(piece: Slice, tmp_path_factory) -> list[Transfer]:
    path = tmp_path_factory.mktemp("graph") / "hostile.csv"
    transfers = hostile_graph(path)
    fx(piece, "load", str(path), "--replace")
    return transfers


def fx(piece: Slice, *args: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    result = subprocess.run([FX, *args], capture_output=True, text=True, timeout=600, env=piece.env | env)
    if check and result.returncode != 0:
        raise AssertionError(f"fx {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return result


def as_ofs(graph: list[Transfer]) -> dict[str, int]:
    ts = sorted(t.ts for t in graph)
    return {"early": ts[len(ts) // 3], "inside": ts[len(ts) * 3 // 4], "after": ts[-1] + 1000}


def extract(piece: Slice, as_of: int, *extra: str, **env: str) -> subprocess.CompletedProcess:
    return fx(piece, "extract", "--local", "--as-of", str(as_of), "--batch-size", "37", *extra, **env)


def reader(piece: Slice, client: redis.Redis, run_id: str | None = None) -> FeatureReader:
    return FeatureReader(client, piece.keys, run_id)


def accounts_of(graph: list[Transfer]) -> list[str]:
    return sorted({t.payer for t in graph} | {t.payee for t in graph})


@pytest.mark.parametrize("when", ["inside", "after"])
def test_readers_get_the_reference_values(piece: Slice, graph: list[Transfer], redis_client: redis.Redis,
                                          when: str) -> None:
    """An as_of inside the data (graph reads filter on ts) and one after it (degrees from the store)."""
    as_of = as_ofs(graph)[when]
    assert "verification: passed, published" in extract(piece, as_of).stderr
    reference, features = Reference(graph, as_of), reader(piece, redis_client)
    run_id = piece.registry(redis_client).latest()
    accounts = accounts_of(graph)
    for account, record in zip(accounts, features.nodes(accounts), strict=True):
        assert record is not None and record["_run_id"] == run_id and record["_as_of"] == str(as_of), account
        expected = reference.node(account)
        for name in NODE_FEATURE_NAMES:
            assert math.isclose(record[name], expected[name], rel_tol=1e-9, abs_tol=1e-9), (account, name)
    visible = [t for t in graph if t.ts <= as_of]
    for t, record in zip(visible, features.edges([t.tx_id for t in visible]), strict=True):
        assert record is not None, t.tx_id
        expected = reference.edge(t)
        for name in EDGE_FEATURE_NAMES:
            assert math.isclose(record[name], expected[name], rel_tol=1e-9, abs_tol=1e-9), (t.tx_id, name)
    assert features.edges([t.tx_id for t in graph if t.ts > as_of]) == [None] * (len(graph) - len(visible))


def test_an_earlier_as_of_after_a_later_one_mixes_nothing_in(piece: Slice, graph: list[Transfer],
                                                              redis_client: redis.Redis) -> None:
    times = as_ofs(graph)
    extract(piece, times["after"])
    extract(piece, times["early"])
    features = reader(piece, redis_client)
    later = [t.tx_id for t in graph if t.ts > times["early"]]
    assert later and features.edges(later) == [None] * len(later)
    assert {r["_as_of"] for r in features.nodes(accounts_of(graph))} == {str(times["early"])}


def test_a_rerun_writes_the_same_bytes(piece: Slice, graph: list[Transfer], redis_client: redis.Redis) -> None:
    as_of = as_ofs(graph)["inside"]
    extract(piece, as_of)
    first = piece.snapshot(redis_client)
    extract(piece, as_of, "--batch-size", "500")
    assert piece.snapshot(redis_client) == first


def test_export_equals_what_readers_get(piece: Slice, graph: list[Transfer], redis_client: redis.Redis,
                                        tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    extract(piece, as_ofs(graph)["inside"])
    run_id = piece.registry(redis_client).latest()
    snapshot = piece.snapshot(redis_client)
    fx(piece, "features", "export", "--out", str(tmp_path / "nodes.parquet"))
    fx(piece, "features", "export", "--out", str(tmp_path / "edges.csv"), "--edges")
    table = pq.read_table(tmp_path / "nodes.parquet")
    assert table.column_names == ["account_id", *NODE_FEATURE_NAMES]
    metadata = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    assert (metadata["fx_run_id"], metadata["fx_as_of"]) == (run_id, str(as_ofs(graph)["inside"]))
    nodes = {row["account_id"]: row for row in table.to_pylist()}
    assert sorted(nodes) == accounts_of(graph)
    for account, row in nodes.items():
        stored = decode_record(snapshot[f"n:{account}"], len(NODE_FEATURE_NAMES))
        assert [row[n] for n in NODE_FEATURE_NAMES] == stored
    with (tmp_path / "edges.csv").open(newline="") as f:
        edges = list(csv.reader(f))
    assert edges[0] == ["tx_id", *EDGE_FEATURE_NAMES]
    assert sorted(row[0] for row in edges[1:]) == sorted(k.split(":", 1)[1] for k in snapshot
                                                         if k.startswith("e:"))
    for row in edges[1:]:
        stored = decode_record(snapshot[f"e:{row[0]}"], len(EDGE_FEATURE_NAMES))
        assert [float(v) for v in row[1:]] == stored
    assert "must end in .parquet or .csv" in fx(piece, "features", "export", "--out", "x.json", check=False).stderr


def test_a_failed_run_changes_nothing_readers_see_even_while_it_runs(piece: Slice, graph: list[Transfer],
                                                                     redis_client: redis.Redis) -> None:
    times = as_ofs(graph)
    extract(piece, times["after"])
    published = piece.registry(redis_client).latest()
    features, accounts = reader(piece, redis_client), accounts_of(graph)
    before = features.nodes(accounts)
    failing = subprocess.Popen([FX, "extract", "--local", "--as-of", str(times["early"]), "--batch-size", "5"],
                               env=piece.env | {"FX__DRIFT__PSI_FAIL": "0"}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    reads = 0
    while failing.poll() is None:
        assert features.nodes(accounts) == before
        reads += 1
    _, stderr = failing.communicate()
    assert failing.returncode == 1 and "FAILED, not published" in stderr and "drift against run" in stderr
    assert reads > 1
    assert piece.registry(redis_client).latest() == published
    assert features.nodes(accounts) == before
    failed = piece.registry(redis_client).list()[0]
    assert (failed.status, failed.get("as_of")) == ("failed (deleted)", str(times["early"]))
    assert "drift against run" in failed.get("failures")


def test_verify_names_a_lost_record_an_altered_value_and_a_checksum_mismatch(
        piece: Slice, graph: list[Transfer], redis_client: redis.Redis) -> None:
    extract(piece, as_ofs(graph)["inside"])
    run_id = piece.registry(redis_client).latest()
    assert fx(piece, "verify", "--run", run_id, "--sample", "100000", "--batches", "1000").returncode == 0
    namespace = piece.keys.of_run(run_id)
    victim, altered = accounts_of(graph)[:2]
    redis_client.delete(namespace.node(victim))
    values = decode_rows([redis_client.get(namespace.node(altered))], len(NODE_FEATURE_NAMES))[0]
    values[0, NODE_FEATURE_NAMES.index("out_count")] = np.nan
    redis_client.set(namespace.node(altered), encode_rows(values).rows()[0])
    result = fx(piece, "verify", "--run", run_id, "--sample", "100000", "--batches", "0", check=False)
    assert result.returncode == 1
    assert f"account {victim}: no record in the run" in result.stdout
    assert f"account {altered}: out_count stored nan" in result.stdout
    result = fx(piece, "verify", "--run", run_id, "--sample", "0", "--batches", "1000", check=False)
    assert result.returncode == 1 and "do not match the checksum its worker reported" in result.stdout


def test_rollback_and_retention(piece: Slice, graph: list[Transfer], redis_client: redis.Redis) -> None:
    times = as_ofs(graph)
    for when in ("early", "inside", "after"):
        extract(piece, times[when])
        time.sleep(0.01)
    runs = [r for r in piece.registry(redis_client).list() if not r.get("deleted")]
    assert [r.get("as_of") for r in runs] == [str(times["after"]), str(times["inside"])]  # retention.runs = 2
    namespaces = {key.decode().split(":")[1] for key in redis_client.scan_iter(f"{piece.keys.prefix}:*", count=10_000)}
    assert namespaces - {"run", "runs", "latest"} == {r.run_id for r in runs}
    listed = fx(piece, "runs", "list").stdout
    assert all(r.run_id in listed for r in runs)

    account = accounts_of(graph)[-1]
    assert reader(piece, redis_client).nodes([account])[0]["_as_of"] == str(times["after"])
    fx(piece, "runs", "promote", runs[1].run_id)
    assert reader(piece, redis_client).nodes([account])[0]["_as_of"] == str(times["inside"])
    assert "run deadbeef does not exist" in fx(piece, "runs", "promote", "deadbeef", check=False).stderr


def test_features_get_prints_json_and_names_missing_ids(piece: Slice, graph: list[Transfer]) -> None:
    as_of = as_ofs(graph)["inside"]
    extract(piece, as_of)
    account = next(a for a in accounts_of(graph) if a.startswith("it's"))
    printed = json.loads(fx(piece, "features", "get", account, "--json").stdout)
    assert printed[account]["out_count"] == Reference(graph, as_of).node(account)["out_count"]
    tx = next(t for t in graph if t.ts <= as_of and ":" in t.tx_id)
    assert "pair_count" in fx(piece, "features", "get", tx.tx_id, "--edge").stdout
    missing = fx(piece, "features", "get", "no-such-account", check=False)
    assert missing.returncode == 1 and "no-such-account" in missing.stderr


def test_two_runs_at_once_do_not_cross(piece: Slice, graph: list[Transfer], redis_client: redis.Redis) -> None:
    times = as_ofs(graph)
    both = [subprocess.Popen([FX, "extract", "--local", "--as-of", str(times[when]), "--batch-size", "20"],
                             env=piece.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for when in ("early", "after")]
    assert [run.wait(timeout=600) for run in both] == [0, 0], [run.stderr.read() for run in both]
    registry = piece.registry(redis_client)
    concurrent = {r.get("as_of"): piece.snapshot(redis_client, r.run_id) for r in registry.list()[:2]}
    for when in ("early", "after"):
        extract(piece, times[when])
        assert piece.snapshot(redis_client) == concurrent[str(times[when])], when
