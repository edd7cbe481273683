"""The fx local stack: Kafka, Neo4j and Redis run natively under ``stack.dir``, tracked by PID.

This machine has no Docker, so this small service manager does what compose would: write each
service's config, start it detached, wait for real health, and stop exactly what it started.
Services write to ``<stack.dir>/logs/<name>.log`` and never hold the caller's stdout, so ``make``
and CI never wait on them. A service is one :class:`Service` entry in :func:`services`.

Usage: ``.venv/bin/python stack/stackctl.py {fetch,up,down,status,clean}``
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING

import psutil

from fx_workers.config import REPO_ROOT, ConfigError, Settings, config_path, load_settings
from fx_workers.tools.doctor import (
    LOW_REPLICATION_FIX,
    Replication,
    kafka_admin,
    kafka_checks,
    neo4j_checks,
    partitions,
    redis_checks,
    topic_partitions,
    topic_replicas,
)
from fx_workers.tools.load import ensure_schema
from fx_workers.tools.stack import REDIS_READER, generate_secret, reader_password_file, redis_acl
from fx_workers.tools.stack import env as pipeline_env
from fx_workers.tools.stack import service_specs as pipeline_services

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    import redis

    from fx_workers.config import Neo4jConfig, RedisConfig
    from fx_workers.tools.doctor import Check

VENV_BIN = os.path.dirname(sys.executable)
PASSWORD_BYTES = 24
"""A generated password's random bytes: 32 characters of :func:`generate_secret`."""
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
    :param env: variables on top of :func:`env_exports` and the caller's environment
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


def services(settings: Settings, layout: Layout) -> list[Service]:
    """The stack, in start order (``down`` stops it in reverse); then the worker pool and Airflow."""
    store = (redis_cluster_services(settings, layout) if settings.redis.mode == "cluster"
             else [redis_service(settings, layout)])
    core = [*kafka_services(settings, layout), neo4j_service(settings, layout), *store]
    store_names = tuple(service.name for service in store)
    pipeline = [Service(**spec) for spec in pipeline_services(settings)]
    return [*core, *(replace(service, needs=tuple(name for need in service.needs  # "redis": each node of the store
                                                  for name in (store_names if need == "redis" else (need,))))
                     for service in pipeline)]


def env_exports(settings: Settings) -> dict[str, str]:
    """Variables every service gets and ``<stack.dir>/env`` exports; ``PATH`` gets the venv first. With
    several brokers, ``FX__KAFKA__BOOTSTRAP_SERVERS`` (and ``fx_kafka``) lists them all and
    ``FX__STACK__KAFKA_BROKERS`` counts them (they may come from the environment); with a Redis
    Cluster, ``FX__REDIS__MODE`` and ``FX__REDIS__NODES`` name it (they may come from the environment)."""
    cluster = with_all_brokers(settings)
    several = settings.stack.kafka_brokers > 1
    brokers = ({"FX__KAFKA__BOOTSTRAP_SERVERS": cluster.kafka.bootstrap_servers,
                "FX__STACK__KAFKA_BROKERS": str(settings.stack.kafka_brokers)} if several else {})
    store = ({"FX__REDIS__MODE": "cluster", "FX__REDIS__NODES": ",".join(settings.redis.nodes)}
             if settings.redis.mode == "cluster" else {})
    return {"FX_CONFIG": str(config_path().resolve()), **brokers, **store, **pipeline_env(cluster)}


def write_env_file(settings: Settings, layout: Layout) -> Path:
    """``source <stack.dir>/env`` gives a shell what the services see."""
    lines = [f"export {name}={shlex.quote(value)}" for name, value in env_exports(settings).items()]
    lines.append(f'export PATH={shlex.quote(VENV_BIN)}:"$PATH"')
    path = layout.root / "env"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)  # it may hold connection passwords
    path.write_text("# Generated by `make up` (stack/stackctl.py); do not edit.\n" + "\n".join(lines) + "\n")
    return path


# --- services -------------------------------------------------------------------------------


def health_from(checks: Callable[[Settings], Iterator[Check]], settings: Settings) -> Callable[[], str]:
    """A health function from a doctor check generator: its first check says "reachable"."""

    def health() -> str:
        check = next(checks(settings))
        if not check.ok:
            raise NotReadyError(check.detail)
        return check.detail

    return health


