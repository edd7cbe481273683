"""Health checks behind ``fx doctor``: services, topics and graph, each failure with its fix.

Each service has a generator of checks whose first item is "reachable" and whose later items need
that connection; callers that only want liveness (``ops``) take the first one.
Every network call has a short timeout, so doctor never hangs on a dead service.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fx_workers.steps.topics import LOW_REPLICATION_FIX, Replication, topic_partitions, topic_replicas

if TYPE_CHECKING:
    from collections.abc import Iterator

    import redis
    from confluent_kafka.admin import AdminClient, TopicMetadata
    from neo4j import Session
    from redis.cluster import RedisCluster

    from fx_workers.config import GraphModel, KafkaConfig, RedisConfig, Settings

TIMEOUT_SECONDS = 3.0
UP = "run `make up`"
SLOTS = 16384
"""Hash slots of a Redis Cluster; each must be served for every key to be writable."""
LOAD = "run `make up` or `fx load data/sample.csv` (both create it)"

# librdkafka reports refused connections on stderr unless given a logger; a check says it once.
_librdkafka_log = logging.getLogger("fx_workers.tools.doctor.librdkafka")
_librdkafka_log.addHandler(logging.NullHandler())
_librdkafka_log.propagate = False


@dataclass(frozen=True)
class Check:
    """One line of the doctor's table; ``fix`` is what to do when ``ok`` is false."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


def run_checks(settings: Settings) -> list[Check]:
    """Every check, in table order: Kafka and its topics, Neo4j and the graph, Redis."""
    return [*kafka_checks(settings), *neo4j_checks(settings), *redis_checks(settings)]


def kafka_admin(kafka: KafkaConfig) -> AdminClient:
    """An admin client that gives up quickly and keeps librdkafka's retries off stderr."""
    from confluent_kafka.admin import AdminClient

    return AdminClient(
        {
            "bootstrap.servers": kafka.bootstrap_servers,
            "socket.connection.setup.timeout.ms": int(TIMEOUT_SECONDS * 1000),
            "logger": _librdkafka_log,
        }
    )


def kafka_checks(settings: Settings) -> Iterator[Check]:
    """The broker answers a metadata request; the brokers registered; each configured topic has its
    partition count, its replicas and every replica in sync; the workers have a partition each."""
    from confluent_kafka import KafkaException

    kafka = settings.kafka
    try:
        metadata = kafka_admin(kafka).list_topics(timeout=TIMEOUT_SECONDS)
    except KafkaException as exc:
        yield Check("kafka", False, f"no broker at {kafka.bootstrap_servers}: {exc.args[0].str()}", UP)
        return
    yield Check("kafka", True, f"{kafka.bootstrap_servers}, cluster id {metadata.cluster_id}")
    yield _brokers_check(len(metadata.brokers), topic_replicas(settings))
    yield from _topic_checks(settings, metadata.topics)
    yield _replication_check({name: Replication.of(topic) for name in topic_partitions(kafka)
                              if (topic := metadata.topics.get(name)) is not None and topic.error is None},
                             topic_replicas(settings))
    yield _workers_check(settings, metadata.topics.get(kafka.topics.requests))


def _topic_checks(settings: Settings, topics: dict[str, TopicMetadata]) -> Iterator[Check]:
    """Each configured topic: its partition count, then its replication factor and replicas in sync."""
    for name, wanted in topic_partitions(settings.kafka).items():
        topic = topics.get(name)
        label = f"topic {name}"
        if topic is None or topic.error is not None:
            yield Check(label, False, "missing", f"{UP} (it creates the configured topics)")
        elif len(topic.partitions) < wanted:
            found = len(topic.partitions)
            yield Check(label, False, f"{partitions(found)}, config says {wanted}", f"{UP} (it adds partitions)")
        elif len(topic.partitions) > wanted:
            found = len(topic.partitions)
            yield Check(
                label,
                False,
                f"{partitions(found)}, config says {wanted}",
                "partitions cannot be removed: delete the topic (or `make clean-stack`), then `make up`",
            )
        else:
            yield Check(label, True, partitions(wanted))


