"""The one Redis client factory: the CLI, the workers, the DAG's helpers and the tests use it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis
    from redis.cluster import RedisCluster

    from fx_workers.config import RedisConfig


def open_redis(config: RedisConfig, **options: object) -> redis.Redis | RedisCluster:
    """A client for the configured server, or for the cluster its seed nodes lead to in ``cluster`` mode,
    authenticated as ``redis.user`` with its password (hiredis parses replies when installed).

    The cluster client speaks the same commands: it routes each key to its slot's master and splits
    pipelines per node, so fx's callers need no cluster branch (they avoid multi-key commands).
    The user is sent only with a password: ``AUTH user`` alone is not a command, and a server
    without authentication must stay reachable with the default config.

    :param options: more ``redis.Redis`` (``RedisCluster``) arguments, such as timeouts
    """
    import redis
    from redis.cluster import ClusterNode, RedisCluster

    password = config.secret()
    username = config.user if password is not None else None
    if config.mode == "cluster":
        nodes = [ClusterNode(host, port) for host, port in config.addresses()]
        return RedisCluster(startup_nodes=nodes, username=username, password=password, **options)
    return redis.Redis(host=config.host, port=config.port, db=config.db, username=username, password=password,
                       **options)


def is_cluster(client: redis.Redis | RedisCluster) -> bool:
    """Whether ``client`` talks to a Redis Cluster."""
    from redis.cluster import RedisCluster

    return isinstance(client, RedisCluster)
