"""The distributed pipeline's processes for ``stack/stackctl.py``: the worker pool and Airflow.

:func:`service_specs` returns the keyword arguments of ``stackctl.Service`` entries (stackctl builds
them; this module does not import it, so tests and stackctl alike import it from the package);
:func:`env` is what ``.stack/env`` exports so the
``airflow`` CLI, the Airflow processes and ``fx`` all see the same stack: metadata in SQLite under
``<stack.dir>/airflow``, DAGs from ``dags/``, the trigger from ``plugins/``, and the ``fx_kafka``,
``fx_neo4j`` and ``fx_redis`` connections derived from ``config.yaml``.

The JWT secret and the admin password are generated once into git-ignored files under
``<stack.dir>/airflow`` (the password in ``passwords.json``, as the simple auth manager reads it).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fx_workers.config import REPO_ROOT

if TYPE_CHECKING:
    from fx_workers.config import Settings

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
ADMIN = "admin"
AIRFLOW_COMPONENTS = {"scheduler": "scheduler", "dag-processor": "dag_processor", "triggerer": "triggerer"}
"""Airflow command -> its entry in the API server's ``/api/v2/monitor/health``."""


def airflow_home(settings: Settings) -> Path:
    return settings.stack.dir / "airflow"


def passwords_file(settings: Settings) -> Path:
    """Where the Airflow UI's admin password is (``{"admin": "..."}``)."""
    return airflow_home(settings) / "passwords.json"


def api_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.airflow.api_port}"


def _secret_file(path: Path, content: str) -> str:
    """Read ``path``, creating it (mode 0600) with ``content`` the first time."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(content)
    return path.read_text()


def _connections(settings: Settings) -> dict[str, dict[str, Any]]:
    """The Airflow connections of the DAG, from the same config the workers read.

    Before the first start of Neo4j generates its password, ``fx_neo4j`` has none yet.
    """
    neo4j, redis = settings.neo4j, settings.redis
    host, port = neo4j.uri.split("://", 1)[-1].rsplit(":", 1)
    has_password = neo4j.password is not None or neo4j.password_file.exists()
    return {
        "fx_kafka": {"conn_type": "kafka", "extra": {"bootstrap.servers": settings.kafka.bootstrap_servers}},
        "fx_neo4j": {"conn_type": "neo4j", "host": host, "port": int(port), "login": neo4j.user,
                     "schema": neo4j.database, **({"password": neo4j.secret()} if has_password else {})},
        "fx_redis": {"conn_type": "redis", "host": redis.host, "port": redis.port, "extra": {"db": redis.db},
                     **({"password": redis.password.get_secret_value()} if redis.password else {})},
    }


def env(settings: Settings) -> dict[str, str]:
    """Airflow's configuration for the local stack, as environment variables."""
    home = airflow_home(settings)
    jwt = _secret_file(home / "jwt_secret", secrets.token_urlsafe(32))
    _secret_file(passwords_file(settings), json.dumps({ADMIN: secrets.token_urlsafe(12)}) + "\n")
    variables = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        # 2 cores: tasks mostly wait on Kafka, Neo4j and Redis, so a few at once, not more.
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__DAG_PROCESSOR__PARSING_PROCESSES": "1",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        # A trigger that fires within seconds of deferral otherwise can fail the resumed task.
        "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(settings.airflow.api_port),
        "AIRFLOW__API__BASE_URL": api_url(settings),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api_url(settings)}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": jwt,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file(settings)),
    }
    for conn_id, connection in _connections(settings).items():
        variables[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(connection)
    return variables


def _migrate(settings: Settings) -> None:
    """Create or upgrade the metadata database (idempotent); output goes to the API server's log."""
    log = settings.stack.dir / "logs" / "airflow-db-migrate.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        code = subprocess.call((AIRFLOW, "db", "migrate"), env={**os.environ, **env(settings)},
                               stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    if code != 0:
        raise RuntimeError(f"airflow db migrate failed (exit {code}); see {log}")


def _airflow_health(settings: Settings, component: str | None) -> str:
    """The API server's health report for ``component`` (None: the API server and its database)."""
    with urllib.request.urlopen(f"{api_url(settings)}/api/v2/monitor/health", timeout=3) as response:
        report = json.load(response)
    status = report["metadatabase"]["status"] if component is None else (report.get(component) or {}).get("status")
    if status != "healthy":
        raise RuntimeError(f"{component or 'metadatabase'} is {status or 'not reporting'}")
    return f"{component or 'api-server'} healthy"


class AirflowApi:
    """A small client of the stack's Airflow REST API, signed in as the generated admin."""

    def __init__(self, settings: Settings) -> None:
        self.base = api_url(settings)
        self.password = json.loads(passwords_file(settings).read_text())[ADMIN]
        self._token: str | None = None

    def request(self, path: str, body: dict[str, Any] | None = None) -> Any:
        """GET ``path`` (or POST ``body``) and return the JSON answer."""
        headers = {"Content-Type": "application/json"}
        if path != "/auth/token":
            headers["Authorization"] = f"Bearer {self.token()}"
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(f"{self.base}{path}", data=data, headers=headers)
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.load(response)

    def token(self) -> str:
        if self._token is None:
            self._token = self.request("/auth/token", {"username": ADMIN, "password": self.password})["access_token"]
        return self._token


def _worker_health(settings: Settings, worker_id: str) -> str:
    from fx_workers.worker import check_health

    healthy, detail = check_health(settings, worker_id)
    if not healthy:
        raise RuntimeError(detail)
    return f"worker {worker_id}: {json.loads(detail)['batches']} batches"


def service_specs(settings: Settings) -> list[dict[str, Any]]:
    """``workers.count`` extraction workers, then Airflow's API server and the components that need it."""
    workers = [
        {"name": f"worker-{i}", "command": (sys.executable, "-m", "fx_workers", "--worker-id", str(i)),
         "health": lambda i=i: _worker_health(settings, str(i)), "needs": ("kafka", "neo4j", "redis")}
        for i in range(settings.workers.count)
    ]
    api_server = {
        "name": "airflow-api-server",
        "command": (AIRFLOW, "api-server"),
        "health": lambda: _airflow_health(settings, None),
        "ports": (settings.airflow.api_port,),
        "prepare": lambda: _migrate(settings),
    }
    components = [
        {"name": f"airflow-{command}", "command": (AIRFLOW, command),
         "health": lambda key=key: _airflow_health(settings, key), "needs": ("airflow-api-server",)}
        for command, key in AIRFLOW_COMPONENTS.items()
    ]
    return [*workers, api_server, *components]
