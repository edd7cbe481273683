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
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any
from unittest import mock

import redis.client

import fx_workers.engine.catalogue
import fx_workers.steps.local
import fx_workers.steps.write
import fx_workers.store.writer
from bench.dag import run_dag
from bench.distributed import run_distributed
from bench.floor import run_floor
from bench.measure import BenchError, Measurement, PhaseClock
from bench.naive import run_naive
from fx_workers.config import Settings, load_settings
from fx_workers.steps.local import run_local

if TYPE_CHECKING:
    from collections.abc import Iterator

PRELOADED = ("neo4j", "redis", "confluent_kafka")
"""Imported before any clock starts: the package imports them lazily, and no mode should time that."""
LOCAL_PHASES = [
    (fx_workers.steps.local, "make_plan", "plan"),
    (fx_workers.steps.local, "read_graph", "neo4j"),
    (fx_workers.engine.catalogue.Catalogue, "compute", "compute"),
    (fx_workers.store.writer.BatchWriter, "write", "write: encode"),
    (redis.client.Pipeline, "execute", "write: redis"),
    (fx_workers.steps.write, "part_stats", "stats"),
    (fx_workers.steps.local, "record_aggregate", "aggregate"),
    (fx_workers.steps.local, "verify_run", "verify"),
    (fx_workers.steps.local, "conclude", "publish"),
    (fx_workers.steps.local, "retire", "retire"),
]
"""Where ``run_local`` spends its time: the plan, the graph reads (in the prefetch thread, so they
overlap), the feature engine, building the ``HSET`` commands and their checksum, the pipelines' round
trips (redis-py packs and sends there), the batch statistics, the aggregation, the verification, the
flip of ``latest`` and retention. The remainder is the main thread waiting for the next batch's read."""
OPAQUE = ("plan", "aggregate", "verify", "publish", "retire")
"""Steps whose own Redis pipelines are theirs, not the batch writes'."""


@contextmanager
def profiled(path: Path | None) -> Iterator[None]:
    """cProfile the block into ``path`` (no-op without one), paused during verification."""
    if path is None:
        yield
        return
    profiler = cProfile.Profile()
    verify_run = fx_workers.steps.local.verify_run

    def unprofiled(*args: Any, **kwargs: Any) -> Any:
        profiler.disable()
        try:
            return verify_run(*args, **kwargs)
        finally:
            profiler.enable()

    with mock.patch.object(fx_workers.steps.local, "verify_run", unprofiled):
        profiler.enable()
        try:
            yield
        finally:
            profiler.disable()
            profiler.dump_stats(path)


def measure_local(settings: Settings, *, as_of: int, profile: Path | None = None) -> Measurement:
    """``fx extract --local`` (:func:`~fx_workers.steps.local.run_local`) from the plan to the run verified
    and live, split by phase (retention after the flip is a phase but not part of the time).

    :param profile: also write a cProfile of the run (not the verification) there, defaults to none
    :raises BenchError: when the run does not pass its own verification
    """
    clock = PhaseClock()
    started = time.perf_counter()
    with profiled(profile), clock.patch(LOCAL_PHASES, opaque=OPAQUE):
        summary = run_local(settings, as_of=as_of)
    seconds = time.perf_counter() - started
    if not summary.verification.ok:
        raise BenchError(str(summary.verification))
    phases = dict(clock.seconds)
    phases["wait for neo4j"] = seconds - sum(v for k, v in phases.items() if not k.endswith("(thread)"))
    seconds -= phases["retire"]
    return Measurement(seconds, summary.accounts, summary.transfers, phases, phases["verify"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.modes", description=__doc__)
    parser.add_argument("mode", help="naive, local, local-base (no pattern family), floor-redis-cli, "
                                     "floor-redis-py, distributed-K (K workers) or dag")
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
        measurement = measure_local(settings, as_of=args.as_of, profile=args.profile)
    elif args.mode == "local-base":
        base = settings.extraction.model_copy(update={"patterns": False})
        measurement = measure_local(settings.model_copy(update={"extraction": base}), as_of=args.as_of)
    elif args.mode.startswith("distributed-"):
        measurement = run_distributed(as_of=args.as_of, run_id=args.run_id, workers=int(args.mode.split("-")[1]))
    elif args.mode == "dag":
        measurement = run_dag(as_of=args.as_of)
    elif args.mode.startswith("floor-"):
        measurement = run_floor(settings, as_of=args.as_of, run_id=args.run_id, records_path=args.records,
                                writer=args.mode.removeprefix("floor-"))
    else:
        parser.error(f"unknown mode {args.mode!r}")
    json.dump(asdict(measurement), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
