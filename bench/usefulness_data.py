"""The usefulness benchmark's data side: the AMLSim transfers, the weekly cutoffs, one fx run per cutoff
(through the CLI, in a graph label and Redis prefix of its own) and the point-in-time join.

Every transfer is joined with its payer's and payee's node features as of the latest cutoff strictly
before its ``ts`` (:func:`snapshot_index`); pair features come from the same cutoff's edge export (the
transfers p → q and q → p with ``ts <= cutoff``). Nothing computed after that cutoff reaches a row.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from fx_workers.config import REPO_ROOT

if TYPE_CHECKING:
    from collections.abc import Callable

    from fx_workers.config import Settings

AMLSIM_DIR = REPO_ROOT.parent / "shared" / "data" / "amlsim"
WORK = REPO_ROOT / "bench" / "results" / "usefulness"
FX = REPO_ROOT / ".venv" / "bin" / "fx"
SPLIT = int(datetime(2017, 4, 1, tzinfo=UTC).timestamp())
"""Train before, test from: the cutoffs are aligned on it."""
WEEK = 7 * 86400
BENCH_ENV = {
    "FX__GRAPH__ACCOUNT_LABEL": "AmlAccount",
    "FX__GRAPH__TRANSFER_TYPE": "AML_TRANSFER",
    "FX__REDIS__DB": "1",
    "FX__REDIS__PREFIX": "fxuseful",
    "FX__RETENTION__RUNS": "3",  # the run being exported survives the next run's publication
    "FX__EXTRACTION__VERIFY_BATCHES": "0",  # verification is not what is measured here: a sample suffices
    "FX__EXTRACTION__VERIFY_SAMPLE": "20",
}
"""Its own graph (label and relationship type), Redis database and prefix: the stack's graph and runs, used
by the tests and the demo, stay as they are."""
BATCH_SIZE = 2000
PAIR_COLUMNS = ("pair_count", "pair_amount_sum", "reciprocated")
"""Pair features as of the cutoff: transfers p → q, their amounts, and whether some q → p exists."""


class UsefulnessError(RuntimeError):
    """The benchmark cannot go on; the message says why."""


@dataclass(frozen=True)
class Transfers:
    """The labelled transfers, sorted by ``ts``; accounts as indices into ``accounts``."""

    tx_id: np.ndarray
    payer: np.ndarray
    payee: np.ndarray
    accounts: np.ndarray
    amount: np.ndarray
    ts: np.ndarray
    currency: np.ndarray
    channel: np.ndarray
    label: np.ndarray
    typology: np.ndarray
    """The alert's typology for a laundering transfer, ``""`` for the others."""

    def __len__(self) -> int:
        return len(self.ts)

    def fingerprint(self) -> str:
        """What the graph loaded from these transfers looks like: count and sum of ``ts``."""
        return f"{len(self)}:{int(self.ts.sum())}"


def read_transfers(directory: Path = AMLSIM_DIR) -> Transfers:
    """``amlsim_native.csv.gz`` with each laundering transfer's typology from ``amlsim_alerts.csv.gz``."""
    strings = {name: "string" for name in ("tx_id", "payer", "payee", "currency", "channel")}
    import pyarrow as pa

    table = pacsv.read_csv(directory / "amlsim_native.csv.gz", convert_options=pacsv.ConvertOptions(
        column_types={**{k: pa.string() for k in strings}, "amount": pa.float64(), "ts": pa.int64()}))
    order = np.argsort(table["ts"].to_numpy(), kind="stable")
    column = {name: table[name].to_numpy(zero_copy_only=False)[order] for name in table.column_names}
    accounts, index = np.unique(np.concatenate([column["payer"], column["payee"]]).astype(str), return_inverse=True)
    alerts = pacsv.read_csv(directory / "amlsim_alerts.csv.gz",
                            convert_options=pacsv.ConvertOptions(column_types={"tx_id": pa.string()}))
    typology_of = dict(zip(alerts["tx_id"].to_pylist(), alerts["typology"].to_pylist(), strict=True))
    tx_id = column["tx_id"].astype(str)
    label = column["is_laundering"].astype(bool)
    typology = np.array([typology_of.get(t, "") if positive else "" for t, positive in zip(tx_id, label, strict=True)],
                        dtype=object)
    n = len(tx_id)
    return Transfers(tx_id, index[:n], index[n:], accounts, column["amount"].astype(np.float64),
                     column["ts"].astype(np.int64), column["currency"].astype(str), column["channel"].astype(str),
                     label, typology)


