"""The ``dag`` mode: one whole ``fx_extract`` run through the stack's own Airflow, split by task.

It triggers the DAG through the REST API with the bench's ``as_of`` and follows it to the end. The
stack's scheduler, triggerer and workers run it with their default configuration (Redis db 0,
prefix ``fx``, the default topics), on the graph the bench loaded under the default labels: the
realistic measurement, not an isolated one. The DAG is unpaused for the run and paused again if it
was; a run already active is waited for, since ``max_active_runs`` is 1.

Where each task's wall time goes comes from the API's task instances (when the scheduler queued
it, when it started and ended) and from the timestamps of its log lines (when the task process
first logged, finished parsing the DAG file, started and finished the operator's code).
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections import defaultdict
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import fx_workers.protocol
from bench.measure import BENCH_ENV, BenchError, Measurement
from fx_workers.config import REPO_ROOT, load_settings
from fx_workers.store.client import open_redis
from fx_workers.store.keys import RedisKeys
from fx_workers.store.runs import RunRegistry
from ops.airflow import AirflowApi, airflow_home

if TYPE_CHECKING:
    from fx_workers.config import Settings

DAG_ID = "fx_extract"
DAG_PATH = f"/api/v2/dags/{DAG_ID}"
POLL_SECONDS = 0.5
RUN_TIMEOUT_SECONDS = 1800.0
WORKER_TIMEOUT_MINUTES = 10
"""The run's ``timeout_minutes``: a run whose workers cannot do their batches fails after this."""
STARTUP, EXECUTE = "startup", "execute"
TRIGGER = "[trigger] "
"""Prefix of the lines read from a task's trigger log."""
MARKERS = {
    "::group::Pre Execute": STARTUP,
    "Worker startup parse complete": EXECUTE,
    "::group::Post Execute": "post",
    "Pausing task as DEFERRED": "to trigger",
    f"{TRIGGER}trigger completed": "to resume",
    TRIGGER: "trigger",
}
"""Log events that start a part of a task's life, first match wins: from the task process's first line
to the DAG file parsed (imports, parsing), the operator's code, what follows it (XCom push); for a
deferred task, the wait for the triggerer to start the trigger, the trigger's run, and the wait for the
scheduler to resume the task in a new process."""