def _brokers_check(found: int, wanted: int) -> Check:
    """As many brokers registered as the topics have copies (``stack.kafka_brokers``)."""
    detail = f"{found} broker{'s' if found != 1 else ''} registered, config says {wanted}"
    if found >= wanted:
        return Check("kafka brokers", True, detail)
    return Check("kafka brokers", False, detail, "a broker is down: `make up` starts it again; its log says why "
                 "it stopped (`.stack/logs/kafka-N.log`)")


def _replication_check(topics: dict[str, Replication], wanted: int) -> Check:
    """The fx topics' replication factor against ``wanted``, and their under-replicated partitions."""
    low = {name: r.factor for name, r in topics.items() if r.factor < wanted}
    if low:
        return Check("kafka replicas", False, ", ".join(f"{name}: replication factor {factor}"
                                                         for name, factor in low.items())
                     + f"; config says {wanted} (stack.kafka_brokers)", LOW_REPLICATION_FIX)
    behind = {name: r.under_replicated for name, r in topics.items() if r.under_replicated}
    if behind:
        return Check("kafka replicas", False, ", ".join(f"{name}: {count} under-replicated"
                                                         for name, count in behind.items())
                     + " (fewer replicas in sync than assigned)",
                     "a broker is down or behind: `make up` starts it again; its log says why it stopped")
    factors = sorted({r.factor for r in topics.values()})
    return Check("kafka replicas", True, f"replication factor {'/'.join(map(str, factors)) or '-'} on "
                 f"{len(topics)} fx topics, every partition fully in sync")


def _workers_check(settings: Settings, requests: TopicMetadata | None) -> Check:
    """No more workers (``workers.count``) than the request topic's partitions: Kafka gives each
    partition to one member of the group, so the others would sit idle."""
    found = len(requests.partitions) if requests is not None and requests.error is None else 0
    workers = settings.workers.count
    detail = f"{workers} worker{'s' if workers != 1 else ''}, {partitions(found)} of {settings.kafka.topics.requests}"
    if found and workers > found:
        return Check("workers", False, f"{detail}: {workers - found} would sit idle",
                     "raise kafka.partitions.requests (then `make up` adds them) or lower workers.count")
    return Check("workers", True, detail)


def partitions(count: int) -> str:
    return f"{count} partition" if count == 1 else f"{count} partitions"


def neo4j_checks(settings: Settings) -> Iterator[Check]:
    """Bolt answers with the configured password; the id constraint exists; the graph's size."""
    from neo4j import GraphDatabase
    from neo4j.exceptions import AuthError, DriverError, Neo4jError

    from fx_workers.config import ConfigError

    config = settings.neo4j
    try:
        auth = (config.user, config.secret())
    except ConfigError as exc:
        yield Check("neo4j", False, str(exc), f"{UP} (it generates the password)")
        return
    driver = GraphDatabase.driver(
        config.uri,
        auth=auth,
        connection_timeout=TIMEOUT_SECONDS,
        connection_acquisition_timeout=TIMEOUT_SECONDS,
        notifications_min_severity="OFF",  # an empty graph warns of unknown labels; doctor says it once
    )
    with driver, driver.session(database=config.database) as session:
        try:
            record = session.run(
                "CALL dbms.components() YIELD name, versions, edition RETURN name, versions[0] AS version, edition"
            ).single(strict=True)
        except AuthError:
            source = "FX__NEO4J__PASSWORD" if config.password else config.password_file
            yield Check(
                "neo4j",
                False,
                f"{config.uri} refused the password of user {config.user} from {source}",
                "the password does not match the data: `make clean-stack`, then `make up`",
            )
            return
        except (Neo4jError, DriverError, OSError) as exc:
            yield Check("neo4j", False, f"no server at {config.uri}: {exc}", UP)
            return
        yield Check("neo4j", True, f"{config.uri}, {record['name']} {record['version']} {record['edition']}")
        try:
            yield _constraint_check(session, settings.graph)
            yield _ts_index_check(session, settings.graph)
            yield _graph_size_check(session, settings.graph)
        except (Neo4jError, DriverError, OSError) as exc:
            yield Check("neo4j graph", False, f"query failed: {exc}", UP)