def java_classpath(layout: Layout, name: str) -> str:
    """The classpath of a service's jars, after checking ``make setup`` fetched them."""
    lib = layout.lib(name)
    if not any(lib.glob("*.jar")):
        raise StackError(f"{name}: no jars in {show(lib)}; run `make setup`")
    return f"{lib}/*"


@dataclass(frozen=True)
class KafkaNode:
    """One Kafka server of the stack: a broker and a KRaft controller in one JVM."""

    node_id: int
    host: str
    port: int

    @property
    def controller_port(self) -> int:
        return self.port + 1

    @property
    def name(self) -> str:
        """The service: ``kafka`` for the first node (as with one broker), then ``kafka-2``, ``kafka-3``."""
        return "kafka" if self.node_id == 1 else f"kafka-{self.node_id}"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def kafka_nodes(settings: Settings) -> list[KafkaNode]:
    """The ``stack.kafka_brokers`` nodes ``make up`` runs: the first at ``kafka.bootstrap_servers``' first
    address, the others two ports apart, each controller one port above its broker.

    :raises StackError: when ``kafka.bootstrap_servers`` lists other brokers than these
    """
    listed = [address.strip() for address in settings.kafka.bootstrap_servers.split(",")]
    host, port = listed[0].rsplit(":", 1)
    nodes = [KafkaNode(i, host, int(port) + 2 * (i - 1)) for i in range(1, settings.stack.kafka_brokers + 1)]
    if len(listed) > 1 and listed != [node.address for node in nodes]:
        raise StackError(f"kafka: with stack.kafka_brokers {len(nodes)} the stack's brokers are "
                         f"{','.join(node.address for node in nodes)}; set kafka.bootstrap_servers to those or to "
                         f"the first alone. Got {settings.kafka.bootstrap_servers}")
    return nodes


def with_all_brokers(settings: Settings) -> Settings:
    """``settings`` with ``kafka.bootstrap_servers`` listing every broker of the stack, as the services,
    ``<stack.dir>/env`` and Airflow's ``fx_kafka`` get it: a client then starts while the first is down."""
    servers = ",".join(node.address for node in kafka_nodes(settings))
    return settings.model_copy(update={"kafka": settings.kafka.model_copy(update={"bootstrap_servers": servers})})


def topic_replication(settings: Settings) -> tuple[int, dict[str, str]]:
    """The fx topics' replication factor and topic configs: a copy on every broker and, with three,
    ``min.insync.replicas`` 2, so a write acknowledged by ``acks=all`` is on two brokers and one broker
    may fail without losing it or refusing writes."""
    brokers = topic_replicas(settings)
    return brokers, {"min.insync.replicas": str(brokers - 1)} if brokers > 1 else {}


