"""The benchmark: for each size, generate and load a graph, then time every mode side by side.

``python -m bench.run --sizes 500,10000,100000,amlsim`` (``make bench``; ``make bench-full`` adds 1M)
writes ``bench/results/bench-<time>.json``, ``docs/benchmarks.md`` and ``docs/benchmarks.png``. A size
is a number of generated transactions, or ``amlsim``: the denser AMLSim graph in ``../shared/data``.

It uses Redis database 1 and the key prefix ``fxbench`` (``FX__REDIS__DB`` / ``FX__REDIS__PREFIX``
override them) and per-run Kafka topics and consumer groups, so it leaves other users of the stack
alone; but loading a graph replaces the one in Neo4j (default labels), and the ``dag`` mode runs
``fx_extract`` on the stack's own Airflow and workers, which write to the stack's Redis db and prefix.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from bench import report
from bench.dag import stack_settings, stale_workers
from bench.floor import prepare_records
from bench.measure import BENCH_ENV, BenchError, run_child
from fx_workers.config import REPO_ROOT, load_settings
from fx_workers.engine.graph import Cypher, open_driver
from fx_workers.store.client import open_redis
from fx_workers.tools.generate import END_TS, write_csv
from fx_workers.tools.load import load_csv

if TYPE_CHECKING:
    from collections.abc import Iterator

    import redis

    from fx_workers.config import Settings

RESULTS = REPO_ROOT / "bench" / "results"
DOCS = REPO_ROOT / "docs"
NAIVE_MAX = 100_000
AMLSIM = "amlsim"
AMLSIM_FILE = REPO_ROOT.parent / "shared" / "data" / "amlsim" / "amlsim_native.csv.gz"
"""IBM AMLSim's graph in the native CSV format, gzipped (``fx load`` reads plain CSV only); ``--amlsim``
overrides it."""
RETAINED_RUNS = 3
"""Local runs in a row for the retention measurement: the third is written while two are retained."""
MEMORY_POLL_SECONDS = 0.05
ATTEMPTS = 3
RETRY_SECONDS = 20.0
"""Wait before repeating a failed run: long enough for a restarted service to be back."""
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


def commit() -> str:
    """The checkout's commit, ``+changes`` when ``fx_workers/`` or ``bench/`` differ from it: what was measured."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True, text=True,
                              check=False).stdout.strip()

    changed = git("status", "--porcelain", "--untracked-files=no", "--", "fx_workers", "bench")
    return git("rev-parse", "--short", "HEAD") + ("+changes" if changed else "")


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


def graph_file(size: str, seed: int, amlsim: Path = AMLSIM_FILE) -> tuple[Path, int, int]:
    """The CSV of a size (written once under ``bench/results/data``), its transfers, and the ``as_of``
    that counts every one of them."""
    data = RESULTS / "data"
    data.mkdir(parents=True, exist_ok=True)
    if size == AMLSIM:
        path = data / amlsim.name.removesuffix(".gz")
        if not path.exists():
            with gzip.open(amlsim, "rb") as packed, path.open("wb") as plain:
                shutil.copyfileobj(packed, plain)
        timestamps = [int(line.split(b",")[4]) for line in path.read_bytes().splitlines()[1:] if line]
        return path, len(timestamps), max(timestamps)
    transactions = int(size)
    path = data / f"transactions-{transactions}-seed{seed}.csv"
    if not path.exists():
        write_csv(path, transactions=transactions, seed=seed)
    return path, transactions, END_TS


class BenchGraph:
    """The graph of one size in the shared Neo4j; loaded again whenever another process replaced it."""

    def __init__(self, settings: Settings, size: str, seed: int, amlsim: Path = AMLSIM_FILE) -> None:
        self.settings = settings
        self.size = size
        self.path, self.transactions, self.as_of = graph_file(size, seed, amlsim)
        self.accounts = 0
        self.load_seconds = 0.0
        self.reloads = 0
        self.retried: list[str] = []
        """Runs repeated because the shared stack got in the way, and why."""
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

    def measure(self, mode: str, client: redis.Redis, extra: list[str], *, clear: bool = True) -> dict[str, Any]:
        """:func:`measure` on this graph, repeated when the shared stack got in the way: another process
        replaced the graph (it is loaded again), or a run failed while a service restarted.

        :raises BenchError: when each of :data:`ATTEMPTS` runs failed or saw the graph change
        """
        import redis

        failures = []
        for _ in range(ATTEMPTS):
            try:
                if self.replaced():
                    print(f"  the graph was replaced by another process; loading {self.path.name} again",
                          file=sys.stderr)
                    self.reloads += 1
                    self.load()
                run = measure(mode, self.settings, client, extra=extra, as_of=self.as_of,
                              expected=(self.accounts, self.transactions), clear=clear)
                if not self.replaced():
                    return run
                failures.append("the graph was replaced during the run")
            except (BenchError, redis.ConnectionError) as exc:
                failures.append(str(exc).splitlines()[0])
                print(f"  {mode} failed ({failures[-1]}); waiting {RETRY_SECONDS:.0f}s, then again", file=sys.stderr)
                time.sleep(RETRY_SECONDS)
            self.retried.append(f"{mode}: {failures[-1]}")
        raise BenchError(f"{mode} failed {ATTEMPTS} times: {'; '.join(failures)}")


