"""The benchmark: for each size, generate and load a graph, then time every mode side by side.

``python -m bench.run --sizes 500,10000,100000`` (``make bench``; ``make bench-full`` adds 1M) writes
``bench/results/bench-<time>.json``, ``docs/benchmarks.md`` and ``docs/benchmarks.png``.

It uses Redis database 1 and the key prefix ``fxbench`` (``FX__REDIS__DB`` / ``FX__REDIS__PREFIX``
override them) and per-run Kafka topics and consumer groups, so it leaves other users of the stack
alone; but loading a graph replaces the one in Neo4j.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from bench import report
from bench.floor import prepare_records
from bench.measure import BenchError, run_child
from fx_workers.config import REPO_ROOT, load_settings
from fx_workers.engine.graph import Cypher, open_driver
from fx_workers.store.client import open_redis
from fx_workers.tools.generate import END_TS, write_csv
from fx_workers.tools.load import load_csv

if TYPE_CHECKING:
    import redis

    from fx_workers.config import Settings

BENCH_ENV = {"FX__REDIS__DB": "1", "FX__REDIS__PREFIX": "fxbench"}
"""Defaults for this process and its children; the environment overrides them."""
RESULTS = REPO_ROOT / "bench" / "results"
DOCS = REPO_ROOT / "docs"
NAIVE_MAX = 100_000
ATTEMPTS = 3
FINGERPRINT = "MATCH (:{A})-[t:{T}]->(:{A}) RETURN count(t) AS transfers, sum(t.{ts}) AS ts_sum"
PROFILE_MAX = 100_000


def machine(settings: Settings) -> dict[str, Any]:
    """Cores, memory, CPU model and the versions of the software measured."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    with open_driver(settings.neo4j) as driver:
        records = driver.execute_query("CALL dbms.components() YIELD versions RETURN versions[0] AS v").records
    return {
        "cores": os.cpu_count(),
        "memory_gib": psutil.virtual_memory().total / 2**30,
        "cpu": cpu,
        "python": platform.python_version(),
        "neo4j": records[0]["v"],
        "redis": open_redis(settings.redis).info("server")["redis_version"],
    }


def clear_prefix(client: redis.Redis, prefix: str) -> None:
    """Delete every key of the bench prefix (synchronously, so ``used_memory`` drops now)."""
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{prefix}:*", count=10_000):
        batch.append(key)
        if len(batch) == 10_000:
            client.delete(*batch)
            batch.clear()
    if batch:
        client.delete(*batch)


class BenchGraph:
    """The generated graph of one size in the shared Neo4j; loaded again whenever another process replaced it."""

    def __init__(self, settings: Settings, transactions: int, seed: int) -> None:
        self.settings = settings
        self.transactions = transactions
        self.path = RESULTS / "data" / f"transactions-{transactions}-seed{seed}.csv"
        if not self.path.exists():
            write_csv(self.path, transactions=transactions, seed=seed)
        self.accounts = 0
        self.load_seconds = 0.0
        self.reloads = 0
        self._fingerprint: tuple[int, int] | None = None

    def load(self) -> None:
        """Load the file, replacing Neo4j's graph, and remember what it looks like."""
        summary = load_csv(self.path, self.settings, replace=True)
        self.accounts, self.load_seconds = summary.accounts, summary.seconds
        self._fingerprint = self._read_fingerprint()
        if self._fingerprint[0] != self.transactions:
            raise BenchError(f"loaded {self.path} but Neo4j has {self._fingerprint[0]} transfers")

    def _read_fingerprint(self) -> tuple[int, int]:
        query = Cypher(self.settings.graph).render(FINGERPRINT)
        with open_driver(self.settings.neo4j) as driver:
            record = driver.execute_query(query, database_=self.settings.neo4j.database).records[0]
        return record["transfers"], record["ts_sum"] or 0

    def replaced(self) -> bool:
        return self._read_fingerprint() != self._fingerprint

    def measure(self, mode: str, client: redis.Redis, extra: list[str]) -> dict[str, Any]:
        """:func:`measure` on this graph; when another process replaced it meanwhile, load it and measure again.

        :raises BenchError: when the run fails on an unchanged graph, or the graph keeps changing
        """
        for _ in range(ATTEMPTS):
            if self.replaced():
                print(f"  the graph was replaced by another process; loading {self.path.name} again", file=sys.stderr)
                self.reloads += 1
                self.load()
            try:
                run = measure(mode, self.settings, client, extra=extra, expected=(self.accounts, self.transactions))
            except BenchError:
                if not self.replaced():
                    raise
                continue
            if not self.replaced():
                return run
        raise BenchError(f"the graph was replaced during each of {ATTEMPTS} runs of {mode}")