def cutoffs(first_ts: int, last_ts: int, split: int = SPLIT, step: int = WEEK, history: int = WEEK) -> np.ndarray:
    """``split + k·step`` for every k from the first cutoff with ``history`` seconds of data before it
    (``c - first_ts >= history``) to the last one strictly before ``last_ts``."""
    k_first = -((split - first_ts - history) // step)  # ceil((first_ts + history - split) / step)
    k_last = -((split - last_ts) // step) - 1  # the largest k with split + k·step < last_ts
    if k_last < k_first:
        raise UsefulnessError(f"no cutoff: the data spans {first_ts}..{last_ts}, under {history} s of history "
                              "before the last possible cutoff")
    return split + step * np.arange(k_first, k_last + 1, dtype=np.int64)


def snapshot_index(ts: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """For each ``ts``, the index of the latest cutoff strictly before it; -1 when there is none (at or
    before the first cutoff: not scored)."""
    return np.searchsorted(cuts, ts, side="left") - 1


def bench_environ() -> dict[str, str]:
    """The environment of every fx command the benchmark runs (the caller's ``FX__*`` win)."""
    return BENCH_ENV | dict(os.environ)


def fx(*args: str) -> str:
    """Run the fx CLI in the benchmark's environment; its output, or :class:`UsefulnessError` with it."""
    done = subprocess.run([str(FX), *args], env=bench_environ(), capture_output=True, text=True, check=False)
    if done.returncode:
        raise UsefulnessError(f"fx {' '.join(args)} exited {done.returncode}:\n{done.stdout[-2000:]}"
                              f"{done.stderr[-2000:]}")
    return done.stdout + done.stderr


def settings() -> Settings:
    from fx_workers.config import load_settings

    return load_settings(environ=bench_environ())


def graph_fingerprint() -> str:
    """The benchmark graph's transfer count and ``ts`` sum, as :meth:`Transfers.fingerprint` gives them."""
    from fx_workers.engine.graph import Cypher, open_driver

    config = settings()
    query = Cypher(config.graph).render("MATCH (:{A})-[t:{T}]->(:{A}) RETURN count(t) AS n, sum(t.{ts}) AS s")
    with open_driver(config.neo4j) as driver:
        record = driver.execute_query(query, database_=config.neo4j.database).records[0]
    return f"{record['n']}:{record['s'] or 0}"


def ensure_graph(transfers: Transfers, directory: Path = AMLSIM_DIR) -> str:
    """``fx load`` the CSV into the benchmark's graph unless it is there already; what was done."""
    if graph_fingerprint() == transfers.fingerprint():
        return "the benchmark graph was already loaded"
    WORK.mkdir(parents=True, exist_ok=True)
    plain = WORK / "amlsim_native.csv"
    with gzip.open(directory / "amlsim_native.csv.gz", "rb") as packed, plain.open("wb") as out:
        shutil.copyfileobj(packed, out)
    return fx("load", str(plain), "--replace").strip().splitlines()[-1]


def data_key(transfers: Transfers) -> str:
    from fx_workers.engine.catalogue import SCHEMA_VERSION

    return f"{SCHEMA_VERSION}-{hashlib.sha256(transfers.fingerprint().encode()).hexdigest()[:8]}"


@dataclass
class Snapshot:
    """One cutoff's exports: node features per account, and the edge export's rows."""

    cutoff: int
    run_id: str
    node_names: tuple[str, ...]
    nodes: np.ndarray
    """(accounts, node features) aligned on :attr:`Transfers.accounts`; NaN for an account not exported."""
    edge_tx: np.ndarray
    """Row of each exported transfer in :class:`Transfers`."""
    edges: dict[str, np.ndarray] = field(default_factory=dict)


def extract(cutoff: int) -> str:
    """``fx extract --local --as-of cutoff``: the id of the run it published."""
    text = fx("extract", "--local", "--as-of", str(cutoff), "--batch-size", str(BATCH_SIZE))
    found = re.search(r"run ([0-9a-f]+):", text)
    if not found or "passed, published" not in text:
        raise UsefulnessError(f"fx extract at {cutoff} did not publish a run:\n{text[-2000:]}")
    return found.group(1)


def export(run_id: str, nodes: Path, edges: Path) -> None:
    """``fx features export --run``, per account into ``nodes`` and per transfer into ``edges``."""
    fx("features", "export", "--run", run_id, "-o", str(nodes))
    fx("features", "export", "--edges", "--run", run_id, "-o", str(edges))


def clear_runs() -> str:
    """Delete every key under the benchmark's Redis prefix: its runs, manifests and pointer."""
    from bench.run import clear_prefix
    from fx_workers.store.client import open_redis

    config = settings().redis
    clear_prefix(open_redis(config), config.prefix)
    return f"{config.prefix}:* in Redis db {config.db}"


def read_snapshot(transfers: Transfers, cutoff: int, run_id: str, nodes: Path, edges: Path) -> Snapshot:
    table = pq.read_table(nodes)
    names = tuple(table.column_names[1:])
    matrix = np.full((len(transfers.accounts), len(names)), np.nan)
    ids = table.column(0).to_numpy(zero_copy_only=False).astype(str)
    rows = np.searchsorted(transfers.accounts, ids)
    known = (rows < len(transfers.accounts)) & (transfers.accounts[np.minimum(rows, len(transfers.accounts) - 1)]
                                                == ids)
    matrix[rows[known]] = np.column_stack([table.column(i + 1).to_numpy() for i in range(len(names))])[known]
    table = pq.read_table(edges, columns=["tx_id", "pair_count", "pair_amount_sum"])
    order = np.argsort(transfers.tx_id)
    tx = table.column(0).to_numpy(zero_copy_only=False).astype(str)
    at = order[np.searchsorted(transfers.tx_id, tx, sorter=order)]
    if not (transfers.tx_id[at] == tx).all():
        raise UsefulnessError(f"the edge export of run {run_id} has transfers the CSV does not")
    pairs = {name: table[name].to_numpy() for name in table.column_names[1:]}
    return Snapshot(cutoff, run_id, names, matrix, at, pairs)


def pair_features(transfers: Transfers, snap: Snapshot, rows: np.ndarray) -> np.ndarray:
    """:data:`PAIR_COLUMNS` for the transfers ``rows`` as of ``snap``: from any exported p → q transfer
    (all of them at or before the cutoff), 0 when there is none."""
    n = np.int64(len(transfers.accounts))
    key = transfers.payer[snap.edge_tx].astype(np.int64) * n + transfers.payee[snap.edge_tx]
    keys, first = np.unique(key, return_index=True)
    out = np.zeros((len(rows), len(PAIR_COLUMNS)))
    if not len(keys):
        return out

    def find(wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
        return at, keys[at] == wanted

    at, hit = find(transfers.payer[rows].astype(np.int64) * n + transfers.payee[rows])
    out[hit, 0] = snap.edges["pair_count"][first[at[hit]]]
    out[hit, 1] = snap.edges["pair_amount_sum"][first[at[hit]]]
    _, back = find(transfers.payee[rows].astype(np.int64) * n + transfers.payer[rows])
    out[:, 2] = back
    return out


def raw_columns(transfers: Transfers) -> dict[str, np.ndarray]:
    """The transfer's own fields: amount, UTC hour and weekday, currency and channel when they vary."""
    columns = {"amount": transfers.amount, "hour": (transfers.ts // 3600) % 24,
               "weekday": (transfers.ts // 86400 + 3) % 7}  # 1970-01-01 was a Thursday
    for name in ("currency", "channel"):
        values, codes = np.unique(getattr(transfers, name), return_inverse=True)
        if len(values) > 1:
            columns[name] = codes
    return {name: np.asarray(v, dtype=np.float64) for name, v in columns.items()}


def joined(transfers: Transfers, snaps: list[Snapshot], rows: np.ndarray, which: np.ndarray,
           node_extra: Callable[[int], dict[str, np.ndarray]] | None = None) -> dict[str, np.ndarray]:
    """Columns for the transfers ``rows``, each from the snapshot ``which`` (>= 0): ``payer.*`` and ``payee.*``
    node features, ``pair.*``; ``node_extra(j)`` may add per-account columns of snapshot ``j``."""
    names = snaps[0].node_names
    columns: dict[str, np.ndarray] = {}
    parts: dict[str, list[np.ndarray]] = {}
    index: list[np.ndarray] = []
    for j, snap in enumerate(snaps):
        mine = rows[which == j]
        if not len(mine):
            continue
        if snap.node_names != names:
            raise UsefulnessError(f"run {snap.run_id} exported other node features than run {snaps[0].run_id}")
        index.append(np.flatnonzero(which == j))
        extra = node_extra(j) if node_extra else {}
        for side in ("payer", "payee"):
            accounts = getattr(transfers, side)[mine]
            for i, name in enumerate(names):
                parts.setdefault(f"{side}.{name}", []).append(snap.nodes[accounts, i])
            for name, values in extra.items():
                parts.setdefault(f"{side}.{name}", []).append(values[accounts])
        pairs = pair_features(transfers, snap, mine)
        for i, name in enumerate(PAIR_COLUMNS):
            parts.setdefault(f"pair.{name}", []).append(pairs[:, i])
    where = np.concatenate(index)
    for name, chunks in parts.items():
        column = np.empty(len(rows))
        column[where] = np.concatenate(chunks)
        columns[name] = column
    return columns
