"""One timed run of one mode, in its own process so its peak RSS is its own.

``python -m bench.modes MODE --as-of T --run-id ID [...]`` prints a :class:`~bench.measure.Measurement`
as JSON on stdout. :mod:`bench.run` starts it; it is not meant to be run by hand.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib
import json
import sys
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

import fx_workers.engine.graph
import fx_workers.extract
import fx_workers.sink
import fx_workers.verify
from bench.distributed import run_distributed
from bench.floor import run_floor
from bench.measure import BenchError, Measurement, PhaseClock
from bench.naive import run_naive
from fx_workers.config import Settings, load_settings
from fx_workers.extract import run_local

if TYPE_CHECKING:
    from collections.abc import Iterator

PRELOADED = ("neo4j", "redis", "confluent_kafka")
"""Imported before any clock starts: the package imports them lazily, and no mode should time that."""
LOCAL_PHASES = [
    (fx_workers.extract, "read_accounts", "neo4j"),
    (fx_workers.extract, "read_batch", "neo4j"),
    (fx_workers.engine.graph, "_edges", "decode"),
    (fx_workers.engine.graph, "as_array", "decode"),
    (fx_workers.extract, "compute_features", "compute"),
    (fx_workers.sink.RedisSink, "write", "encode"),
    (fx_workers.sink.RedisSink, "_send", "redis"),
    (fx_workers.verify, "verify_run", "verify"),
]
"""Where ``run_local`` spends its time: the Neo4j driver (query and records), records into numpy
arrays, the feature engine, values into RESP, and the Redis round trips; verification apart."""


@contextmanager
def profiled(path: Path | None) -> Iterator[None]:
    """cProfile the block into ``path`` (no-op without one), paused during verification."""
    if path is None:
        yield
        return
    profiler = cProfile.Profile()
    verify_run = fx_workers.verify.verify_run

    def unprofiled(*args: Any, **kwargs: Any) -> Any:
        profiler.disable()
        try:
            return verify_run(*args, **kwargs)
        finally:
            profiler.enable()

    with mock.patch.object(fx_workers.verify, "verify_run", unprofiled):
        profiler.enable()
        try:
            yield
        finally:
            profiler.disable()
            profiler.dump_stats(path)


def measure_local(settings: Settings, *, as_of: int, run_id: str, profile: Path | None = None) -> Measurement:
    """``fx extract --local`` (:func:`~fx_workers.extract.run_local`), split by phase.

    :param profile: also write a cProfile of the extraction (not the verification) there, defaults to none
    :raises BenchError: when the run does not pass its own verification
    """
    clock = PhaseClock()
    with profiled(profile), clock.patch(LOCAL_PHASES, opaque=("verify",)):
        summary = run_local(settings, as_of=as_of, run_id=run_id)
    if not summary.verification.ok:
        raise BenchError(str(summary.verification))
    phases = dict(clock.seconds)
    verify_seconds = phases.pop("verify")
    return Measurement(summary.seconds, summary.accounts, summary.transfers, phases, verify_seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.modes", description=__doc__)
    parser.add_argument("mode", help="naive, local, floor-redis-cli, floor-redis-py or distributed-K (K workers)")
    parser.add_argument("--as-of", type=int, required=True)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--records", type=Path, help="floor: the .npz of prepared records")
    parser.add_argument("--profile", type=Path, help="local: write a cProfile here")
    args = parser.parse_args(argv)
    for module in PRELOADED:
        importlib.import_module(module)
    settings = load_settings()
    if args.mode == "naive":
        measurement = run_naive(settings, as_of=args.as_of, run_id=args.run_id)
    elif args.mode == "local":
        measurement = measure_local(settings, as_of=args.as_of, run_id=args.run_id, profile=args.profile)
    elif args.mode.startswith("distributed-"):
        measurement = run_distributed(as_of=args.as_of, run_id=args.run_id, workers=int(args.mode.split("-")[1]))
    elif args.mode.startswith("floor-"):
        measurement = run_floor(settings, as_of=args.as_of, run_id=args.run_id, records_path=args.records,
                                writer=args.mode.removeprefix("floor-"))
    else:
        parser.error(f"unknown mode {args.mode!r}")
    json.dump(asdict(measurement), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
