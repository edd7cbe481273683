"""The README's two-step read from a second language: ``examples/go-reader`` (Go, go-redis) reads a real
run, and a run written with other names, by name, and gets exactly the doubles Python's reader gets.

CI has Go, so a missing ``go`` fails this test rather than skipping it."""

from __future__ import annotations

import math
import shutil
import subprocess
from typing import TYPE_CHECKING

import numpy as np
import pytest

from fx_workers.config import REPO_ROOT
from fx_workers.engine.batch import BatchFeatures
from fx_workers.steps.local import run_local
from fx_workers.store.reader import FeatureReader
from fx_workers.store.records import schema_fields
from fx_workers.store.runs import RunStatus
from fx_workers.store.writer import BatchWriter
from fx_workers.tools.generate import write_csv
from ops.fixtures import AS_OF, Slice

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    import redis

SOURCE = REPO_ROOT / "examples" / "go-reader"


@pytest.fixture(scope="module")
def go_reader(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example, built (its modules from the Go module proxy, or the module cache)."""
    go = shutil.which("go")
    if go is None:
        pytest.fail("go is not on PATH: CI builds examples/go-reader with it (install Go 1.26)", pytrace=False)
    binary = tmp_path_factory.mktemp("go") / "go-reader"
    subprocess.run([go, "vet", "./..."], cwd=SOURCE, check=True, capture_output=True, timeout=600)
    subprocess.run([go, "test", "./..."], cwd=SOURCE, check=True, capture_output=True, timeout=600)
    subprocess.run([go, "build", "-o", str(binary), "."], cwd=SOURCE, check=True, capture_output=True, timeout=600)
    return binary


@pytest.fixture(scope="module")
def piece(redis_client, kafka_admin, neo4j_driver, tmp_path_factory) -> Iterator[Slice]:
    piece = Slice.create()
    csv = tmp_path_factory.mktemp("graph") / "graph.csv"
    write_csv(csv, transactions=400, seed=3)
    piece.load_graph(csv.parent, kafka_admin, csv)
    yield piece
    piece.drop(redis_client, kafka_admin, neo4j_driver)


def read_with_go(binary: Path, piece: Slice, ids: list[str], *flags: str) -> dict[str, dict[str, float]]:
    """What the Go reader prints, as ``{id: {name: value}}``, the text parsed back to doubles."""
    config = piece.settings.redis
    secret = config.secret()
    argv = [str(binary), "-addr", f"{config.host}:{config.port}", "-prefix", config.prefix,
            *(["-user", config.user] if secret and config.user else []), *flags, *ids]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False,
                            env={"FX_REDIS_PASSWORD": secret or ""})
    assert result.returncode == 0, result.stderr
    records: dict[str, dict[str, float]] = {}
    for line in result.stdout.splitlines()[1:]:
        record_id, name, value = line.split("\t")
        records.setdefault(record_id, {})[name] = float(value)
    return records


def same_doubles(go: dict[str, float], python: dict) -> bool:
    """Bit for bit (NaN equals NaN), over the same names."""
    names = {k for k in python if not k.startswith("_")}
    return set(go) == names and all(
        np.float64(go[n]).tobytes() == np.float64(python[n]).tobytes() or (math.isnan(go[n]) and math.isnan(python[n]))
        for n in names)


def test_the_go_reader_reads_a_real_run_exactly_as_python(go_reader: Path, piece: Slice,
                                                          redis_client: redis.Redis) -> None:
    summary = run_local(piece.settings, as_of=AS_OF)
    assert summary.verification.ok, str(summary.verification)
    reader = FeatureReader(redis_client, piece.keys)
    records = piece.snapshot(redis_client)
    accounts = sorted(k.split(":", 1)[1] for k in records if k.startswith("n:"))
    transfers = sorted(k.split(":", 1)[1] for k in records if k.startswith("e:"))[:50]
    go_nodes = read_with_go(go_reader, piece, accounts)
    assert sorted(go_nodes) == accounts
    for account, record in zip(accounts, reader.nodes(accounts), strict=True):
        assert same_doubles(go_nodes[account], record), account
    go_edges = read_with_go(go_reader, piece, transfers, "-edge")
    for tx_id, record in zip(transfers, reader.edges(transfers), strict=True):
        assert same_doubles(go_edges[tx_id], record), tx_id


def test_the_go_reader_uses_the_runs_names_and_says_what_is_missing(go_reader: Path, piece: Slice,
                                                                     redis_client: redis.Redis) -> None:
    registry, run_id = piece.registry(redis_client), "0ther5ch"
    names = ["zeta", "out_count", "alpha", "beta", "gamma", "delta"]
    registry.create(run_id, {"as_of": 1, "schema": "older", "plan": "0" * 16, "batches": 1, "accounts": 1,
                             **schema_fields(names, ["pair_count"])})
    values = np.array([[0.1 + 0.2, -0.0, 1e-300, 300.0, 1561.23, 7.0]])  # each code, and both kinds of varint
    BatchWriter(redis_client, piece.keys.of_run(run_id)).write(
        BatchFeatures(np.array(["it's:{x}"]), values, np.array(["t1"]), np.array([[4.0]])))
    registry.update(run_id, {"status": RunStatus.VERIFIED})
    go = read_with_go(go_reader, piece, ["it's:{x}"], "-run", run_id)
    assert same_doubles(go["it's:{x}"], dict(zip(names, values[0].tolist(), strict=True)))
    assert read_with_go(go_reader, piece, ["t1"], "-run", run_id, "-edge") == {"t1": {"pair_count": 4.0}}

    config = piece.settings.redis
    result = subprocess.run([str(go_reader), "-addr", f"{config.host}:{config.port}", "-prefix", config.prefix,
                             *(["-user", config.user] if config.secret() and config.user else []),
                             "-run", run_id, "it's:{x}", "nobody"], capture_output=True, text=True, timeout=120,
                            env={"FX_REDIS_PASSWORD": config.secret() or ""}, check=False)
    assert result.returncode == 1 and "1 of 2 records not in run 0ther5ch" in result.stderr
