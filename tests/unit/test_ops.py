"""The ops package without the real services: generated commands, the env file, and the process
lifecycle (detached start, health wait, stop by PID) driven with ``sleep`` as a stand-in program."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import psutil
import pytest

import ops.stack
from fx_workers.config import REPO_ROOT, config_path, load_settings
from ops.__main__ import exclusive
from ops.airflow import JWT_SECRET_BYTES, airflow_env, airflow_home
from ops.kafka import kafka_cluster_id
from ops.neo4j import set_initial_password
from ops.process import VENV_BIN, Layout, NotReadyError, PidRecord, Service, StackError, running, start, stop
from ops.redis import REDIS_READER, reader_password_file
from ops.secrets import generate_secret
from ops.stack import down, status, up, write_env_file

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from fx_workers.config import Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    path = tmp_path / "config.yaml"
    shutil.copy(REPO_ROOT / "config.yaml", path)
    return load_settings(path, environ={"FX__REDIS__PORT": "6390", "FX__STACK__START_TIMEOUT_SECONDS": "1"})


@pytest.fixture
def layout(settings: Settings) -> Layout:
    return Layout(settings.stack.dir)


def never() -> str:
    raise NotReadyError("still booting")


@pytest.fixture
def fake(layout: Layout, monkeypatch: pytest.MonkeyPatch) -> Iterator[Service]:
    """A one-service stack running ``sleep``; healthy once its PID file exists. Stopped afterwards."""

    def health() -> str:
        if not layout.pid_file("sleeper").exists():
            raise NotReadyError("no PID file yet")
        return "asleep"

    service = Service(name="sleeper", command=("sleep", "60"), health=health)
    monkeypatch.setattr(ops.stack, "services", lambda settings, layout: [service])
    yield service
    stop("sleeper", layout)


def by_name(settings: Settings, layout: Layout) -> dict[str, Service]:
    return {service.name: service for service in ops.stack.services(settings, layout)}


def test_services_take_ports_and_paths_from_config(settings: Settings, layout: Layout) -> None:
    services = by_name(settings, layout)
    assert list(services) == ["kafka", "neo4j", "redis", "worker-0", "worker-1", "airflow-api-server",
                              "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer"]
    assert services["kafka"].ports == (9092, 9093)
    assert services["neo4j"].ports == (7687,)
    assert services["redis"].ports == (6390,)
    redis = services["redis"].command
    assert redis[redis.index("--port") + 1] == "6390"
    assert redis[redis.index("--dir") + 1] == str(settings.stack.dir / "redis")
    assert redis[redis.index("--appendonly") + 1] == "yes"  # persistence is on in config.yaml: a restart keeps runs
    assert redis[redis.index("--save") + 1] == ""  # the append-only file alone: no RDB snapshot every minute
    assert f"-Xmx{settings.stack.neo4j_heap}" in services["neo4j"].command
    assert f"-Xmx{settings.stack.kafka_heap}" in services["kafka"].command
    assert services["neo4j"].env["NEO4J_CONF"] == str(settings.stack.dir / "neo4j" / "conf")


def test_the_env_file_exports_the_config_and_puts_the_venv_first(
    settings: Settings, layout: Layout
) -> None:
    path = write_env_file(settings, layout)
    assert path.stat().st_mode & 0o777 == 0o600
    shell = f'source {path} && echo "$FX_CONFIG" && command -v python'
    out = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == str(config_path().resolve())
    assert out[1] == os.path.join(VENV_BIN, "python")


def test_a_pid_record_refuses_a_reused_pid() -> None:
    me = psutil.Process()
    assert PidRecord.of(me.pid).process() is not None
    assert PidRecord(me.pid, me.create_time() - 100, psutil.boot_time()).process() is None
    assert PidRecord(me.pid, me.create_time()).process() is not None  # an older make up's record
    assert PidRecord(me.pid, me.create_time() - 100).process() is None


def test_a_pid_record_survives_a_step_of_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stepped wall clock moves create_time and boot_time alike; the process is still the one started."""
    me = psutil.Process()
    record = PidRecord.of(me.pid)
    step = 21.7
    monkeypatch.setattr(psutil.Process, "create_time", lambda self, real=psutil.Process.create_time: real(self) + step)
    monkeypatch.setattr(psutil, "boot_time", lambda real=psutil.boot_time: real() + step)
    assert record.process() is not None


