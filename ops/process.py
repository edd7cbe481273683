"""Process control for the stack: a :class:`Service`, started detached and tracked by PID, its health
waited for, stopped by PID (never by name).

A service writes to ``<stack.dir>/logs/<name>.log`` and never holds the caller's stdout, so ``make``
and CI never wait on it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import psutil

from fx_workers.config import REPO_ROOT

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from fx_workers.config import Settings
    from fx_workers.tools.doctor import Check

VENV_BIN = os.path.dirname(sys.executable)
STOP_TIMEOUT_SECONDS = 30.0
POLL_SECONDS = 0.5
INSTALL_HINTS = {
    "java": "install a Java 17 runtime (apt-get install openjdk-17-jre-headless)",
    "mvn": "install Maven (apt-get install maven)",
}


class StackError(RuntimeError):
    """A failure explained in one line; printed without a traceback."""


class NotReadyError(RuntimeError):
    """A health check that has not passed yet; ``up`` retries until the timeout."""


@dataclass(frozen=True)
class Layout:
    """Where the stack keeps things: everything under ``stack.dir``, which git ignores."""

    root: Path

    def lib(self, name: str) -> Path:
        return self.root / "lib" / name

    def home(self, name: str) -> Path:
        return self.root / name

    @property
    def run(self) -> Path:
        return self.root / "run"

    def pid_file(self, name: str) -> Path:
        return self.run / f"{name}.pid"

    def log_file(self, name: str) -> Path:
        return self.root / "logs" / f"{name}.log"


@dataclass(frozen=True)
class Service:
    """One process of the stack; ``up``, ``down`` and ``status`` handle every entry alike.

    :param name: names the log file ``logs/<name>.log`` and the PID file ``run/<name>.pid``
    :param command: argv; the program is looked up on ``PATH`` when the service starts
    :param health: returns a short detail once the service answers, raises while it does not
    :param ports: checked free before the start; the first is shown by ``status``
    :param env: variables on top of the stack's (``ops.stack.env_exports``) and the caller's environment
    :param prepare: writes config files and does first-time setup; runs before every start
    :param ready: idempotent setup that needs the service healthy (topics...), retried like health
    :param needs: services that must be healthy before this one starts
    """

    name: str
    command: tuple[str, ...]
    health: Callable[[], str]
    ports: tuple[int, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    prepare: Callable[[], None] | None = None
    ready: Callable[[], None] | None = None
    needs: tuple[str, ...] = ()


def health_from(checks: Callable[[Settings], Iterator[Check]], settings: Settings) -> Callable[[], str]:
    """A health function from a doctor check generator: its first check says "reachable"."""

    def health() -> str:
        check = next(checks(settings))
        if not check.ok:
            raise NotReadyError(check.detail)
        return check.detail

    return health


@dataclass(frozen=True)
class PidRecord:
    """A started process: the PID plus its start time, so a reused PID is never mistaken for it.

    The start is compared as time since boot (``create_time - boot_time``): a VM's clock can be stepped
    while the stack runs (21.7 s here once, mid-CI), which moves every process's ``create_time`` and the
    boot time alike; compared as wall time, every service then looked gone, and ``make up`` tried to start
    them again on their own ports. A record without ``boot_time`` (an older ``make up``'s) is compared as
    wall time."""

    pid: int
    create_time: float
    boot_time: float | None = None

    @classmethod
    def of(cls, pid: int) -> PidRecord:
        return cls(pid, psutil.Process(pid).create_time(), psutil.boot_time())

    def process(self) -> psutil.Process | None:
        """The live process, or None when it exited (zombies count as exited)."""
        try:
            proc = psutil.Process(self.pid)
            started, recorded = proc.create_time(), self.create_time
            if self.boot_time is not None:
                started, recorded = started - psutil.boot_time(), recorded - self.boot_time
            if abs(started - recorded) > 1 or proc.status() == psutil.STATUS_ZOMBIE:
                return None
        except psutil.NoSuchProcess:
            return None
        return proc


def read_pid(layout: Layout, name: str) -> PidRecord | None:
    try:
        return PidRecord(**json.loads(layout.pid_file(name).read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def running(layout: Layout, name: str) -> psutil.Process | None:
    record = read_pid(layout, name)
    return record.process() if record else None


def show(path: Path) -> str:
    """A path as the user typed it: relative to the current folder when inside it."""
    relative = os.path.relpath(path)
    return path.as_posix() if relative.startswith("..") else relative


def stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def require_program(name: str, program: str) -> str:
    path = shutil.which(program)
    if path is None:
        hint = INSTALL_HINTS.get(program, "run `make setup`")
        raise StackError(f"{name}: `{program}` is not on PATH; {hint}")
    return path


def run_tool(name: str, what: str, argv: tuple[str, ...], layout: Layout, env: dict[str, str] | None = None) -> str:
    """Run a one-off command of a service (setup, not the service); output goes to its log.

    :returns: the command's stdout
    :raises StackError: naming ``what`` (never the argv, which may hold a password)
    """
    require_program(name, argv[0])
    log = layout.log_file(name)
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        result = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300,
                                env={**os.environ, **(env or {})}, check=False)
    except subprocess.TimeoutExpired:
        raise StackError(f"{name}: {what} did not finish in 300 s") from None
    with log.open("a") as out:
        out.write(f"==== {stamp()} {what} (exit {result.returncode})\n{result.stdout}{result.stderr}")
    if result.returncode != 0:
        raise StackError(f"{name}: {what} failed (exit {result.returncode}); see {show(log)}")
    return result.stdout


def java_classpath(layout: Layout, name: str) -> str:
    """The classpath of a service's jars, after checking ``make setup`` fetched them."""
    lib = layout.lib(name)
    if not any(lib.glob("*.jar")):
        raise StackError(f"{name}: no jars in {show(lib)}; run `make setup`")
    return f"{lib}/*"


def port_owner(port: int) -> str | None:
    """Who listens on ``port``, if anyone, for the "port taken" message."""
    for conn in psutil.net_connections("inet"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == port:
            if conn.pid is None:
                return "another process"
            try:
                return f"pid {conn.pid} ({psutil.Process(conn.pid).name()})"
            except psutil.Error:
                return f"pid {conn.pid}"
    return None


def require_startable(service: Service) -> str:
    """The program's path, after checking it exists and the service's ports are free."""
    program = require_program(service.name, service.command[0])
    for port in service.ports:
        owner = port_owner(port)
        if owner:
            raise StackError(f"{service.name}: port {port} is already in use by {owner}; "
                             "stop it or change the port in config.yaml")
    return program


def start(service: Service, layout: Layout, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start one service detached: own session, stdin from /dev/null, output to its log file.

    :param env: the stack's variables, under the service's own and over the caller's environment
    """
    program = require_startable(service)
    if service.prepare:
        service.prepare()
    log = layout.log_file(service.name)
    log.parent.mkdir(parents=True, exist_ok=True)
    layout.run.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, **env, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}", **service.env}
    with log.open("ab") as out:
        out.write(f"==== {stamp()} starting {service.name}\n".encode())
        out.flush()
        proc = subprocess.Popen((program, *service.command[1:]), cwd=REPO_ROOT, env=environment,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    layout.pid_file(service.name).write_text(json.dumps(asdict(PidRecord.of(proc.pid))) + "\n")
    print(f"{service.name}: started (pid {proc.pid}), log {show(log)}")
    return proc


def probe(service: Service, *, ready: bool = True) -> tuple[str | None, str]:
    """(detail, "") when healthy (and, with ``ready``, set up), else (None, why not)."""
    if service.ports and port_owner(service.ports[0]) is None:
        return None, f"nothing listens on port {service.ports[0]} yet"  # skip the client's connect timeout
    try:
        detail = service.health()
        if ready and service.ready:
            service.ready()
    except StackError:
        raise
    except Exception as exc:  # any client error means "not yet"; the timeout bounds the wait
        return None, str(exc) or type(exc).__name__
    return detail, ""


def start_all(services: list[Service], layout: Layout, env: Callable[[], dict[str, str]], timeout: float) -> None:
    """Start what is not running, in dependency order, and wait until every service is healthy.

    :param env: the stack's variables, asked again for each service it starts: a service started after
        Neo4j's or Redis's first start sees the password that start generated (Airflow's connections)

    :raises StackError: when a service cannot start, exits while starting or is not healthy in ``timeout``
    """
    pending = {service.name: service for service in services}
    for service in pending.values():  # fail before starting anything, not halfway
        if not running(layout, service.name):
            require_startable(service)
    healthy: set[str] = set()
    waiting: dict[str, tuple[float, subprocess.Popen[bytes] | None]] = {}
    while pending:
        for service in pending.values():
            if service.name in waiting or not set(service.needs) <= healthy:
                continue
            proc = running(layout, service.name)
            if proc:
                print(f"{service.name}: already running (pid {proc.pid})")
            started = None if proc else start(service, layout, env())
            waiting[service.name] = (time.monotonic(), started)
        if not waiting:
            raise StackError(f"cannot start {', '.join(pending)}: they need services that are not defined")
        for name, (since, proc) in list(waiting.items()):
            service = pending[name]
            detail, why = probe(service)
            log = show(layout.log_file(name))
            if detail is not None:
                print(f"{name}: healthy after {time.monotonic() - since:.1f} s: {detail}")
                healthy.add(name)
                del pending[name], waiting[name]
            elif proc is not None and proc.poll() is not None:
                raise StackError(f"{name}: exited with code {proc.returncode} while starting; see {log}")
            elif proc is None and running(layout, name) is None:
                raise StackError(f"{name}: exited while starting; see {log}")
            elif time.monotonic() - since > timeout:
                raise StackError(f"{name}: not healthy after {timeout} s ({why}); see {log}")
        if pending:
            time.sleep(POLL_SECONDS)


def stop(name: str, layout: Layout) -> None:
    """SIGTERM the process group we started, wait, then SIGKILL it; never matches by name."""
    proc = running(layout, name)
    pid_file = layout.pid_file(name)
    if proc is None:
        print(f"{name}: not running")
        pid_file.unlink(missing_ok=True)
        return
    began = time.monotonic()
    signal_group(proc.pid, signal.SIGTERM)
    while running(layout, name) and time.monotonic() - began < STOP_TIMEOUT_SECONDS:
        time.sleep(0.2)
    how = "stopped"
    if running(layout, name):
        signal_group(proc.pid, signal.SIGKILL)
        how = f"killed after {STOP_TIMEOUT_SECONDS:.0f} s"
    pid_file.unlink(missing_ok=True)
    print(f"{name}: {how} (pid {proc.pid}) in {time.monotonic() - began:.1f} s")


def signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the service and any children: it leads its own session (and so process group)."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def rss_mb(proc: psutil.Process) -> float:
    """Resident memory of the process and its children, in MiB."""
    total = 0
    for member in (proc, *proc.children(recursive=True)):
        try:
            total += member.memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20
