"""The stack's security, measured on the running stack: the online store refuses a client without
credentials and the read-only user cannot write; every listening socket of the stack is on loopback;
no log of the stack holds a generated password."""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING

import psutil
import pytest
import redis

from fx_workers.config import REPO_ROOT
from ops.redis import REDIS_READER, reader_password_file

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from fx_workers.config import Settings

LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}
CHUNK = 1 << 20


def client(settings: Settings, **auth: str) -> redis.Redis:
    config = settings.redis
    return redis.Redis(host=config.host, port=config.port, db=config.db, socket_timeout=5, **auth)


@pytest.fixture
def reader(settings: Settings) -> Iterator[redis.Redis]:
    path = reader_password_file(settings)
    if not path.exists():
        pytest.fail(f"{path} does not exist: the stack's Redis has no read-only user. Run `make up`.", pytrace=False)
    with client(settings, username=REDIS_READER, password=path.read_text().strip()) as connection:
        yield connection


@pytest.fixture
def keys(redis_client: redis.Redis, settings: Settings) -> Iterator[tuple[str, str]]:
    """A key under the configured prefix, readable by scorers, and one under another prefix."""
    tag = uuid.uuid4().hex[:8]
    mine, other = f"{settings.redis.prefix}:security-test-{tag}", f"fxtest-security-{tag}:secret"
    redis_client.hset(mine, mapping={"score": "0.5"})
    redis_client.set(other, "not for scorers")
    yield mine, other
    redis_client.delete(mine, other)


def test_a_client_without_credentials_is_refused(settings: Settings) -> None:
    # "Authentication required", or HELLO's "must be called with the client already authenticated"
    with client(settings) as anonymous, pytest.raises(redis.AuthenticationError, match="uthenticat"):
        anonymous.set(f"{settings.redis.prefix}:latest", "forged")


def test_a_wrong_password_is_refused(settings: Settings) -> None:
    for user in (settings.redis.user, REDIS_READER, "default"):
        with pytest.raises(redis.AuthenticationError, match="invalid username-password"):
            client(settings, username=user, password="not-the-password").ping()


def test_the_reader_reads_the_prefix_and_nothing_else(reader: redis.Redis, keys: tuple[str, str],
                                                      settings: Settings) -> None:
    mine, other = keys
    assert reader.hgetall(mine) == {b"score": b"0.5"}
    assert reader.hmget(mine, ["score"]) == [b"0.5"]
    assert reader.exists(mine) == 1
    reader.get(f"{settings.redis.prefix}:latest")  # the first step of the two-step read
    reader.zrevrange(f"{settings.redis.prefix}:runs", 0, 0)
    refused = [
        lambda: reader.get(other),  # another prefix
        lambda: reader.hset(mine, "score", "1.0"),
        lambda: reader.delete(mine),
        lambda: reader.set(f"{settings.redis.prefix}:latest", "forged"),
        lambda: reader.flushdb(),
        lambda: reader.config_get("requirepass"),
        lambda: reader.info(),
    ]
    for attempt in refused:
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()
    assert reader.hgetall(mine) == {b"score": b"0.5"}


def test_the_writer_cannot_run_dangerous_commands(redis_client: redis.Redis) -> None:
    for attempt in (redis_client.flushall, lambda: redis_client.keys("*"), lambda: redis_client.config_get("*"),
                    lambda: redis_client.acl_list()):
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()
    assert redis_client.info("server")["redis_version"]  # INFO is allowed back for doctor and the benches


def tracked_processes(settings: Settings) -> dict[int, str]:
    """PID -> service of every process `make up` started (from its PID file) and of their children."""
    found: dict[int, str] = {}
    for pid_file in sorted((settings.stack.dir / "run").glob("*.pid")):
        record = json.loads(pid_file.read_text())
        try:
            proc = psutil.Process(record["pid"])
            if abs(proc.create_time() - record["create_time"]) <= 1:
                found.update({member.pid: pid_file.stem for member in (proc, *proc.children(recursive=True))})
        except psutil.NoSuchProcess:
            continue
    return found


def untracked_processes(tracked: dict[int, str]) -> dict[int, str]:
    """PID -> command of the other processes of this checkout (a command line naming it) and their
    children: say, a duplicate that a second, concurrent `make up` started and no PID file names."""
    found: dict[int, str] = {}
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.pid in tracked or not any(str(REPO_ROOT) in part for part in cmdline):
            continue
        try:
            members = (proc, *proc.children(recursive=True))
        except psutil.NoSuchProcess:
            continue
        found.update({m.pid: " ".join(cmdline[-2:]) for m in members if m.pid not in tracked})
    return found


def exposed(processes: dict[int, str]) -> tuple[set[int], list[str]]:
    """The ports ``processes`` listen on, and each listener that is not on loopback."""
    listening = [(c.pid, c.laddr.ip, c.laddr.port) for c in psutil.net_connections("inet")
                 if c.status == psutil.CONN_LISTEN and c.pid in processes]
    beyond = [f"{processes[pid]} (pid {pid}) on {ip}:{port}" for pid, ip, port in listening if ip not in LOOPBACK]
    return {port for *_, port in listening}, beyond


def test_every_listening_socket_of_the_stack_is_on_loopback(settings: Settings) -> None:
    processes = tracked_processes(settings)
    assert {"kafka", "neo4j", "redis", "airflow-api-server", "airflow-scheduler"} <= set(processes.values())
    ports, beyond = exposed(processes)
    assert {settings.kafka.port, settings.neo4j.port, settings.redis.port, settings.airflow.api_port} <= ports
    assert not beyond, f"listening beyond loopback: {beyond}"


def test_no_other_process_of_this_checkout_listens_beyond_loopback(settings: Settings) -> None:
    """Processes no PID file names escape `make down` and the test above; found here, stop them by PID."""
    _, beyond = exposed(untracked_processes(tracked_processes(settings)))
    assert not beyond, f"untracked processes listening beyond loopback: {beyond}"


def log_files(settings: Settings) -> list[Path]:
    root = settings.stack.dir
    patterns = [("logs", "*.log"), ("airflow/logs", "**/*"), ("neo4j/logs", "*")]
    return sorted(path for folder, pattern in patterns for path in (root / folder).glob(pattern) if path.is_file())


def contains(path: Path, needles: list[bytes]) -> list[int]:
    """Indexes of the needles found in the file, read in overlapping chunks (logs can be large)."""
    overlap = max(len(needle) for needle in needles)
    found, tail = set(), b""
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            window = tail + chunk
            found.update(i for i, needle in enumerate(needles) if needle in window)
            tail = window[-overlap:]
    return sorted(found)


def test_no_log_of_the_stack_holds_a_generated_password(settings: Settings) -> None:
    sources = {"neo4j": settings.neo4j.password_file, f"redis {settings.redis.user}": settings.redis.password_file,
               f"redis {REDIS_READER}": reader_password_file(settings)}
    missing = [str(path) for path in sources.values() if not path.exists()]
    assert not missing, f"run `make up`: no generated password in {missing}"
    names = list(sources)
    needles = [sources[name].read_text().strip().encode() for name in names]
    files = log_files(settings)
    assert any(path.name == "redis.log" for path in files) and any("airflow" in str(path) for path in files)
    hits = [f"{path}: the {names[i]} password" for path in files for i in contains(path, needles)]
    assert not hits, f"generated passwords in logs (the passwords are not shown): {hits}"