def measure(mode: str, settings: Settings, client: redis.Redis, *, extra: list[str],
            expected: tuple[int, int]) -> dict[str, Any]:
    """One run of ``mode`` in a child process: its measurement, peak RSS and Redis growth.

    :raises BenchError: when the child fails, or saw other than the ``expected`` (accounts, transfers)
    """
    clear_prefix(client, settings.redis.prefix)
    before = client.info("memory")["used_memory"]
    argv = [sys.executable, "-m", "bench.modes", mode, "--as-of", str(END_TS), "--run-id",
            f"bench-{mode}-{uuid.uuid4().hex[:6]}", *extra]
    measurement, peak_rss = run_child(argv)
    redis_bytes = client.info("memory")["used_memory"] - before
    found = (measurement["accounts"], measurement["transfers"])
    if found != expected:
        raise BenchError(f"{mode} saw {found} (accounts, transfers); the loaded graph has {expected}")
    print(f"  {mode}: {measurement['seconds']:.3f} s, peak RSS {peak_rss / report.MB:.0f} MB", file=sys.stderr)
    return {"mode": mode, **measurement, "peak_rss": peak_rss, "redis_bytes": redis_bytes}


def bench_size(settings: Settings, client: redis.Redis, transactions: int, args: argparse.Namespace) -> dict[str, Any]:
    """Load one size, then run every mode ``args.repeats`` times, interleaved."""
    print(f"{transactions} transactions: generating and loading", file=sys.stderr)
    graph = BenchGraph(settings, transactions, args.seed)
    graph.load()
    records = RESULTS / "data" / f"records-{transactions}-seed{args.seed}.npz"
    prepare_records(settings, END_TS, records)
    modes = {"local": [], "floor-redis-cli": ["--records", str(records)], "floor-redis-py": ["--records", str(records)]}
    notes = []
    if transactions <= args.naive_max:
        modes = {"naive": []} | modes
    else:
        notes.append(f"naive not run: it is only measured up to {args.naive_max:,} transactions")
    modes |= {f"distributed-{k}": [] for k in args.workers}
    runs = []
    for repeat in range(args.repeats):
        print(f"{transactions} transactions: repeat {repeat + 1} of {args.repeats}", file=sys.stderr)
        for mode, extra in modes.items():
            runs.append({"repeat": repeat, **graph.measure(mode, client, extra)})
    size = {"transactions": transactions, "accounts": graph.accounts, "load_seconds": graph.load_seconds,
            "runs": runs, "notes": notes}
    if transactions == args.profile_size:
        path = RESULTS / f"profile-local-{transactions}.prof"
        run = graph.measure("local", client, ["--profile", str(path)])
        size["profile"] = {"transactions": transactions, "seconds": run["seconds"], "top": report.top_functions(path)}
    if graph.reloads:
        notes.append(f"another process replaced the graph {graph.reloads} time(s); it was loaded again and the "
                     "affected runs repeated")
    return size


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="500,10000,100000", help="transactions per graph, comma separated")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each mode per size")
    parser.add_argument("--workers", default="1,2,4", help="distributed worker counts; empty for none")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--naive-max", type=int, default=NAIVE_MAX, help="largest size the naive mode runs at")
    parser.add_argument("--profile-size", type=int, help="size to profile, defaults to the largest up to 100k")
    parser.add_argument("--render", type=Path, metavar="JSON", help="only re-render the docs from a results file")
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.workers = [int(k) for k in args.workers.split(",") if k]
    if args.profile_size is None:
        args.profile_size = max((s for s in args.sizes if s <= PROFILE_MAX), default=None)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        results = json.loads(args.render.read_text())
    else:
        for name, value in BENCH_ENV.items():
            os.environ.setdefault(name, value)
        settings = load_settings()
        if (settings.redis.db, settings.redis.prefix) == (0, "fx"):
            raise BenchError("refusing to benchmark into Redis db 0 with prefix fx, where the stack's users keep "
                             "their features; set FX__REDIS__DB or FX__REDIS__PREFIX")
        client = open_redis(settings.redis)
        started = datetime.now(UTC)
        results = {
            "command": " ".join(["python -m bench.run", *(sys.argv[1:] if argv is None else argv)]),
            "started_at": started.isoformat(timespec="seconds"),
            "seed": args.seed,
            "repeats": args.repeats,
            "machine": machine(settings),
            "notes": [] if args.workers else ["distributed not run (--workers was empty)"],
            "sizes": [],
        }
        path = RESULTS / f"bench-{started:%Y%m%dT%H%M%S}.json"
        for transactions in args.sizes:
            size = bench_size(settings, client, transactions, args)
            if "profile" in size:
                results["profile"] = size.pop("profile")
            results["sizes"].append(size)
            results["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
            path.write_text(json.dumps(results, indent=1))
        print(f"results: {path}", file=sys.stderr)
    report.write_doc(DOCS / "benchmarks.md", report.render(results))
    report.plot(results, DOCS / "benchmarks.png")
    print(f"wrote {DOCS / 'benchmarks.md'} and {DOCS / 'benchmarks.png'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