def test_up_starts_detached_waits_for_health_and_down_stops_by_pid(
    settings: Settings, layout: Layout, fake: Service, capsys: pytest.CaptureFixture[str]
) -> None:
    up(settings, layout)
    proc = running(layout, "sleeper")
    assert proc is not None
    assert os.getsid(proc.pid) == proc.pid  # its own session: no terminal, no shared process group
    assert os.readlink(f"/proc/{proc.pid}/fd/0") == "/dev/null"
    assert os.readlink(f"/proc/{proc.pid}/fd/1") == str(layout.log_file("sleeper"))
    assert "sleeper: healthy" in capsys.readouterr().out

    up(settings, layout)
    assert "sleeper: already running" in capsys.readouterr().out

    start(replace(fake, name="retired"), layout, {})  # e.g. a worker no longer configured
    down(settings, layout)
    assert running(layout, "sleeper") is None
    assert running(layout, "retired") is None
    assert not layout.pid_file("sleeper").exists()
    status(settings, layout)
    assert "stopped" in capsys.readouterr().out


def test_a_service_started_after_a_first_start_gets_the_password_it_generated(
    settings: Settings, layout: Layout, fake: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Airflow starts after Neo4j, whose first start generates the password: the connection Airflow is
    started with (``AIRFLOW_CONN_FX_NEO4J``) must carry it, or every ``plan`` fails to log in."""
    password = settings.neo4j.password_file

    def generate() -> None:
        password.parent.mkdir(parents=True, exist_ok=True)
        password.write_text("s3cret-generated\n")

    def healthy(name: str) -> Callable[[], str]:
        return lambda: "up" if layout.pid_file(name).exists() else never()

    first = replace(fake, name="first", prepare=generate, health=healthy("first"))
    second = replace(fake, name="second", needs=("first",), health=healthy("second"))
    monkeypatch.setattr(ops.stack, "services", lambda settings, layout: [first, second])
    assert not password.exists()
    try:
        up(settings, layout)
        proc = running(layout, "second")
        assert proc is not None
        assert "s3cret-generated" in proc.environ()["AIRFLOW_CONN_FX_NEO4J"]
    finally:
        down(settings, layout)


def test_a_service_that_exits_while_starting_names_its_log(
    settings: Settings, layout: Layout, fake: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = replace(fake, command=("false",), health=never)
    monkeypatch.setattr(ops.stack, "services", lambda settings, layout: [broken])
    with pytest.raises(StackError, match=r"sleeper: exited with code 1 while starting; see .*sleeper\.log"):
        up(settings, layout)


def test_a_service_that_never_gets_healthy_times_out(
    settings: Settings, layout: Layout, fake: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ops.stack, "services", lambda settings, layout: [replace(fake, health=never)])
    began = time.monotonic()
    with pytest.raises(StackError, match=r"not healthy after 1 s \(still booting\); see .*sleeper\.log"):
        up(settings, layout)
    assert time.monotonic() - began < 5


def test_a_taken_port_is_refused_naming_its_owner(
    settings: Settings, layout: Layout, fake: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        monkeypatch.setattr(ops.stack, "services", lambda settings, layout: [replace(fake, ports=(port,))])
        with pytest.raises(StackError, match=rf"port {port} is already in use by pid {os.getpid()}"):
            up(settings, layout)


def test_a_missing_program_is_one_line_with_a_hint(
    settings: Settings, layout: Layout, fake: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ops.stack, "services", lambda settings, layout: [replace(fake, command=("java", "-version"))])
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(StackError, match=r"`java` is not on PATH; install a Java 17 runtime"):
        up(settings, layout)


def test_redis_starts_with_an_acl_file_of_hashed_generated_passwords(
    settings: Settings, layout: Layout, capsys: pytest.CaptureFixture[str]
) -> None:
    redis = by_name(settings, layout)["redis"]
    acl_file = settings.stack.dir / "redis" / "users.acl"
    assert redis.command[redis.command.index("--aclfile") + 1] == str(acl_file)
    redis.prepare()
    writer, reader = settings.redis.password_file, reader_password_file(settings)
    passwords = [path.read_text().strip() for path in (writer, reader)]
    for path in (writer, reader, acl_file):
        assert path.stat().st_mode & 0o777 == 0o600, path
    text = acl_file.read_text()
    assert all(len(p) >= 32 and p not in text and p not in capsys.readouterr().out for p in passwords)
    assert all(line.startswith("user ") for line in text.splitlines())  # Redis refuses anything else, comments too
    users = {line.split()[1]: line for line in text.splitlines()}
    assert users["default"] == "user default reset off"
    assert users["fx"].startswith("user fx reset on ~fx* ") and users[REDIS_READER].startswith(
        f"user {REDIS_READER} reset on ~fx:* ")
    assert " -@dangerous " in users["fx"] and "+set" not in users[REDIS_READER] and "+@" not in users[REDIS_READER]
    redis.prepare()  # a restart keeps the passwords
    assert [path.read_text().strip() for path in (writer, reader)] == passwords


def test_airflow_gets_redis_credentials_a_long_jwt_secret_and_no_log_servers(
    settings: Settings, layout: Layout
) -> None:
    import json

    jwt = airflow_home(settings) / "jwt_secret"
    jwt.parent.mkdir(parents=True)
    jwt.write_text("a-43-byte-secret-from-an-older-make-up-xxxxx")
    assert json.loads(airflow_env(settings)["AIRFLOW_CONN_FX_REDIS"]).get("password") is None  # not generated yet
    by_name(settings, layout)["redis"].prepare()
    variables = airflow_env(settings)
    connection = json.loads(variables["AIRFLOW_CONN_FX_REDIS"])
    assert (connection["login"], connection["password"]) == ("fx", settings.redis.secret())
    assert len(variables["AIRFLOW__API_AUTH__JWT_SECRET"].encode()) >= JWT_SECRET_BYTES
    assert float(variables["AIRFLOW__SCHEDULER__SCHEDULER_IDLE_SLEEP_TIME"]) < 1  # see ops.airflow: runs wait on it
    assert airflow_env(settings)["AIRFLOW__API_AUTH__JWT_SECRET"] == variables["AIRFLOW__API_AUTH__JWT_SECRET"]
    assert variables["PYTHONWARNINGS"].split(",") == ["ignore:Could not import graphviz:UserWarning",
                                                      "ignore:GitWildMatchPattern:DeprecationWarning"]
    services = by_name(settings, layout)
    for name in ("airflow-scheduler", "airflow-triggerer"):
        assert services[name].command[-1] == "--skip-serve-logs", name  # would listen on 0.0.0.0:8793/8794
    assert services["neo4j"].ready is not None  # make up creates the graph schema


def test_up_down_and_clean_take_turns(layout: Layout) -> None:
    import fcntl

    # a second `make up` waits instead of starting duplicates
    with exclusive(layout), (layout.run / "stack.lock").open("w") as other, pytest.raises(BlockingIOError):
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with (layout.run / "stack.lock").open("w") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_the_kafka_cluster_id_is_a_clean_kafka_uuid_made_once(tmp_path: Path) -> None:
    """Made in Python, not by StorageTool, whose stdout also carries Kafka's log lines (they once ended
    up inside the id)."""
    import base64
    import re

    first = kafka_cluster_id(tmp_path)
    assert re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_-]{21}", first)
    assert len(base64.urlsafe_b64decode(first + "==")) == 16
    assert kafka_cluster_id(tmp_path) == first
    other = tmp_path / "other"
    other.mkdir()
    assert kafka_cluster_id(other) != first


def test_generated_secrets_never_begin_with_a_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    """``secrets.token_urlsafe`` begins with ``-`` one time in 64; such a draw is thrown away."""
    import secrets

    draws = iter(["-looks-like-an-option", "--also", "fine-after-two"])
    monkeypatch.setattr(secrets, "token_urlsafe", lambda nbytes: next(draws))
    assert generate_secret(24) == "fine-after-two"
    monkeypatch.undo()
    assert not any(generate_secret(1).startswith("-") for _ in range(2000))  # 1 byte: a dash 1 time in 4


def neo4j_admin_stand_in(tmp_path: Path, code: int) -> tuple[str, ...]:
    """A program that records its argv (one per line) and exits ``code``, as neo4j-admin would."""
    script = tmp_path / "neo4j-admin"
    script.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{tmp_path}/argv"\necho "Missing required parameter" >&2\n'
                      f"exit {code}\n")
    script.chmod(0o755)
    return (str(script),)


def test_the_initial_neo4j_password_goes_after_double_dash_and_is_kept_once_set(
    settings: Settings, layout: Layout, tmp_path: Path
) -> None:
    set_initial_password(settings.neo4j, neo4j_admin_stand_in(tmp_path, 0), layout, {})
    password = settings.neo4j.password_file.read_text().strip()
    assert (tmp_path / "argv").read_text().splitlines() == ["dbms", "set-initial-password", "--", password]
    assert settings.neo4j.password_file.stat().st_mode & 0o777 == 0o600


def test_a_failed_initial_neo4j_password_says_what_to_do_and_keeps_no_file(
    settings: Settings, layout: Layout, tmp_path: Path
) -> None:
    """The file once stayed behind, so every `make up` failed the same way until `make clean-stack`."""
    with pytest.raises(StackError, match=r"set-initial-password failed \(exit 64\); see .*neo4j\.log\. "
                                                  r"Fix what the log says and run `make up` again"):
        set_initial_password(settings.neo4j, neo4j_admin_stand_in(tmp_path, 64), layout, {})
    assert not settings.neo4j.password_file.exists()
    set_initial_password(settings.neo4j, neo4j_admin_stand_in(tmp_path, 0), layout, {})  # the retry
    assert settings.neo4j.password_file.exists()


def test_a_given_neo4j_password_is_set_as_it_is_and_named_when_refused(
    settings: Settings, layout: Layout, tmp_path: Path
) -> None:
    settings.neo4j.password_file.parent.mkdir(parents=True, exist_ok=True)
    settings.neo4j.password_file.write_text("-Az09_-given\n")  # e.g. from an fx before the generator's fix
    with pytest.raises(StackError, match=r"the password is .*password's \(Neo4j wants 8 characters"):
        set_initial_password(settings.neo4j, neo4j_admin_stand_in(tmp_path, 70), layout, {})
    assert (tmp_path / "argv").read_text().splitlines()[-2:] == ["--", "-Az09_-given"]
    assert settings.neo4j.password_file.read_text() == "-Az09_-given\n"


def test_airflow_log_servers_still_bind_every_interface() -> None:
    """Why the stack skips Airflow's log servers, and docs/operations.md explains the "Could not read
    served logs" line instead: Airflow binds them with ``host=""``. When a release takes a host, serve
    them on loopback and drop the explanation."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("airflow")  # the file, not an import: importing Airflow sets up its home
    assert spec and spec.origin
    source = (Path(spec.origin).parent / "utils" / "serve_logs" / "core.py").read_text()
    assert 'host="",' in source
    assert "Could not read served logs" in (REPO_ROOT / "docs" / "operations.md").read_text()


def test_the_api_server_is_healthy_once_its_execution_api_answered(settings: Settings, layout: Layout) -> None:
    """The execution API is built on its first request; the health wait makes that request, not the first task."""
    import http.server
    import threading

    asked: list[str] = []

    class Airflow(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            body = b'{"metadatabase": {"status": "healthy"}}' if self.path == "/api/v2/monitor/health" else b"{}"
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Airflow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        airflow = settings.airflow.model_copy(update={"api_port": server.server_port})
        api_server = by_name(settings.model_copy(update={"airflow": airflow}), layout)["airflow-api-server"]
        assert api_server.health() == "api-server healthy"
    finally:
        server.shutdown()
    assert asked == ["/api/v2/monitor/health", "/execution/health"]
