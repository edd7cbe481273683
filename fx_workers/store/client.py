"""The one Redis client factory: the CLI, the workers, the DAG's helpers and the tests use it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis

    from fx_workers.config import RedisConfig


def open_redis(config: RedisConfig, **options: object) -> redis.Redis:
    """A client for the configured server, authenticated as ``redis.user`` with its password (hiredis
    parses replies when installed).

    The user is sent only with a password: ``AUTH user`` alone is not a command, and a server
    without authentication must stay reachable with the default config.

    :param options: more ``redis.Redis`` arguments, such as timeouts
    """
    import redis

    password = config.secret()
    username = config.user if password is not None else None
    return redis.Redis(host=config.host, port=config.port, db=config.db, username=username, password=password,
                       **options)
