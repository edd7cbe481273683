"""The end of ``make demo``: trigger ``fx_extract`` through Airflow, follow it, show the result.

Runs with ``.stack/env`` applied (the Makefile sources it), so the ``airflow`` CLI talks to the
stack. Usage: ``.venv/bin/python -m ops.demo``
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

from fx_workers.config import load_settings
from fx_workers.store.client import open_redis
from fx_workers.store.keys import RedisKeys
from fx_workers.store.reader import FeatureReader
from fx_workers.store.runs import RunRegistry
from ops.airflow import AirflowApi, airflow_home, api_url, passwords_file

if TYPE_CHECKING:
    from fx_workers.config import Settings

DAG_ID = "fx_extract"
TIMEOUT_SECONDS = 900
SHOWN_FEATURES = ("out_count", "in_count", "out_amount_sum", "in_amount_sum", "reciprocity", "count_24h")
SHOWN_ACCOUNTS = 5


def airflow(*args: str) -> str:
    """Run the ``airflow`` CLI; its stdout."""
    return subprocess.run(("airflow", *args), check=True, capture_output=True, text=True).stdout


def progress_lines(logs: Path) -> list[str]:
    """The trigger's progress lines so far, from the task's log files."""
    lines = []
    for path in sorted(logs.glob("task_id=wait_for_workers/attempt=*")):
        for line in path.read_text().splitlines():
            if '"progress run=' in line:
                lines.append(json.loads(line)["event"])
    return lines


def follow(api: AirflowApi, run_id: str, logs: Path) -> str:
    """Print task state changes and the trigger's progress lines until the run ends; its state."""
    path = f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id)}"
    seen: dict[str, str] = {}
    shown = 0
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while True:
        state = api.request(path)["state"]
        for ti in api.request(f"{path}/taskInstances")["task_instances"]:
            if ti["state"] and seen.get(ti["task_id"]) != ti["state"]:
                seen[ti["task_id"]] = ti["state"]
                print(f"demo:   {ti['task_id']:<17} {ti['state']}", flush=True)
        for line in progress_lines(logs)[shown:]:
            print(f"demo:     {line}", flush=True)
            shown += 1
        if state in ("success", "failed") or time.monotonic() > deadline:
            return state
        time.sleep(1)


def show_result(settings: Settings, dag_run_id: str) -> None:
    """The manifest of the fx run this DAG run made, and a few accounts' features as readers get them."""
    client, keys = open_redis(settings.redis), RedisKeys(settings.redis.prefix)
    registry = RunRegistry(client, keys)
    run = next((r for r in registry.list() if r.get("dag_run_id") == dag_run_id), None)
    if run is None:
        print(f"demo: no run manifest names DAG run {dag_run_id} (fx runs list)")
        return
    print(f"demo: run manifest {keys.run(run.run_id)} ({keys.latest} = {registry.latest()}):")
    for key in ("status", "as_of", "accounts_written", "transfers", "batches", "wait_seconds", "drift_verdict"):
        print(f"demo:   {key:<17} {run.get(key)}")
    ids = sorted(json.loads(client.get(keys.of_run(run.run_id).plan_batch(0))))[:SHOWN_ACCOUNTS]
    print(f"demo: features of {len(ids)} accounts (all of them: fx features get ID):")
    print("demo:   " + "account".ljust(10) + "".join(name.rjust(16) for name in SHOWN_FEATURES))
    for node_id, record in zip(ids, FeatureReader(client, keys, run.run_id).nodes(ids), strict=True):
        print("demo:   " + node_id.ljust(10) + "".join(f"{record[name]:>16.6g}" for name in SHOWN_FEATURES))


def main() -> int:
    settings = load_settings()
    api = AirflowApi(settings)
    airflow("dags", "unpause", DAG_ID)
    started = time.monotonic()
    out = airflow("dags", "trigger", DAG_ID, "--conf", json.dumps({"as_of": int(time.time())}), "-o", "json")
    run_id = json.loads(out.strip().splitlines()[-1])[0]["dag_run_id"]
    print(f"demo: triggered {DAG_ID} run {run_id} (a scheduled run may go first: max_active_runs=1)")
    state = follow(api, run_id, airflow_home(settings) / "logs" / f"dag_id={DAG_ID}" / f"run_id={run_id}")
    run = api.request(f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id)}")
    queued, ended = (datetime.fromisoformat(run[k]).timestamp() for k in ("queued_at", "end_date"))
    print(f"demo: run {run_id} {state} after {time.monotonic() - started:.0f} s "
          f"({ended - queued:.1f} s from trigger to end, by Airflow's timestamps)")
    if state == "success":
        report = api.request(f"/api/v2/dags/{DAG_ID}/dagRuns/{quote(run_id)}/taskInstances/verify/xcomEntries/"
                             "return_value")["value"]
        print(f"demo: verification: {report}")
        show_result(settings, run_id)
    print(f"demo: Airflow UI {api_url(settings)} (user admin, password in {passwords_file(settings)})")
    return 0 if state == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
