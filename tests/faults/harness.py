"""Fault injection over the real stack: run ``fx_extract``, break one thing at a seeded random moment,
and compare what readers get with a clean run of the same ``as_of``.

A case passes when the run ends identical to the clean run, or fails loudly and a rerun of the DAG
(what a user does after reading the task log) is identical. The seed is printed, so a failure
replays: ``FX_FAULT_SEED=<seed> pytest tests/faults -k <fault>``.
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psutil

from fx_workers.config import REPO_ROOT
from tests.integration.pipeline_env import dags_test

if TYPE_CHECKING:
    import redis

    from fx_workers.config import Settings
    from ops.fixtures import Slice
    from tests.integration.pipeline_env import Workers

BATCH_SIZE = 40
"""Small batches: a 5,000-transfer graph becomes ~16 batches, so a fault lands mid-run."""
RUN_TIMEOUT_SECONDS = 600


@dataclass(frozen=True)
class Outcome:
    """One row of the fault table."""

    fault: str
    seed: int
    result: str
    seconds: float
    detail: str = ""

    @property
    def ok(self) -> bool:
        if self.fault in MUST_SURVIVE:
            return self.result == "identical to a clean run"
        return self.result in ("identical to a clean run", "failed loudly, rerun identical")


def stack_pid(settings: Settings, service: str) -> int:
    """The PID ``make up`` recorded for a service of the local stack."""
    import json

    return json.loads((settings.stack.dir / "run" / f"{service}.pid").read_text())["pid"]


def restart_service(settings: Settings, service: str, down_seconds: float) -> None:
    """SIGKILL a stack service's process group, leave it down a while, then ``python -m ops up`` brings it back."""
    pid = stack_pid(settings, service)
    for proc in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        proc.send_signal(signal.SIGKILL)
    time.sleep(down_seconds)
    subprocess.run((sys.executable, "-m", "ops", "up"), cwd=REPO_ROOT, check=True, capture_output=True,
                   timeout=300)


Fault = Callable[["Harness", random.Random], str]
"""Injects one fault; returns what it did, for the table."""


def worker_sigkill(harness: Harness, rng: random.Random) -> str:
    victim = rng.choice(list(harness.workers.procs))
    harness.workers.procs[victim].send_signal(signal.SIGKILL)
    harness.workers.procs[victim].wait()
    pause = rng.uniform(0, 3)
    time.sleep(pause)
    harness.workers.restart(victim)  # as the stack, compose or Kubernetes would
    return f"worker {victim} killed, back after {pause:.1f}s"


def worker_sigterm(harness: Harness, rng: random.Random) -> str:
    victim = rng.choice(list(harness.workers.procs))
    harness.workers.procs[victim].send_signal(signal.SIGTERM)
    harness.workers.procs[victim].wait(timeout=120)
    harness.workers.restart(victim)
    return f"worker {victim} stopped warm and restarted"


def worker_lost(harness: Harness, rng: random.Random) -> str:
    victim = rng.choice(list(harness.workers.procs))
    harness.workers.procs[victim].send_signal(signal.SIGTERM)
    harness.lost.append(victim)  # restarted only after the run
    return f"worker {victim} stopped for good"


def neo4j_outage(harness: Harness, rng: random.Random) -> str:
    """Neo4j out of the workers' reach for longer than their retry budget: their batches fail as outages,
    and ``wait_for_workers`` must send them again once Neo4j is back (a rerun does not count)."""
    workers = harness.workers
    failed_before = workers.batches_done("batch failed")
    _replace_workers(workers, {"FX__NEO4J__URI": f"bolt://127.0.0.1:{free_port()}", "FX__WORKERS__RETRY_SECONDS": "2"})
    deadline = time.monotonic() + 120
    while workers.batches_done("batch failed") == failed_before:
        assert time.monotonic() < deadline, "no batch failed while Neo4j was unreachable"
        time.sleep(0.1)
    longer = rng.uniform(0, 5)
    time.sleep(longer)
    _replace_workers(workers, None)
    return f"{workers.batches_done('batch failed') - failed_before} batches failed in an outage {longer:.1f}s longer"


def _replace_workers(workers: Workers, extra: dict[str, str] | None) -> None:
    """Kill every worker and start it again with ``extra`` in its environment."""
    for victim, proc in list(workers.procs.items()):
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        workers.restart(victim, extra)


