"""What one timed run returns, a clock for the phases of unchanged package code, and peak RSS of children."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import threading
import time
from collections import defaultdict
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from unittest import mock

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


BENCH_ENV = {"FX__REDIS__DB": "1", "FX__REDIS__PREFIX": "fxbench"}
"""Where the bench writes (defaults for it and its children; the environment overrides them): not
where the stack's users keep their features."""


class BenchError(RuntimeError):
    """A benchmark run failed or measured something other than it should have; the message says what."""


@dataclass(frozen=True)
class Measurement:
    """One timed run of one mode, as a child process prints it (JSON)."""

    seconds: float
    """Wall time of the run: for the pipeline modes from the plan to the run verified and live, for
    naive and the floors from the first read to the last record in Redis."""
    accounts: int
    transfers: int
    """Transfer records written; the orchestrator checks it against the graph it loaded."""
    phases: dict[str, float] = field(default_factory=dict)
    """Seconds per phase inside ``seconds`` (exclusive: a phase does not include the phases it calls),
    except phases marked ``(thread)``, which overlap the others."""
    verify_seconds: float | None = None
    """Verification's share of ``seconds`` (it is inside the run now, before the flip)."""
    worker_peak_rss: list[int] = field(default_factory=list)
    """Peak RSS in bytes of each worker process (distributed mode only)."""
    redis_bytes: int | None = None
    """Bytes the run added to Redis when the child knows better than ``used_memory`` (dag mode: the
    manifest's estimate, since the DAG's retire task frees older runs meanwhile)."""
    tasks: dict[str, dict[str, float]] = field(default_factory=dict)
    """dag mode: seconds per part of each task's wall time (see :func:`bench.dag.task_breakdown`)."""


class PhaseClock:
    """Exclusive seconds per phase, for package functions wrapped by :meth:`patch` (behaviour unchanged).

    When a wrapped function calls another, the caller's phase pauses, so phases add up to at most
    the wall time. An opaque phase (verification) swallows the phases of everything it calls. The
    stack belongs to the thread that made the clock; a wrapped call from another thread (the local
    path's prefetching reader) is timed whole, as its phase plus `` (thread)``, and overlaps the rest.
    """

    def __init__(self, now: Callable[[], float] = time.perf_counter) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._now = now
        self._stack: list[tuple[str, bool]] = []
        self._since = 0.0
        self._owner = threading.get_ident()
        self._lock = threading.Lock()

    def _switch(self) -> None:
        now = self._now()
        if self._stack:
            self.seconds[self._stack[-1][0]] += now - self._since
        self._since = now

    def wrap(self, phase: str, fn: Callable[..., Any], *, opaque: bool = False) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            if threading.get_ident() != self._owner:
                started = self._now()
                try:
                    return fn(*args, **kwargs)
                finally:
                    with self._lock:
                        self.seconds[f"{phase} (thread)"] += self._now() - started
            if self._stack and self._stack[-1][1]:
                return fn(*args, **kwargs)
            self._switch()
            self._stack.append((phase, opaque))
            try:
                return fn(*args, **kwargs)
            finally:
                self._switch()
                self._stack.pop()

        return timed

    @contextmanager
    def patch(self, targets: list[tuple[object, str, str]], opaque: tuple[str, ...] = ()) -> Iterator[None]:
        """Wrap ``getattr(owner, name)`` as ``phase`` for each ``(owner, name, phase)`` while in the block."""
        with ExitStack() as stack:
            for owner, name, phase in targets:
                wrapped = self.wrap(phase, getattr(owner, name), opaque=phase in opaque)
                stack.enter_context(mock.patch.object(owner, name, wrapped))
            yield


def wait_with_rss(process: subprocess.Popen) -> tuple[int, int]:
    """Reap a child: its exit code and peak RSS in bytes (from ``wait4``, so nothing is sampled)."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_maxrss * 1024


def run_child(argv: list[str], env: dict[str, str] | None = None) -> tuple[dict[str, Any], int]:
    """Run a child that prints one JSON object; return the object and the child's peak RSS in bytes.

    :raises BenchError: when the child exits non-zero
    """
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env)
    assert process.stdout is not None
    output = process.stdout.read()
    code, rss = wait_with_rss(process)
    if code != 0:
        raise BenchError(f"{' '.join(argv)} exited {code}")
    return json.loads(output), rss