def kafka_services(settings: Settings, layout: Layout) -> list[Service]:
    """Apache Kafka in KRaft mode, one service per node of :func:`kafka_nodes`, each node's storage
    formatted once with the stack's cluster id. One node is a quorum of one in ``<stack.dir>/kafka``;
    three are a static quorum of three voters in ``<stack.dir>/kafka-cluster``, apart from the single
    node's data, so changing ``stack.kafka_brokers`` (after ``make down``) never meets a log formatted
    for the other shape; the first node's ``ready`` creates the topics, replicated on every broker."""
    nodes = kafka_nodes(settings)
    root = layout.home("kafka-cluster" if len(nodes) > 1 else "kafka")
    voters = ",".join(f"{node.node_id}@{node.host}:{node.controller_port}" for node in nodes)
    replicas, min_insync = len(nodes), max(len(nodes) - 1, 1)
    heap = settings.stack.kafka_heap

    def service(node: KafkaNode) -> Service:
        home = root / f"node-{node.node_id}" if len(nodes) > 1 else root
        data, properties, log4j = home / "data", home / "server.properties", home / "log4j2.properties"
        jvm = ("java", f"-Xmx{heap}", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true",
               f"-Dlog4j2.configurationFile={log4j}")

        def prepare() -> None:
            classpath = java_classpath(layout, "kafka")
            home.mkdir(parents=True, exist_ok=True)
            properties.write_text(
                "# Generated by stack/stackctl.py from config.yaml; edits are overwritten.\n"
                "process.roles=broker,controller\n"
                f"node.id={node.node_id}\n"
                f"controller.quorum.voters={voters}\n"
                f"listeners=PLAINTEXT://{node.address},CONTROLLER://{node.host}:{node.controller_port}\n"
                f"advertised.listeners=PLAINTEXT://{node.address}\n"
                "controller.listener.names=CONTROLLER\n"
                "inter.broker.listener.name=PLAINTEXT\n"
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT\n"
                f"log.dirs={data}\n"
                "num.partitions=1\n"
                "auto.create.topics.enable=false\n"
                f"default.replication.factor={replicas}\n"
                f"min.insync.replicas={min_insync}\n"
                f"offsets.topic.replication.factor={replicas}\n"
                f"transaction.state.log.replication.factor={replicas}\n"
                f"transaction.state.log.min.isr={min_insync}\n"
                f"share.coordinator.state.topic.replication.factor={replicas}\n"
                f"share.coordinator.state.topic.min.isr={min_insync}\n"
                "group.initial.rebalance.delay.ms=0\n"
                # A controlled shutdown waits up to 5 minutes for the quorum's approval, which the last
                # node `make down` stops never gets. Without it a node stopped alone hands its partitions
                # over when the controller fences it (broker.session.timeout.ms, 9 s), and loses nothing.
                f"controlled.shutdown.enable={'false' if len(nodes) > 1 else 'true'}\n"
            )
            log4j.write_text(
                "# Generated by stack/stackctl.py: Kafka logs to stdout, which the stack sends to its log file.\n"
                "status = warn\n"
                "appender.out.type = Console\n"
                "appender.out.name = STDOUT\n"
                "appender.out.layout.type = PatternLayout\n"
                "appender.out.layout.pattern = [%d] %p %m (%c)%n\n"
                "rootLogger.level = INFO\n"
                "rootLogger.appenderRef.out.ref = STDOUT\n"
                "logger.requests.name = kafka.request.logger\n"
                "logger.requests.level = WARN\n"
            )
            if not (data / "meta.properties").exists():
                tool = (*jvm, "-cp", classpath, "kafka.tools.StorageTool")
                cluster_id = kafka_cluster_id(root)
                run_tool(node.name, "StorageTool format", (*tool, "format", "-t", cluster_id, "-c", str(properties)),
                         layout)

        return Service(
            name=node.name,
            command=(*jvm, "-cp", f"{layout.lib('kafka')}/*", "kafka.Kafka", str(properties)),
            health=health_from(kafka_checks, settings.model_copy(
                update={"kafka": settings.kafka.model_copy(update={"bootstrap_servers": node.address})})),
            ports=(node.port, node.controller_port),
            prepare=prepare,
            ready=partial(ensure_topics, with_all_brokers(settings)) if node.node_id == 1 else None,
        )

    return [service(node) for node in nodes]


def kafka_cluster_id(root: Path) -> str:
    """The id every node of the stack's Kafka is formatted with, kept in ``<root>/cluster-id``: made the
    first time as ``StorageTool random-uuid`` makes it (16 random bytes, base64url without padding, never
    starting with ``-``), not by running the tool, whose stdout also carries Kafka's log lines."""
    path = root / "cluster-id"
    if not path.exists():
        cluster_id = "-"
        while cluster_id.startswith("-"):
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        path.write_text(cluster_id + "\n")
    return path.read_text().strip()


