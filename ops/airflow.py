"""Airflow's processes on the stack: the API server, then the scheduler, DAG processor and triggerer.

:func:`airflow_env` is what ``<stack.dir>/env`` exports so the ``airflow`` CLI, the Airflow processes
and ``fx`` all see the same stack: metadata in SQLite under ``<stack.dir>/airflow``, DAGs from
``dags/``, the trigger from ``plugins/``, and the ``fx_kafka``, ``fx_neo4j`` and ``fx_redis``
connections derived from ``config.yaml``. The JWT secret and the admin password are generated once
into git-ignored files under ``<stack.dir>/airflow`` (the password in ``passwords.json``, as the simple
auth manager reads it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from fx_workers.config import REPO_ROOT
from fx_workers.protocol import PRODUCER_CONFIG
from ops.process import Service
from ops.secrets import generate_secret, secret_file

if TYPE_CHECKING:
    from fx_workers.config import RedisConfig, Settings

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
ADMIN = "admin"
AIRFLOW_COMPONENTS = {"scheduler": "scheduler", "dag-processor": "dag_processor", "triggerer": "triggerer"}
"""Airflow command -> its entry in the API server's ``/api/v2/monitor/health``."""
SKIP_SERVE_LOGS = ("scheduler", "triggerer")
"""Components that would start a log server on 0.0.0.0:8793/8794: Airflow 3 has no setting for its
host. Every component shares ``<stack.dir>/airflow/logs``, so the API server reads task and trigger
logs from the files and the servers are not needed."""
JWT_SECRET_BYTES = 64
"""PyJWT's minimum for an HS512 key; shorter ones log ``InsecureKeyLengthWarning`` on every token."""
WARNING_FILTERS = (
    "ignore:Could not import graphviz:UserWarning",  # airflow.utils.dot_renderer, imported by every `dags` command
    "ignore:GitWildMatchPattern:DeprecationWarning",  # Airflow's .airflowignore reader on pathspec >= 1.0
)
"""``PYTHONWARNINGS``: Airflow logs warnings to stdout, so these two broke ``airflow dags ... -o json | jq``."""


def airflow_home(settings: Settings) -> Path:
    return settings.stack.dir / "airflow"


def passwords_file(settings: Settings) -> Path:
    """Where the Airflow UI's admin password is (``{"admin": "..."}``)."""
    return airflow_home(settings) / "passwords.json"


def api_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.airflow.api_port}"


def connections(settings: Settings) -> dict[str, dict[str, Any]]:
    """The Airflow connections of the DAG, from the same config the workers read.

    Before the first start of Neo4j (Redis) generates its password, ``fx_neo4j`` (``fx_redis``) has none yet;
    ``fx_redis`` logs in as ``redis.user`` (RedisHook sends the login as the ACL user name).
    """
    neo4j, redis = settings.neo4j, settings.redis
    has_password = neo4j.password is not None or neo4j.password_file.exists()
    redis_password = redis.secret()
    redis_auth = {"password": redis_password, **({"login": redis.user} if redis.user else {})}
    return {
        "fx_kafka": {"conn_type": "kafka", "extra": {"bootstrap.servers": settings.kafka.bootstrap_servers,
                                                     **PRODUCER_CONFIG}},
        "fx_neo4j": {"conn_type": "neo4j", "host": urlsplit(neo4j.uri).hostname, "port": neo4j.port,
                     "login": neo4j.user, "schema": neo4j.database, "extra": _neo4j_scheme_extra(neo4j.uri),
                     **({"password": neo4j.secret()} if has_password else {})},
        "fx_redis": {"conn_type": "redis", **_redis_endpoint(redis),
                     **(redis_auth if redis_password is not None else {})},
    }


def _neo4j_scheme_extra(uri: str) -> dict[str, bool]:
    """The extras with which Airflow's ``Neo4jHook`` builds ``uri``'s scheme (it knows ``bolt`` or
    ``neo4j``, plus ``+s`` or ``+ssc``), so the DAG's ``plan`` routes its reads as the workers do."""
    base, _, tls = urlsplit(uri).scheme.partition("+")
    return {"neo4j_scheme": base == "neo4j", "certs_trusted_ca": tls == "s", "certs_self_signed": tls == "ssc"}


