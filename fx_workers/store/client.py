"""The one Redis client factory: the CLI, the workers, the DAG's helpers and the tests use it."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import redis

    from fx_workers.config import RedisConfig


def open_redis(config: RedisConfig, **options: object) -> redis.Redis:
    """A client for the configured server (hiredis parses replies when installed).

    :param options: more ``redis.Redis`` arguments, such as timeouts
    """
    import redis

    password = config.password.get_secret_value() if config.password else None
    return redis.Redis(host=config.host, port=config.port, db=config.db, password=password, **options)