class StackApi(AirflowApi):
    """The stack's REST API, with PATCH (pausing) on top of GET and POST."""

    def patch(self, path: str, body: dict[str, Any]) -> Any:
        request = urllib.request.Request(f"{self.base}{path}", data=json.dumps(body).encode(), method="PATCH",
                                         headers={"Content-Type": "application/json",
                                                  "Authorization": f"Bearer {self.token()}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)


def stack_settings() -> Settings:
    """The settings the stack's Airflow runs with: the bench's Redis overrides removed."""
    return load_settings(environ={k: v for k, v in os.environ.items() if k not in BENCH_ENV})


def stale_workers(settings: Settings) -> str | None:
    """Why the stack's workers cannot run the DAG, or None: one is not healthy, or it started before the
    message protocol of the stack's checkout (the one holding ``stack.dir``) last changed, so it would
    dead-letter the requests."""
    client = open_redis(settings.redis)
    keys = RedisKeys(settings.redis.prefix)
    checkout = settings.stack.dir.resolve().parent
    changed = (checkout / Path(fx_workers.protocol.__file__).relative_to(REPO_ROOT)).stat().st_mtime
    for worker_id in range(settings.workers.count):
        health = client.get(keys.worker_health(str(worker_id)))
        if health is None:
            return f"stack worker {worker_id} is not healthy (no {keys.worker_health(str(worker_id))}; make up)"
        started = json.loads(health)["started"]
        if started < changed:
            return (f"stack worker {worker_id} (pid {json.loads(health)['pid']}) started at "
                    f"{datetime.fromtimestamp(started, UTC):%H:%M:%S} UTC, before fx_workers/protocol.py changed at "
                    f"{datetime.fromtimestamp(changed, UTC):%H:%M:%S} UTC: it runs the old protocol; restart it")
    return None


def instant(text: str | None) -> float:
    """An API or log timestamp as epoch seconds.

    :raises BenchError: when it is missing (the task never got there)
    """
    if text is None:
        raise BenchError("a task instance has no start or end date; the run did not finish normally")
    return datetime.fromisoformat(text).timestamp()


def wait_for(api: StackApi, predicate: str, check: Any) -> Any:
    """Poll until ``check()`` returns something truthy; return it.

    :raises BenchError: after :data:`RUN_TIMEOUT_SECONDS`, naming ``predicate``
    """
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while not (result := check()):
        if time.monotonic() > deadline:
            raise BenchError(f"waited {RUN_TIMEOUT_SECONDS:.0f}s for {predicate}")
        time.sleep(POLL_SECONDS)
    return result


def log_parts(lines: list[tuple[float, str]]) -> dict[str, float]:
    """Seconds between a task's first and last log line, by part (:data:`MARKERS`)."""
    parts: dict[str, float] = defaultdict(float)
    current = STARTUP
    for (at, event), (following, _) in pairwise(lines):
        current = next((part for prefix, part in MARKERS.items() if event.startswith(prefix)), current)
        parts[current] += following - at
    return dict(parts)


def read_log(path: Path, tag: str = "") -> list[tuple[float, str]]:
    """``(epoch seconds, tag + event)`` of each JSON line of a task log; other lines skipped."""
    lines = []
    for raw in path.read_text().splitlines():
        try:
            record = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and "timestamp" in record:
            lines.append((instant(record["timestamp"]), tag + str(record.get("event", ""))))
    return lines


def task_log(logs: Path, task_id: str, attempt: int) -> list[tuple[float, str]]:
    """A task attempt's log lines and its triggers' (tagged :data:`TRIGGER`), in time order."""
    path = logs / f"task_id={task_id}" / f"attempt={attempt}.log"
    lines = read_log(path) if path.exists() else []
    for trigger in path.parent.glob(f"{path.name}.trigger.*.log"):
        lines += read_log(trigger, TRIGGER)
    return sorted(lines)


def task_breakdown(ti: dict[str, Any], log: list[tuple[float, str]], upstream_end: float) -> dict[str, float]:
    """Where one task instance's wall time went, in seconds, from its upstream's end to its own end.

    ``schedule``: upstream done to queued (the scheduler's loop); ``queue``: queued to started (the
    executor); ``spawn``: started to the task process's first log line; then :func:`log_parts`;
    ``finish``: the last log line to the recorded end. A deferred task is queued again to resume, and
    the API keeps only that time: then ``schedule`` runs to its start, and the queueing to resume is
    in ``to resume``.
    """
    queued, started, ended = instant(ti["queued_when"]), instant(ti["start_date"]), instant(ti["end_date"])
    queued = min(queued, started)
    parts = {"schedule": queued - upstream_end, "queue": started - queued}
    if log:
        parts |= {"spawn": log[0][0] - started, **log_parts(log), "finish": ended - log[-1][0]}
    else:
        parts["run"] = ended - started
    return parts


def breakdown(api: StackApi, run: dict[str, Any], logs: Path) -> dict[str, dict[str, float]]:
    """:func:`task_breakdown` of every task of ``run``, in the order they ran."""
    instances = api.request(f"{DAG_PATH}/dagRuns/{quote(run['dag_run_id'])}/taskInstances")["task_instances"]
    tasks = {}
    upstream_end = instant(run["queued_at"])
    for ti in sorted(instances, key=lambda ti: instant(ti["start_date"])):
        tasks[ti["task_id"]] = task_breakdown(ti, task_log(logs, ti["task_id"], ti["try_number"]), upstream_end)
        upstream_end = instant(ti["end_date"])
    tasks["(run end)"] = {"finish": instant(run["end_date"]) - upstream_end}
    return tasks


def run_dag(*, as_of: int) -> Measurement:
    """Trigger ``fx_extract`` with ``as_of``, wait for it to succeed; timed from trigger to success.

    :raises BenchError: when the run fails, or its manifest is not found
    """
    settings = stack_settings()
    api = StackApi(settings)
    was_paused = api.request(DAG_PATH)["is_paused"]
    if was_paused:
        api.patch(DAG_PATH, {"is_paused": False})
    try:
        wait_for(api, "earlier fx_extract runs to end", lambda: not api.request(
            f"{DAG_PATH}/dagRuns?state=queued&state=running")["total_entries"])
        triggered = api.request(f"{DAG_PATH}/dagRuns", {"logical_date": None, "conf": {
            "as_of": as_of, "timeout_minutes": WORKER_TIMEOUT_MINUTES}})
        run_path = f"{DAG_PATH}/dagRuns/{quote(triggered['dag_run_id'])}"
        run = wait_for(api, f"run {triggered['dag_run_id']}",
                       lambda: (r := api.request(run_path))["state"] in ("success", "failed") and r)
    finally:
        if was_paused:
            api.patch(DAG_PATH, {"is_paused": True})
    logs = airflow_home(settings) / "logs" / f"dag_id={DAG_ID}" / f"run_id={run['dag_run_id']}"
    if run["state"] != "success":
        raise BenchError(f"fx_extract run {run['dag_run_id']} {run['state']}; see {logs}")
    tasks = breakdown(api, run, logs)
    registry = RunRegistry(open_redis(settings.redis), RedisKeys(settings.redis.prefix))
    manifest = next((r.manifest for r in registry.list() if r.get("dag_run_id") == run["dag_run_id"]), None)
    if manifest is None:
        raise BenchError(f"no run manifest names dag run {run['dag_run_id']}")
    phases = {task: sum(parts.values()) for task, parts in tasks.items()}
    verify = tasks.get("verify", {})
    return Measurement(instant(run["end_date"]) - instant(run["queued_at"]), int(manifest["accounts_written"]),
                       int(manifest["transfers"]), phases, verify.get(EXECUTE), redis_bytes=int(manifest["size_bytes"]),
                       tasks=tasks)
