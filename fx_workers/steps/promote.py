"""The last step of a run: record the verdict, and only for a verified run promote it, pointing ``latest`` at it
(one ``SET``); then retire runs beyond ``retention.runs``. A failed run changes nothing readers see."""

from __future__ import annotations

import json
import logging
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from fx_workers.store.keys import RedisKeys
from fx_workers.store.runs import RunRegistry, RunStatus

if TYPE_CHECKING:
    import redis

    from fx_workers.config import Settings
    from fx_workers.steps.verify import VerifyReport

log = logging.getLogger(__name__)


def registry_of(settings: Settings, client: redis.Redis) -> RunRegistry:
    return RunRegistry(client, RedisKeys(settings.redis.prefix))


def conclude(settings: Settings, client: redis.Redis, report: VerifyReport, **manifest: object) -> None:
    """Write the verdict into the manifest and, when verification passed, promote the run to ``latest``.

    :param manifest: more manifest fields (timings)
    """
    registry = registry_of(settings, client)
    finished = {"finished_at": datetime.now(UTC).isoformat(timespec="seconds"), **manifest}
    if not report.ok:
        registry.update(report.run_id, {"status": RunStatus.FAILED, "failures": json.dumps(report.failures[:50]),
                                        **finished})
        log.error("run %s failed verification; %s still names run %s\n%s", report.run_id,
                  registry.keys.latest, registry.latest(), report)
        return
    size = registry.size_estimate(report.run_id, report.node_sample, report.edge_sample, report.accounts,
                                  report.transfers)
    registry.update(report.run_id, {"status": RunStatus.VERIFIED, "size_bytes": size, **finished})
    registry.promote(report.run_id)
    log.info("promoted run %s: %s now names it", report.run_id, registry.keys.latest)


def retire(settings: Settings, client: redis.Redis) -> list[str]:
    """Delete the runs retention does not keep; returns their ids."""
    started = time.perf_counter()
    deleted = registry_of(settings, client).retire(settings.retention.runs, settings.retention.stale_hours * 3600)
    log.info("retention kept %d promoted runs; deleted %s in %.1fs", settings.retention.runs, deleted or "none",
             time.perf_counter() - started)
    return deleted