@contextmanager
def peak_memory(client: redis.Redis) -> Iterator[list[int]]:
    """Sample ``used_memory`` in a thread while in the block; the list holds the largest seen once it ends."""
    peak = [client.info("memory")["used_memory"]]
    stop = threading.Event()

    def sample() -> None:
        import redis

        while not stop.wait(MEMORY_POLL_SECONDS):
            try:
                peak[0] = max(peak[0], client.info("memory")["used_memory"])
            except redis.ConnectionError:
                continue  # a restart of the shared server; the run itself fails or not

    sampler = threading.Thread(target=sample, name="bench-memory", daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        stop.set()
        sampler.join()
        peak[0] = max(peak[0], client.info("memory")["used_memory"])


def measure(mode: str, settings: Settings, client: redis.Redis, *, extra: list[str], as_of: int,
            expected: tuple[int, int], clear: bool = True) -> dict[str, Any]:
    """One run of ``mode`` in a child process: its measurement, peak RSS and Redis growth (at the end,
    and at its peak).

    :param clear: delete the bench prefix's keys first, defaults to True
    :raises BenchError: when the child fails, or saw other than the ``expected`` (accounts, transfers)
    """
    if clear:
        clear_prefix(client, settings.redis.prefix)
    before = client.info("memory")["used_memory"]
    argv = [sys.executable, "-m", "bench.modes", mode, "--as-of", str(as_of), "--run-id",
            f"bench-{mode}-{uuid.uuid4().hex[:6]}", *extra]
    with peak_memory(client) as peak:
        measurement, peak_rss = run_child(argv)
    grown = client.info("memory")["used_memory"] - before
    found = (measurement["accounts"], measurement["transfers"])
    if found != expected:
        raise BenchError(f"{mode} saw {found} (accounts, transfers); the loaded graph has {expected}")
    print(f"  {mode}: {measurement['seconds']:.3f} s, peak RSS {peak_rss / report.MB:.0f} MB", file=sys.stderr)
    return {"mode": mode, **measurement, "peak_rss": peak_rss,
            "redis_bytes": grown if measurement["redis_bytes"] is None else measurement["redis_bytes"],
            "redis_peak_bytes": peak[0] - before}


def retention(graph: BenchGraph, client: redis.Redis) -> dict[str, Any]:
    """Redis growth over :data:`RETAINED_RUNS` local runs in a row (retention keeps two): after each run,
    and the peak during each, from before the first."""
    settings = graph.settings
    clear_prefix(client, settings.redis.prefix)
    before = client.info("memory")["used_memory"]
    after, peaks = [], []
    for _ in range(RETAINED_RUNS):
        start = client.info("memory")["used_memory"] - before
        run = graph.measure("local", client, [], clear=False)
        peaks.append(start + run["redis_peak_bytes"])
        after.append(client.info("memory")["used_memory"] - before)
    return {"runs": RETAINED_RUNS, "retained": settings.retention.runs, "after": after, "peak": peaks}


def bench_size(settings: Settings, client: redis.Redis, size: str, args: argparse.Namespace) -> dict[str, Any]:
    """Load one size, then run every mode ``args.repeats`` times, interleaved; then the retention runs."""
    print(f"{size}: preparing and loading", file=sys.stderr)
    graph = BenchGraph(settings, size, args.seed, args.amlsim)
    graph.load()
    transactions = graph.transactions
    records = RESULTS / "data" / f"records-{graph.path.stem}.npz"
    prepare_records(settings, graph.as_of, records)
    modes = {"local": [], "local-base": [], "floor-redis-cli": ["--records", str(records)],
             "floor-redis-py": ["--records", str(records)], "floor-redis-cli-hash": ["--records", str(records)]}
    notes = []
    if transactions <= args.naive_max:
        modes = {"naive": []} | modes
    else:
        notes.append(f"naive not run: --naive-max is {args.naive_max:,} transactions")
    modes |= {f"distributed-{k}": [] for k in args.workers}
    if size in args.dag_sizes:
        if problem := stale_workers(stack_settings()):
            notes.append(f"dag not run: {problem}")
        else:
            modes["dag"] = []
    runs = []
    for repeat in range(args.repeats):
        print(f"{size}: repeat {repeat + 1} of {args.repeats}", file=sys.stderr)
        for mode, extra in list(modes.items()):
            try:
                runs.append({"repeat": repeat, **graph.measure(mode, client, extra)})
            except BenchError as exc:
                if mode != "dag":
                    raise
                notes.append(f"dag dropped at this size (the stack's Airflow is shared): {exc}")
                del modes["dag"]
    result = {"name": size if size == AMLSIM else None, "transactions": transactions, "accounts": graph.accounts,
              "as_of": graph.as_of, "load_seconds": graph.load_seconds, "runs": runs, "notes": notes,
              "retention": retention(graph, client)}
    if size == args.profile_size:
        path = RESULTS / f"profile-local-{size}.prof"
        run = graph.measure("local", client, ["--profile", str(path)])
        result["profile"] = {"transactions": transactions, "seconds": run["seconds"], "top": report.top_functions(path)}
    if graph.reloads:
        notes.append(f"another process replaced the graph {graph.reloads} time(s); it was loaded again and the "
                     "affected runs repeated")
    notes += [f"repeated after a failure on the shared stack: {why}" for why in graph.retried]
    return result


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One results document from several runs of the bench on the same machine: the first's metadata,
    every run's commands, notes and sizes (each noting the command and commit that measured it), the
    latest end, and the last profile."""
    results = dict(parts[0])
    results["command"] = "; ".join(part["command"] for part in parts)
    results["notes"] = [note for part in parts for note in part.get("notes", [])]
    results["sizes"] = [{**size, "notes": [f"measured by `{part['command']}` at commit {part.get('commit', '?')}",
                                           *size["notes"]]}
                        for part in parts for size in part["sizes"]]
    results["finished_at"] = max(part["finished_at"] for part in parts)
    results["commit"] = ", ".join(dict.fromkeys(part.get("commit", "?") for part in parts))
    results["profile"] = next((part["profile"] for part in reversed(parts) if part.get("profile")), None)
    return results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="500,10000,100000,amlsim",
                        help=f"transactions per generated graph, or {AMLSIM}, comma separated")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each mode per size")
    parser.add_argument("--workers", default="1,2,4", help="distributed worker counts; empty for none")
    parser.add_argument("--dag-sizes", default="500,100000", help="sizes the dag mode runs at; empty for none")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--amlsim", type=Path, default=AMLSIM_FILE, help="the gzipped AMLSim CSV (native format)")
    parser.add_argument("--naive-max", type=int, default=NAIVE_MAX, help="largest size the naive mode runs at")
    parser.add_argument("--profile-size", help="size to profile, defaults to the largest number up to 100k")
    parser.add_argument("--render", type=Path, nargs="+", metavar="JSON",
                        help="only re-render the docs from results files (the sizes of later files appended)")
    args = parser.parse_args(argv)
    args.sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    if bad := [s for s in args.sizes if s != AMLSIM and not s.isdigit()]:
        parser.error(f"--sizes takes numbers or {AMLSIM}. Got {bad}")
    args.workers = [int(k) for k in args.workers.split(",") if k]
    args.dag_sizes = {s.strip() for s in args.dag_sizes.split(",") if s.strip()}
    if args.profile_size is None:
        args.profile_size = str(max((int(s) for s in args.sizes if s.isdigit() and int(s) <= PROFILE_MAX),
                                    default="")) or None
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        results = merge([json.loads(path.read_text()) for path in args.render])
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
            "commit": commit(),
            "seed": args.seed,
            "repeats": args.repeats,
            "machine": machine(settings),
            "notes": [] if args.workers else ["distributed not run (--workers was empty)"],
            "sizes": [],
        }
        path = RESULTS / f"bench-{started:%Y%m%dT%H%M%S}.json"
        for name in args.sizes:
            size = bench_size(settings, client, name, args)
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