def _redis_endpoint(config: RedisConfig) -> dict[str, Any]:
    """``fx_redis``'s address: the server, or in cluster mode the first seed node plus the others as
    ``startup_nodes`` with ``cluster: true`` (RedisHook then builds a ``RedisCluster``)."""
    if config.mode == "cluster":
        (host, port), *_ = config.addresses()
        return {"host": host, "port": port, "extra": {"cluster": True, "startup_nodes": ",".join(config.nodes)}}
    return {"host": config.host, "port": config.port, "extra": {"db": config.db}}


def airflow_env(settings: Settings) -> dict[str, str]:
    """Airflow's configuration for the local stack, as environment variables."""
    home = airflow_home(settings)
    jwt = secret_file(home / "jwt_secret", generate_secret(JWT_SECRET_BYTES), min_length=JWT_SECRET_BYTES)
    secret_file(passwords_file(settings), json.dumps({ADMIN: generate_secret(12)}) + "\n")
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
        # An idle scheduler loop sleeps this long (default 1 s) before it sees a task's end and queues the
        # next, which a run of five chained tasks pays about five times: five trivial chained tasks took
        # 5.8-6.9 s trigger to end with 1 s and 3.1-5.0 s with 0.2 s, for 10% of a core idle instead of 3%.
        "AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME": "0.2",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(settings.airflow.api_port),
        "AIRFLOW__API__BASE_URL": api_url(settings),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api_url(settings)}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": jwt,
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{ADMIN}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords_file(settings)),
        "PYTHONWARNINGS": ",".join(WARNING_FILTERS),
    }
    for conn_id, connection in connections(settings).items():
        variables[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(connection)
    return variables


def _migrate(settings: Settings) -> None:
    """Create or upgrade the metadata database (idempotent); output goes to the API server's log."""
    log = settings.stack.dir / "logs" / "airflow-db-migrate.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        code = subprocess.call((AIRFLOW, "db", "migrate"), env={**os.environ, **airflow_env(settings)},
                               stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    if code != 0:
        raise RuntimeError(f"airflow db migrate failed (exit {code}); see {log}")


EXECUTION_API_PROBE_SECONDS = 15
"""How long one health probe waits for the execution API (its first answer took about 5 s on 2 cores): a
probe that times out counts as not ready yet, and the server goes on building it for the next probe."""


def _airflow_health(settings: Settings, component: str | None) -> str:
    """The API server's health report for ``component`` (None: the API server and its database, and its
    execution API warmed, see :func:`_warm_execution_api`)."""
    with urllib.request.urlopen(f"{api_url(settings)}/api/v2/monitor/health", timeout=3) as response:
        report = json.load(response)
    status = report["metadatabase"]["status"] if component is None else (report.get(component) or {}).get("status")
    if status != "healthy":
        raise RuntimeError(f"{component or 'metadatabase'} is {status or 'not reporting'}")
    if component is None:
        _warm_execution_api(settings)
    return f"{component or 'api-server'} healthy"


def _warm_execution_api(settings: Settings) -> None:
    """Ask the execution API for its health. The API server builds that app on its first request, which took
    5.5 s: without this, the first task after a start (``plan``, in ``make demo``) paid it before its first
    line."""
    with urllib.request.urlopen(f"{api_url(settings)}/execution/health", timeout=EXECUTION_API_PROBE_SECONDS):
        pass


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



def airflow_services(settings: Settings) -> list[Service]:
    """Airflow's API server, then the components that need it."""
    api_server = Service(name="airflow-api-server", command=(AIRFLOW, "api-server"),
                         health=lambda: _airflow_health(settings, None), ports=(settings.airflow.api_port,),
                         prepare=lambda: _migrate(settings))
    components = [
        Service(name=f"airflow-{command}",
                command=(AIRFLOW, command, *(("--skip-serve-logs",) if command in SKIP_SERVE_LOGS else ())),
                health=lambda key=key: _airflow_health(settings, key), needs=("airflow-api-server",))
        for command, key in AIRFLOW_COMPONENTS.items()
    ]
    return [api_server, *components]
