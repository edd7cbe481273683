"""The stack's pool of ``workers.count`` extraction workers (``python -m fx_workers``)."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

from ops.process import Service

if TYPE_CHECKING:
    from fx_workers.config import Settings


def worker_services(settings: Settings) -> list[Service]:
    """One service per worker, healthy once its health key says so; each needs the whole stack up."""
    return [Service(name=f"worker-{i}", command=(sys.executable, "-m", "fx_workers", "--worker-id", str(i)),
                    health=lambda i=i: _worker_health(settings, str(i)), needs=("kafka", "neo4j", "redis"))
            for i in range(settings.workers.count)]


def _worker_health(settings: Settings, worker_id: str) -> str:
    from fx_workers.worker import check_health

    healthy, detail = check_health(settings, worker_id)
    if not healthy:
        raise RuntimeError(detail)
    return f"worker {worker_id}: {json.loads(detail)['batches']} batches"