def ensure_topics(settings: Settings) -> None:
    """Create missing fx topics (see :func:`topic_replication`), grow any with fewer partitions than
    configured, and warn of any with fewer replicas (Kafka keeps a topic's replication factor)."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import NewPartitions, NewTopic

    admin = kafka_admin(settings.kafka)
    metadata = admin.list_topics(timeout=5)
    replicas, configs = topic_replication(settings)
    if len(metadata.brokers) < replicas:  # else the first brokers up would lead every partition
        raise NotReadyError(f"{len(metadata.brokers)} of {replicas} brokers registered")
    existing, wanted = metadata.topics, topic_partitions(settings.kafka)
    for name in sorted(wanted.keys() & existing.keys()):
        if (found := Replication.of(existing[name]).factor) < replicas:  # created before stack.kafka_brokers grew
            print(f"kafka: warning: topic {name} has replication factor {found}, the stack wants {replicas}: "
                  f"{LOW_REPLICATION_FIX}")
    create = [NewTopic(name, n, replicas, config=configs) for name, n in wanted.items() if name not in existing]
    grow = [NewPartitions(name, n) for name, n in wanted.items()
            if name in existing and len(existing[name].partitions) < n]
    futures = {**(admin.create_topics(create) if create else {}), **(admin.create_partitions(grow) if grow else {})}
    for name, future in futures.items():
        try:
            future.result(timeout=10)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise NotReadyError(f"topic {name}: {exc.args[0].str()}") from None
        copies = f", {replicas} replicas" if replicas > 1 else ""
        print(f"kafka: topic {name} now has {partitions(wanted[name])}{copies}")


def neo4j_service(settings: Settings, layout: Layout) -> Service:
    """Neo4j Community: Bolt only, authentication on, password generated before the first start."""
    root = layout.home("neo4j")
    home, conf, data = root / "home", root / "conf", root / "data"
    config = settings.neo4j
    host, port = config.uri.split("://", 1)[-1].rsplit(":", 1)
    heap = settings.stack.neo4j_heap
    env = {"NEO4J_HOME": str(home), "NEO4J_CONF": str(conf)}

    def prepare() -> None:
        classpath = java_classpath(layout, "neo4j")
        for folder in (home, conf, data):
            folder.mkdir(parents=True, exist_ok=True)
        (conf / "neo4j.conf").write_text(
            "# Generated by stack/stackctl.py from config.yaml; edits are overwritten.\n"
            f"server.default_listen_address={host}\n"
            "server.bolt.enabled=true\n"
            f"server.bolt.listen_address={host}:{port}\n"
            f"server.bolt.advertised_address={host}:{port}\n"
            "server.http.enabled=false\n"
            "server.https.enabled=false\n"
            "dbms.security.auth_enabled=true\n"
            f"initial.dbms.default_database={config.database}\n"
            f"server.memory.heap.initial_size={heap}\n"
            f"server.memory.heap.max_size={heap}\n"
            f"server.memory.pagecache.size={settings.stack.neo4j_pagecache}\n"
            f"server.directories.data={data}\n"
            f"server.directories.logs={root / 'logs'}\n"
            "dbms.usage_report.enabled=false\n"
            "# Without this, stopping waits 5 s for each idle Bolt thread pool.\n"
            "internal.server.bolt.thread_pool_shutdown_wait_time=1s\n"
        )
        if not (data / "databases" / "system").exists():  # first start: the password must be set before it
            set_initial_password(config, ("java", "-cp", classpath, "org.neo4j.server.startup.Neo4jAdminCommand"),
                                 layout, env)
        elif config.password is None and not config.password_file.exists():
            raise StackError(f"neo4j: {show(data)} has a database but {show(config.password_file)} is gone; "
                             "run `make clean-stack` to start over")

    return Service(
        name="neo4j",
        command=(
            "java", f"-Xms{heap}", f"-Xmx{heap}", "-XX:+UseG1GC", "-XX:-OmitStackTraceInFastThrow",
            "-XX:+DisableExplicitGC", "-Djdk.nio.maxCachedBufferSize=1024",
            "-Dio.netty.tryReflectionSetAccessible=true", "-Dlog4j2.disable.jmx=true", "-Dfile.encoding=UTF-8",
            "--add-opens=java.base/java.nio=ALL-UNNAMED", "--add-opens=java.base/java.io=ALL-UNNAMED",
            "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
            "-cp", f"{layout.lib('neo4j')}/*", "org.neo4j.server.CommunityEntryPoint", "--console-mode",
            f"--home-dir={home}", f"--config-dir={conf}",
        ),
        health=health_from(neo4j_checks, settings),
        ports=(int(port),),
        env=env,
        prepare=prepare,
        ready=partial(create_schema, settings),
    )


def create_schema(settings: Settings) -> None:
    """The graph's constraints and ts index (idempotent), so ``fx doctor`` passes before the first load."""
    from fx_workers.engine.graph import open_driver

    with open_driver(settings.neo4j) as driver:
        ensure_schema(driver, settings)


