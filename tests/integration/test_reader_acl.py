"""What the read-only Redis user ``fx-reader`` may do outside ``fx:*``, as the README says: Redis 7.0
applies ACL key patterns to key arguments only, so ``SCAN`` (no key argument) lists every key name,
while every command that names a key outside ``fx:*`` is refused."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import pytest
import redis as redis_py

from ops.redis import REDIS_READER, reader_password_file

if TYPE_CHECKING:
    import redis

    from fx_workers.config import Settings


def test_the_reader_lists_names_outside_its_prefix_but_reads_none(redis_client: redis.Redis,
                                                                   settings: Settings) -> None:
    outside = f"fxreader-acl-probe-{uuid.uuid4().hex[:8]}"  # the writer's ~fx* allows it, the reader's ~fx:* not
    redis_client.set(outside, "secret", ex=60)
    reader = redis_py.Redis(host=settings.redis.host, port=settings.redis.port, username=REDIS_READER,
                            password=reader_password_file(settings).read_text().strip())
    try:
        assert list(reader.scan_iter(match=outside)) == [outside.encode()]  # the documented gap
        with pytest.raises(redis_py.exceptions.NoPermissionError):
            reader.get(outside)
        with pytest.raises(redis_py.exceptions.NoPermissionError):
            reader.type(outside)
    finally:
        reader.close()
        redis_client.delete(outside)