def _constraint_check(session: Session, graph: GraphModel) -> Check:
    """The loader's uniqueness constraint on the account id (MERGE relies on it to be fast)."""
    types = session.run(
        "SHOW CONSTRAINTS YIELD type, entityType, labelsOrTypes, properties "
        "WHERE entityType = 'NODE' AND labelsOrTypes = [$label] AND properties = [$key] RETURN type",
        label=graph.account_label,
        key=graph.id_property,
    ).value()
    name = f"constraint :{graph.account_label}({graph.id_property})"
    if any("UNIQUE" in kind or kind == "NODE_KEY" for kind in types):
        return Check(name, True, "unique")
    return Check(name, False, "no uniqueness constraint", LOAD)


def _ts_index_check(session: Session, graph: GraphModel) -> Check:
    """The loader's range index on the transfers' ts: without it every batch scans all transfers to
    learn whether any is after ``as_of``."""
    found = session.run(
        "SHOW INDEXES YIELD type, entityType, labelsOrTypes, properties "
        "WHERE type = 'RANGE' AND entityType = 'RELATIONSHIP' AND labelsOrTypes = [$type] "
        "AND properties = [$key] RETURN count(*) > 0",
        type=graph.transfer_type,
        key=graph.ts_property,
    ).single(strict=True)[0]
    name = f"index [:{graph.transfer_type}]({graph.ts_property})"
    return Check(name, True, "range") if found else Check(name, False, "no range index", LOAD)


def _graph_size_check(session: Session, graph: GraphModel) -> Check:
    """Counts of accounts and transfers; an empty graph is healthy but worth saying."""
    accounts = session.run(f"MATCH (a:{graph.account_label}) RETURN count(a)").single(strict=True)[0]
    transfers = session.run(f"MATCH ()-[t:{graph.transfer_type}]->() RETURN count(t)").single(strict=True)[0]
    detail = f"{accounts} {graph.account_label} nodes, {transfers} {graph.transfer_type} relationships"
    if accounts == 0:
        detail += " (empty: `fx load data/sample.csv` loads the sample)"
    return Check("neo4j graph", True, detail)


def redis_checks(settings: Settings) -> Iterator[Check]:
    """The server answers PING as ``redis.user`` with the configured password (its version and memory in
    use), or in cluster mode every master says the cluster is ok with all slots served; then that it
    refuses a client without credentials."""
    import redis

    config = settings.redis
    address = config.endpoint()
    try:
        client = _redis_client(settings)
    except redis.exceptions.RedisClusterException as exc:  # a cluster client connects at once
        if isinstance(exc.__cause__, redis.AuthenticationError):
            yield _redis_auth_failure(config, address, exc.__cause__)
        else:
            yield Check("redis", False, f"{address}: {exc.__cause__ or exc}", UP)
        return
    try:
        if config.mode == "cluster":
            yield _redis_cluster_check(client, address)
            yield _redis_refuses_anonymous(settings, address)
            return
        client.ping()
        info = client.info()
    except redis.AuthenticationError as exc:
        yield _redis_auth_failure(config, address, exc)
        return
    except redis.exceptions.NoPermissionError:
        yield Check("redis", False, f"{address}: user {config.user} may not run PING and INFO",
                    "fx writes as the writer user of config.yaml (redis.user), not as a read-only user")
        return
    except redis.RedisError as exc:
        yield Check("redis", False, f"no server at {address}: {exc}", UP)
        return
    finally:
        client.close()
    yield Check("redis", True, f"{address}, Redis {info['redis_version']}, {info['used_memory_human']} used")
    yield _redis_refuses_anonymous(settings, address)