def set_initial_password(config: Neo4jConfig, admin: tuple[str, ...], layout: Layout, env: dict[str, str]) -> None:
    """Before Neo4j's first start: ``neo4j-admin dbms set-initial-password`` with ``FX__NEO4J__PASSWORD``,
    else the password file, else a new password, which is written to the file only once the tool has
    set it. neo4j-admin 5 takes the password on its command line alone (no file, variable or stdin), so
    it goes after ``--``, where a password beginning with ``-`` is not read as an option. A failed set
    leaves no file behind; the next ``make up`` sets the password again (neo4j-admin redoes it until the
    first start), so no ``make clean-stack`` is needed.

    :raises StackError: when the tool fails, saying where its reason is and what to do
    """
    known = config.password is not None or config.password_file.exists()
    password = config.secret() if known else generate_secret(PASSWORD_BYTES)
    try:
        run_tool("neo4j", "neo4j-admin dbms set-initial-password",
                 (*admin, "dbms", "set-initial-password", "--", password), layout, env)
    except StackError as exc:
        source = ("FX__NEO4J__PASSWORD" if config.password is not None
                  else show(config.password_file) if known else None)
        given = f"; the password is {source}'s (Neo4j wants 8 characters or more)" if source else ""
        raise StackError(f"{exc}{given}. Fix what the log says and run `make up` again: until Neo4j's first "
                         "start it sets the initial password anew, no `make clean-stack` needed") from None
    if not known:
        write_password(config.password_file, password, f"neo4j: the password of user {config.user}")


def generate_password(path: Path, what: str) -> str:
    """A new random password (:func:`generate_secret`) written to ``path``."""
    return write_password(path, generate_secret(PASSWORD_BYTES), what)