def free_port() -> int:
    """A loopback port nothing listens on (the OS just handed it out and took it back)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _service(name: str) -> Fault:
    def inject(harness: Harness, rng: random.Random) -> str:
        down = rng.uniform(0, 5)
        restart_service(harness.piece.settings, name, down)
        return f"{name} killed, restarted after {down:.1f}s"

    inject.__name__ = f"{name}_restart"
    return inject


FAULTS: dict[str, Fault] = {f.__name__: f for f in (worker_sigkill, worker_sigterm, worker_lost, _service("kafka"),
                                                    _service("neo4j"), _service("redis"), neo4j_outage)}
MUST_SURVIVE = {"neo4j_outage"}
"""Faults the run itself must get through (identical to a clean run), not only a rerun."""


@dataclass
class Harness:
    """One slice, its Airflow (``dags test``) and its workers; the clean result to compare with."""

    piece: Slice
    env: dict[str, str]
    workers: Workers
    client: redis.Redis
    as_of: int
    expected: dict[str, dict[bytes, bytes]]
    clean_seconds: float
    lost: list[int]

    def run(self, name: str, seed: int) -> Outcome:
        """One case: a run with fault ``name`` at a moment chosen by ``seed``."""
        rng = random.Random(seed)
        started = time.monotonic()
        run = dags_test(self.env, BATCH_SIZE, self.as_of)
        at = rng.randint(1, 8)
        done_before = self.workers.batches_done()
        while self.workers.batches_done() - done_before < at and run.poll() is None:
            if time.monotonic() - started > RUN_TIMEOUT_SECONDS:
                break
            time.sleep(0.02)
        what = FAULTS[name](self, rng) if run.poll() is None else "the run ended before the fault"
        output, _ = run.communicate(timeout=RUN_TIMEOUT_SECONDS)
        keep_log(self.piece.settings, f"{name}-{seed}", output)
        seconds = time.monotonic() - started
        for victim in self.lost:
            self.workers.restart(victim)
        self.lost.clear()
        if run.returncode == 0:
            return self._compare(name, seed, "identical to a clean run", seconds, what)
        failure = _last_error(output)
        rerun = dags_test(self.env, BATCH_SIZE, self.as_of)
        rerun_output, _ = rerun.communicate(timeout=RUN_TIMEOUT_SECONDS)
        if rerun.returncode != 0:
            return Outcome(name, seed, "FAILED, rerun failed too", seconds, f"{what}; {_last_error(rerun_output)}")
        return self._compare(name, seed, "failed loudly, rerun identical", seconds, f"{what}; {failure}")

    def _compare(self, name: str, seed: int, result: str, seconds: float, what: str) -> Outcome:
        if self.piece.snapshot(self.client) != self.expected:
            return Outcome(name, seed, "WRONG: readers get other values than a clean run", seconds, what)
        return Outcome(name, seed, result, seconds, what)


def keep_log(settings: Settings, case: str, output: str) -> None:
    """The run's ``dags test`` output, kept under ``<stack.dir>/faults/`` to read after a failure."""
    path = settings.stack.dir / "faults" / f"{case}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(output)


def _last_error(output: str) -> str:
    """The last line of a failed ``dags test`` that names an error, for the table."""
    lines = [line for line in output.splitlines() if "Error" in line or "error" in line or "FAILED" in line]
    return (lines[-1] if lines else output.strip().splitlines()[-1] if output.strip() else "no output")[-300:]


def table(outcomes: list[Outcome], clean_seconds: float) -> str:
    """The fault table: fault x runs x outcome x time against a clean run."""
    clean = f"{clean_seconds:.0f} s" if clean_seconds else "not in this session"
    rows = [f"| fault | runs | outcome | median s (clean run: {clean}) | seeds |",
            "| --- | ---: | --- | ---: | --- |"]
    by_fault: dict[tuple[str, str], list[Outcome]] = {}
    for outcome in outcomes:
        by_fault.setdefault((outcome.fault, outcome.result), []).append(outcome)
    for (fault, result), group in by_fault.items():
        times = sorted(o.seconds for o in group)
        rows.append(f"| {fault} | {len(group)} | {result} | {times[len(times) // 2]:.0f} | "
                    f"{', '.join(str(o.seed) for o in group)} |")
    return "\n".join(rows)