def _redis_cluster_check(client: RedisCluster, address: str) -> Check:
    """Every master answers and says ``cluster_state:ok`` with all 16384 slots served; the count of
    masters and the memory they use. Each master is asked alone, so the table names the bad one."""
    import redis

    bad, used, version = {}, 0, ""
    masters = client.get_primaries()
    for node in masters:
        try:
            info = client.cluster_info(target_nodes=node)
            server = client.info(target_nodes=node)
        except redis.RedisError as exc:
            bad[node.name] = f"unreachable ({exc})"
            continue
        used, version = used + int(server["used_memory"]), server["redis_version"]
        if info["cluster_state"] != "ok" or int(info["cluster_slots_ok"]) != SLOTS:
            bad[node.name] = f"cluster_state {info['cluster_state']}, {info['cluster_slots_ok']}/{SLOTS} slots ok"
    if bad:
        return Check("redis", False, f"{address}: " + "; ".join(f"{node}: {why}" for node, why in sorted(bad.items())),
                     "check each node's log; a master without a replica lost its slots until it is back")
    return Check("redis", True, f"{address}, Redis {version}, cluster_state ok, {SLOTS} slots covered by "
                 f"{len(masters)} masters, {used / 2**20:.1f}M used")


def _redis_client(settings: Settings, *, anonymous: bool = False) -> redis.Redis | RedisCluster:
    """fx's client (or, with ``anonymous``, one without credentials, to the first seed node in cluster
    mode) that gives up quickly: the default backoff would turn "refused" into 6 s."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from fx_workers.store.client import open_redis

    config = settings.redis
    quick = {"socket_timeout": TIMEOUT_SECONDS, "socket_connect_timeout": TIMEOUT_SECONDS,
             "retry": Retry(NoBackoff(), 0)}
    if anonymous and config.mode == "cluster":
        (host, port), *_ = config.addresses()
        return redis.Redis(host=host, port=port, **quick)
    if anonymous:
        return redis.Redis(host=config.host, port=config.port, db=config.db, **quick)
    return open_redis(config, **quick)


def _redis_auth_failure(config: RedisConfig, address: str, exc: Exception) -> Check:
    """What to do when the server refuses fx's credentials, or wants some and fx has none."""
    if config.secret() is None:
        return Check("redis", False, f"{address} wants a password and none is configured "
                     f"(no FX__REDIS__PASSWORD, no {config.password_file})",
                     f"{UP} (it generates {config.password_file}) or set FX__REDIS__PASSWORD")
    who = f"user {config.user}" if config.user else "the default user"
    return Check("redis", False, f"{address} refused {who} with the password from {config.password_source()}: "
                 f"{exc}",  # the server's reason (WRONGPASS ...), never the password
                 "the password does not match the running server's: `make down && make up` restarts Redis "
                 "with the users of the password files")


def _redis_refuses_anonymous(settings: Settings, address: str) -> Check:
    """Auth is on when a client without credentials is refused: else anyone on the network can rewrite
    the features a scorer reads."""
    import redis

    client = _redis_client(settings, anonymous=True)
    try:
        client.ping()
    except redis.AuthenticationError:
        user = settings.redis.user or "default"
        return Check("redis auth", True, f"auth on: user {user}, password from {settings.redis.password_source()}")
    except redis.RedisError as exc:
        return Check("redis auth", False, f"{address}: a client without credentials got {exc}", UP)
    finally:
        client.close()
    return Check("redis auth", False, f"auth off: {address} takes commands from a client without credentials",
                 "`make down && make up` restarts the stack's Redis with ACL users; elsewhere set a password "
                 "(requirepass or ACL users) and FX__REDIS__PASSWORD")