def write_password(path: Path, password: str, what: str) -> str:
    """Write ``password`` to ``path`` (mode 600, created so before anything is written)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(password + "\n")
    print(f"{what}: generated into {show(path)}")
    return password


def stored_password(path: Path, what: str) -> str:
    """The password in ``path``, generated the first time."""
    if path.exists():
        return path.read_text().strip()
    return generate_password(path, what)


def redis_users(settings: Settings) -> str:
    """The ACL file's text: :func:`redis_acl`'s rules, each user with the SHA-256 of its password, so
    the file, the command line and ``ACL LIST`` never hold a password in clear."""
    config = settings.redis
    writer = config.user or "default"
    passwords = {
        writer: redis_writer_password(config),
        REDIS_READER: stored_password(reader_password_file(settings), f"redis: the password of user {REDIS_READER}"),
    }
    lines = []  # Redis refuses comments in an ACL file: it is regenerated from config.yaml at each start
    for user, rules in redis_acl(config).items():
        password = passwords.get(user)
        lines.append(f"user {user} {rules} #{hashlib.sha256(password.encode()).hexdigest()}" if password
                     else f"user {user} {rules}")
    return "\n".join(lines) + "\n"


def redis_writer_password(config: RedisConfig) -> str:
    """``FX__REDIS__PASSWORD``, else the password file, else a new password written to it (mode 600)."""
    return config.secret() or generate_password(config.password_file, f"redis: the password of user "
                                                                      f"{config.user or 'default'}")


def redis_service(settings: Settings, layout: Layout) -> Service:
    """Redis from Debian's ``redis-server``, in the foreground (we detach it ourselves), with ACL users
    from a generated file: a client without credentials is refused."""
    config = settings.redis
    folder = layout.home("redis")
    acl_file = folder / "users.acl"
    # The append-only file alone keeps the data; RDB snapshots on top would rewrite it all every minute.
    persistence = ("--appendonly", "yes" if config.persistence else "no", "--save", "")

    def prepare() -> None:
        folder.mkdir(parents=True, exist_ok=True)
        acl_file.touch(mode=0o600)
        acl_file.write_text(redis_users(settings))

    return Service(
        name="redis",
        command=("redis-server", "--bind", config.host, "--port", str(config.port), "--dir", str(folder),
                 "--daemonize", "no", "--aclfile", str(acl_file), *persistence),
        health=health_from(redis_checks, settings),
        ports=(config.port,),
        prepare=prepare,
    )


REDIS_CLUSTER_ADMIN = "fx-cluster"
"""Cluster mode: the user ``redis-cli --cluster create`` runs as and replicas replicate as (cluster and
replication commands only, no keys); its password is in :func:`redis_cluster_admin_file`."""
REDIS_CLUSTER_ADMIN_RULES = ("reset on resetchannels -@all +cluster +psync +replconf +sync +ping +info +config|get "
                             "+readonly +asking +command +dbsize +echo")
REDIS_CLUSTER_NODE_TIMEOUT_MS = 2000
"""A master unreachable this long is failed over to its replica (Redis's default, 15 s, stalls writes)."""
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def redis_cluster_admin_file(layout: Layout) -> Path:
    return layout.home("redis-cluster") / "admin-password"


def redis_cluster_nodes(settings: Settings) -> list[tuple[str, int]]:
    """``(host, port)`` of each node the stack runs: the masters on ``redis.nodes``, then
    ``stack.redis_replicas`` replicas per master on the ports after the last of them.

    :raises StackError: fewer than 3 masters (Redis Cluster's minimum), or a node off loopback
    """
    masters = settings.redis.addresses()
    if len(masters) < 3:
        raise StackError("redis: cluster mode needs at least 3 masters in redis.nodes. "
                         f"Got {list(settings.redis.nodes)}")
    hosts = {host for host, _ in masters}
    if len(hosts) != 1 or not hosts <= set(LOOPBACK):
        raise StackError(f"redis: the local stack runs cluster nodes on one loopback host ({', '.join(LOOPBACK)}). "
                         f"Got {sorted(hosts)}")
    host, last = masters[0][0], max(port for _, port in masters)
    return [*masters, *((host, last + 1 + i) for i in range(len(masters) * settings.stack.redis_replicas))]


def redis_cluster_users(settings: Settings, layout: Layout) -> str:
    """:func:`redis_users` plus the cluster admin, whose password is generated like the others."""
    password = stored_password(redis_cluster_admin_file(layout), f"redis: the password of user {REDIS_CLUSTER_ADMIN}")
    digest = hashlib.sha256(password.encode()).hexdigest()
    return redis_users(settings) + f"user {REDIS_CLUSTER_ADMIN} {REDIS_CLUSTER_ADMIN_RULES} #{digest}\n"


def redis_cluster_admin(layout: Layout, host: str, port: int) -> redis.Redis:
    """A client of one node as the cluster admin, that gives up quickly."""
    import redis

    password = redis_cluster_admin_file(layout).read_text().strip()
    return redis.Redis(host=host, port=port, username=REDIS_CLUSTER_ADMIN, password=password, socket_timeout=3,
                       socket_connect_timeout=3)


def redis_cluster_services(settings: Settings, layout: Layout) -> list[Service]:
    """Cluster mode: one ``redis-server`` per node with ``cluster-enabled yes`` and the ACL users of
    standalone mode (one file), each with its own folder (config, ``nodes.conf``, append-only file),
    log and PID file; the last node waits for the others and forms the cluster once."""
    config = settings.redis
    nodes = redis_cluster_nodes(settings)
    root = layout.home("redis-cluster")
    acl_file = root / "users.acl"
    names = [f"redis-{port}" for _, port in nodes]

    def node(host: str, port: int) -> Service:
        folder = root / str(port)
        conf = folder / "redis.conf"

        def prepare() -> None:
            folder.mkdir(parents=True, exist_ok=True)
            acl_file.touch(mode=0o600)
            acl_file.write_text(redis_cluster_users(settings, layout))
            conf.touch(mode=0o600)  # it holds the replication password
            conf.write_text(
                "# Generated by stack/stackctl.py from config.yaml; edits are overwritten.\n"
                f"bind {host}\nport {port}\ndir {folder}\ndaemonize no\naclfile {acl_file}\n"
                f"appendonly {'yes' if config.persistence else 'no'}\nsave \"\"\n"
                "cluster-enabled yes\ncluster-config-file nodes.conf\n"
                f"cluster-node-timeout {REDIS_CLUSTER_NODE_TIMEOUT_MS}\n"
                f"masteruser {REDIS_CLUSTER_ADMIN}\n"
                f"masterauth {redis_cluster_admin_file(layout).read_text().strip()}\n"
            )

        def health() -> str:
            info = redis_cluster_admin(layout, host, port).execute_command("CLUSTER INFO")
            return f"cluster_state {info['cluster_state']}, {info['cluster_known_nodes']} known nodes"

        return Service(name=f"redis-{port}", command=("redis-server", str(conf)), health=health,
                       ports=(port, port + 10000), prepare=prepare)  # and the cluster bus

    *others, last = [node(host, port) for host, port in nodes]
    return [*others, replace(last, needs=tuple(names[:-1]), ready=partial(form_redis_cluster, settings, layout))]


def form_redis_cluster(settings: Settings, layout: Layout) -> None:
    """``redis-cli --cluster create`` once, when every node is empty and alone; then wait (by raising
    :class:`NotReadyError`) until every node says ``cluster_state:ok`` and knows all the others.
    """
    nodes = redis_cluster_nodes(settings)
    infos = [redis_cluster_admin(layout, host, port).execute_command("CLUSTER INFO") for host, port in nodes]
    if all(int(info["cluster_known_nodes"]) == 1 and int(info["cluster_slots_assigned"]) == 0 for info in infos):
        run_tool(f"redis-{nodes[-1][1]}", "redis-cli --cluster create",
                 ("redis-cli", "--user", REDIS_CLUSTER_ADMIN, "--cluster", "create",
                  *(f"{host}:{port}" for host, port in nodes),
                  "--cluster-replicas", str(settings.stack.redis_replicas), "--cluster-yes"),
                 layout, {"REDISCLI_AUTH": redis_cluster_admin_file(layout).read_text().strip()})
        infos = [redis_cluster_admin(layout, host, port).execute_command("CLUSTER INFO") for host, port in nodes]
    states = {f"{host}:{port}": f"{info['cluster_state']} ({info['cluster_known_nodes']} nodes known)"
              for (host, port), info in zip(nodes, infos, strict=True)}
    if any(int(info["cluster_known_nodes"]) != len(nodes) or info["cluster_state"] != "ok" for info in infos):
        raise NotReadyError(f"cluster_state {states}, {len(nodes)} nodes wanted (nodes left from a cluster of "
                            "other redis.nodes or stack.redis_replicas need `make clean-stack`)")


# --- processes ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PidRecord:
    """A started process: the PID plus its start time, so a reused PID is never mistaken for it."""

    pid: int
    create_time: float

    def process(self) -> psutil.Process | None:
        """The live process, or None when it exited (zombies count as exited)."""
        try:
            proc = psutil.Process(self.pid)
            if abs(proc.create_time() - self.create_time) > 1 or proc.status() == psutil.STATUS_ZOMBIE:
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


def require_program(name: str, program: str) -> str:
    path = shutil.which(program)
    if path is None:
        hint = INSTALL_HINTS.get(program, "run `make setup`")
        raise StackError(f"{name}: `{program}` is not on PATH; {hint}")
    return path


def stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


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


def start(service: Service, settings: Settings, layout: Layout) -> subprocess.Popen[bytes]:
    """Start one service detached: own session, stdin from /dev/null, output to its log file."""
    program = require_startable(service)
    if service.prepare:
        service.prepare()
    log = layout.log_file(service.name)
    log.parent.mkdir(parents=True, exist_ok=True)
    layout.run.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **env_exports(settings), "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
           **service.env}
    with log.open("ab") as out:
        out.write(f"==== {stamp()} starting {service.name}\n".encode())
        out.flush()
        proc = subprocess.Popen((program, *service.command[1:]), cwd=REPO_ROOT, env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    record = {"pid": proc.pid, "create_time": psutil.Process(proc.pid).create_time()}
    layout.pid_file(service.name).write_text(json.dumps(record) + "\n")
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


def up(settings: Settings, layout: Layout, only: list[Service] | None = None) -> None:
    """Start what is not running, in dependency order, and wait until every service is healthy.

    :param only: these services instead of the whole stack (a test's own Redis Cluster)
    """
    print(f"up: environment in {show(write_env_file(settings, layout))}")
    timeout = settings.stack.start_timeout_seconds
    pending = {service.name: service for service in (only or services(settings, layout))}
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
            started = None if proc else start(service, settings, layout)
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
    write_env_file(settings, layout)  # again: a first start of Neo4j generated the password fx_neo4j needs


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


def down(settings: Settings, layout: Layout) -> None:
    """Stop the services in reverse start order, after any PID file no service names any more
    (say, workers beyond a lowered ``workers.count``)."""
    names = [service.name for service in reversed(services(settings, layout))]
    leftovers = sorted(path.stem for path in layout.run.glob("*.pid") if path.stem not in names)
    for name in (*leftovers, *names):
        stop(name, layout)


def status(settings: Settings, layout: Layout) -> None:
    """Print one row per service: pid, health, port and memory."""
    rows = [("service", "pid", "state", "port", "RSS MB")]
    for service in services(settings, layout):
        proc = running(layout, service.name)
        port = str(service.ports[0]) if service.ports else "-"
        if proc is None:
            rows.append((service.name, "-", "stopped", port, "-"))
            continue
        detail, _ = probe(service, ready=False)
        rows.append((service.name, str(proc.pid), "healthy" if detail else "unhealthy", port, f"{rss_mb(proc):.0f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


def clean(settings: Settings, layout: Layout) -> None:
    """Delete the stack's data, logs, config and generated password; keep the fetched jars."""
    if any(running(layout, pid_file.stem) for pid_file in layout.run.glob("*.pid")):
        raise StackError("the stack is running; run `make down` first")
    for child in layout.root.iterdir() if layout.root.exists() else ():
        if child.is_dir() and child.name != "lib":
            shutil.rmtree(child)
        elif child.is_file():
            child.unlink()
    settings.neo4j.password_file.unlink(missing_ok=True)
    settings.redis.password_file.unlink(missing_ok=True)
    print(f"clean: removed everything in {show(layout.root)} but lib/")


def rss_mb(proc: psutil.Process) -> float:
    """Resident memory of the process and its children, in MiB."""
    total = 0
    for member in (proc, *proc.children(recursive=True)):
        try:
            total += member.memory_info().rss
        except psutil.Error:
            continue
    return total / 2**20


# --- artifacts ------------------------------------------------------------------------------


def fetch(settings: Settings, layout: Layout) -> None:
    """Copy each service's jars from Maven Central unless the pom is unchanged since the last copy."""
    for name in ("kafka", "neo4j"):
        pom = REPO_ROOT / "stack" / name / "pom.xml"
        target = layout.lib(name)
        marker = target / ".pom.sha256"
        digest = hashlib.sha256(pom.read_bytes()).hexdigest()
        if marker.exists() and marker.read_text() == digest:
            print(f"setup: {name} jars up to date in {show(target)}")
            continue
        mvn = require_program(name, "mvn")
        partial_dir = target.with_name(f"{name}.partial")
        shutil.rmtree(partial_dir, ignore_errors=True)
        log = layout.log_file(f"mvn-{name}")
        log.parent.mkdir(parents=True, exist_ok=True)
        print(f"setup: fetching {name} jars from Maven Central into {show(target)} (log {show(log)})")
        with log.open("w") as out:
            argv = (mvn, "-B", "-q", "-Dstyle.color=never", "-f", str(pom), "dependency:copy-dependencies",
                    f"-DoutputDirectory={partial_dir}")
            code = subprocess.call(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        if code != 0:
            raise StackError(f"Maven could not fetch the {name} jars (exit {code}: offline, or a wrong version "
                             f"in {show(pom)}?); see {show(log)}")
        shutil.rmtree(target, ignore_errors=True)
        partial_dir.rename(target)
        marker.write_text(digest)


@contextmanager
def exclusive(layout: Layout) -> Iterator[None]:
    """One ``up``, ``down`` or ``clean`` at a time: two ``make up`` at once each started the services
    the other had not recorded yet, and the second PID file orphaned the first process."""
    layout.run.mkdir(parents=True, exist_ok=True)
    with (layout.run / "stackctl.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("waiting for another `make up`, `make down` or `make clean-stack` to finish")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stackctl", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("fetch", "up", "down", "status", "clean"))
    command = parser.parse_args(argv).command
    sys.stdout.reconfigure(line_buffering=True)  # progress lines and the error line stay in order in CI logs
    try:
        settings = load_settings()
        layout = Layout(settings.stack.dir)
        if command == "fetch":
            fetch(settings, layout)
        elif command == "status":
            status(settings, layout)
        else:
            with exclusive(layout):
                {"up": up, "down": down, "clean": clean}[command](settings, layout)
            if command == "up":
                status(settings, layout)
    except (StackError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
