"""A worker's health key, as arq keeps one: rewritten every interval with a TTL of interval + 1 s and
its counters, only while the loop is alive, so a stuck or stopped worker shows as unhealthy within
seconds (``python -m fx_workers --check``, the compose healthcheck)."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from fx_workers.protocol import BatchStatus
from fx_workers.store.client import open_redis
from fx_workers.store.keys import RedisKeys
from fx_workers.worker.transport import MAX_POLL_INTERVAL_SECONDS

if TYPE_CHECKING:
    from collections.abc import Callable
    from threading import Event

    from redis import Redis

    from fx_workers.config import Settings
    from fx_workers.protocol import CompletionSignal

log = logging.getLogger(__name__)

HEALTH_INTERVAL_SECONDS = 5.0
QUIET_POLL_SECONDS = 30.0
"""The health key goes stale when the loop has not polled for this long outside a batch."""


@dataclass
class WorkerStats:
    """Counters published in the health key."""

    worker_id: str
    pid: int = field(default_factory=os.getpid)
    host: str = field(default_factory=socket.gethostname)
    started: float = field(default_factory=time.time)
    batches: int = 0
    failed: int = 0
    dead_letters: int = 0
    accounts: int = 0
    transfers: int = 0
    current: str | None = None

    def count(self, signal: CompletionSignal | None, dead_letters: int = 0) -> None:
        """Count a concluded request: its dead letters, and its batch done or failed."""
        self.dead_letters += dead_letters
        if signal is None:
            return
        if signal.status is BatchStatus.FAILED:
            self.failed += 1
            return
        self.batches += 1
        self.accounts += signal.accounts
        self.transfers += signal.transfers


def is_alive(quiet_seconds: float, current: str | None) -> bool:
    """The loop polled recently, or it is inside a batch that may still finish."""
    return quiet_seconds < QUIET_POLL_SECONDS or (current is not None and quiet_seconds < MAX_POLL_INTERVAL_SECONDS)


def record_health(redis: Redis, key: str, stats: WorkerStats, quiet: Callable[[], float], stopping: Event) -> None:
    """Until ``stopping``, write ``stats`` to ``key`` every interval while the loop is alive (``quiet``: seconds
    since it last polled)."""
    ttl_ms = int((HEALTH_INTERVAL_SECONDS + 1) * 1000)
    while not stopping.is_set():
        if not is_alive(quiet(), stats.current):
            log.warning("health key %s not refreshed: the loop has not polled for %.0fs", key, quiet())
        else:
            try:
                redis.set(key, json.dumps(asdict(stats) | {"updated": time.time()}), px=ttl_ms)
            except Exception as exc:
                log.warning("health key %s not written: %s", key, exc)
        stopping.wait(HEALTH_INTERVAL_SECONDS)


def check_health(settings: Settings, worker_id: str) -> tuple[bool, str]:
    """Whether worker ``worker_id`` wrote its health key within the TTL, and what it says."""
    key = RedisKeys(settings.redis.prefix).worker_health(worker_id)
    value = open_redis(settings.redis).get(key)
    if value is None:
        return False, f"{key} is missing or expired"
    return True, value.decode()
