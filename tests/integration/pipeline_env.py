"""The distributed tests' pieces around a private slice of the shared stack (``ops.fixtures.Slice``):
its workers, ``airflow dags test`` with an Airflow metadata database of its own, and the stack's own
Airflow driven as a user would.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from datetime import datetime
from typing import TYPE_CHECKING

from fx_workers.config import REPO_ROOT
from fx_workers.store.keys import RedisKeys
from fx_workers.store.runs import RunRegistry
from ops import airflow
from ops.fixtures import AS_OF

if TYPE_CHECKING:
    from pathlib import Path

    import redis
    from neo4j import Driver

    from fx_workers.config import Settings
    from ops.fixtures import Slice

AIRFLOW = str(REPO_ROOT / ".venv" / "bin" / "airflow")


class Workers:
    """Worker processes of a slice, logging to files, that a test can kill and restart."""

    def __init__(self, piece: Slice, folder: Path, count: int = 2) -> None:
        self.piece, self.folder = piece, folder
        self.procs = {i: piece.start_worker(i, self.log(i)) for i in range(count)}

    def log(self, worker_id: int) -> Path:
        return self.folder / f"worker-{worker_id}.log"

    def batches_done(self, line: str = "batch done") -> int:
        """``batch done`` (or other) lines in every worker's log so far."""
        return sum(self.log(i).read_text().count(line) for i in self.procs if self.log(i).exists())

    def restart(self, worker_id: int, extra: dict[str, str] | None = None) -> None:
        self.procs[worker_id] = self.piece.start_worker(worker_id, self.log(worker_id), extra)

    def stop(self) -> dict[int, int | None]:
        """SIGTERM each live worker (a warm stop) and return the exit codes (None: it was killed)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        return {i: proc.wait(timeout=60) for i, proc in self.procs.items()}


def dags_test(env: dict[str, str], batch_size: int, as_of: int = AS_OF,
              timeout_minutes: int = 5) -> subprocess.Popen[str]:
    """``airflow dags test fx_extract``: the whole DAG in one process, its output piped."""
    conf = json.dumps({"as_of": as_of, "batch_size": batch_size, "timeout_minutes": timeout_minutes})
    return subprocess.Popen((AIRFLOW, "dags", "test", "fx_extract", "--conf", conf), env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO_ROOT)


def stack_env(settings: Settings) -> dict[str, str]:
    """What ``source .stack/env`` gives a shell: the stack's own Airflow and fx settings."""
    out = subprocess.run(("bash", "-c", f"source {settings.stack.dir / 'env'} && env -0"), capture_output=True,
                         check=True)
    return dict(line.split("=", 1) for line in out.stdout.decode().split("\0") if "=" in line)


class StackAirflow:
    """The stack's own Airflow (scheduler, triggerer, LocalExecutor) on the stack's graph, driven as a user
    would: ``airflow dags trigger`` to start a run, the REST API to watch and clear it."""

    DAG = "/api/v2/dags/fx_extract"

    def __init__(self, settings: Settings) -> None:
        self.settings, self.env, self.api = settings, stack_env(settings), airflow.AirflowApi(settings)

    def prepare(self, driver: Driver) -> None:
        """Load the bundled sample graph when the stack has none, unpause the DAG and let any run it
        scheduled on unpausing finish, so a test's runs are the only ones."""
        from fx_workers.tools.load import load_csv

        graph = self.settings.graph
        accounts = driver.execute_query(f"MATCH (a:{graph.account_label}) RETURN count(a) AS n",
                                        database_=self.settings.neo4j.database).records[0]["n"]
        if accounts == 0:
            load_csv(REPO_ROOT / "data" / "sample.csv", self.settings)
        subprocess.run((AIRFLOW, "dags", "unpause", "fx_extract"), env=self.env, check=True, capture_output=True)
        for run in self.api.request(f"{self.DAG}/dagRuns?state=queued&state=running")["dag_runs"]:
            self.wait(run["dag_run_id"])

    def trigger(self, **conf: object) -> str:
        """``airflow dags trigger fx_extract --conf ...``; the DAG run's id."""
        triggered = subprocess.run((AIRFLOW, "dags", "trigger", "fx_extract", "--conf", json.dumps(conf), "-o", "json"),
                                   env=self.env, check=True, capture_output=True, text=True)
        return json.loads(triggered.stdout.strip().splitlines()[-1])[0]["dag_run_id"]

    def state(self, run_id: str, task: str | None = None) -> str | None:
        """The DAG run's state, or its task's."""
        path = f"{self.DAG}/dagRuns/{run_id}" + (f"/taskInstances/{task}" if task else "")
        return self.api.request(path)["state"]

    def wait(self, run_id: str, until: tuple[str | None, ...] = ("success", "failed"), task: str | None = None,
             timeout: float = 600) -> str | None:
        """Poll until the run (or its ``task``) reaches a state of ``until``; that state."""
        deadline = time.monotonic() + timeout
        while (state := self.state(run_id, task)) not in until:
            assert time.monotonic() < deadline, f"run {run_id} {task or ''} still {state} after {timeout:.0f}s"
            time.sleep(0.5)
        return state

    def clear(self, run_id: str) -> None:
        """Clear every task of the DAG run, as the UI's "Clear" does: the run starts again."""
        self.api.request(f"{self.DAG}/dagRuns/{run_id}/clear", {"dry_run": False})

    def task_log(self, run_id: str, task: str, dag: str = "fx_extract") -> str:
        logs = self.settings.stack.dir / "airflow" / "logs" / f"dag_id={dag}" / f"run_id={run_id}"
        return "".join(path.read_text() for path in (logs / f"task_id={task}").glob("attempt=*"))

    def retirement(self, run_id: str, timeout: float = 300) -> str:
        """The id of the ``fx_retire`` run that ``run_id``'s promotion scheduled (the asset event of its
        ``verify``), once it has succeeded."""
        verified = self.api.request(f"{self.DAG}/dagRuns/{run_id}/taskInstances/verify")["start_date"]
        deadline = time.monotonic() + timeout
        while True:
            runs = self.api.request("/api/v2/dags/fx_retire/dagRuns?order_by=-run_after&limit=5")["dag_runs"]
            after = [r for r in runs if datetime.fromisoformat(r["run_after"]) >= datetime.fromisoformat(verified)]
            if after and after[-1]["state"] == "success":
                return after[-1]["dag_run_id"]
            assert time.monotonic() < deadline, f"no fx_retire run succeeded after {run_id} in {timeout:.0f}s: {after}"
            time.sleep(0.5)

    def fx_runs(self, client: redis.Redis, run_id: str) -> list[str]:
        """The fx runs the DAG run made, newest first (a cleared DAG run makes a new one)."""
        registry = RunRegistry(client, RedisKeys(self.settings.redis.prefix))
        return [run.run_id for run in registry.list() if run.get("dag_run_id") == run_id]


def migrated_airflow(piece: Slice, home: Path) -> dict[str, str]:
    """Airflow with a metadata database of its own, so the stack's scheduler never sees these runs."""
    env = airflow_env(piece, home)
    subprocess.run((AIRFLOW, "db", "migrate"), env=env, check=True, capture_output=True, timeout=300)
    return env


def airflow_env(piece: Slice, home: Path) -> dict[str, str]:
    """The slice's environment plus Airflow's, with its own metadata database under ``home``."""
    return {**piece.env, **airflow.airflow_env(piece.settings), "AIRFLOW_HOME": str(home),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}"}
