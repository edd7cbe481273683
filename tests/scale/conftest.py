"""The scale tests use the integration tests' stack fixtures (a private slice of the shared Kafka, Neo4j
and standalone Redis) and start what the shared stack does not run, such as a Redis Cluster of their
own on free ports, through the same ``stack/stackctl.py`` functions as ``make up``."""

from __future__ import annotations

import importlib.util
import os
import random
import socket
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fx_workers.config import REPO_ROOT, load_settings
from tests.integration.conftest import kafka_admin, neo4j_driver, piece, redis_client, settings  # noqa: F401
from tests.integration.pipeline_env import Slice

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path
    from types import ModuleType


def import_stackctl() -> ModuleType:
    """``stack/stackctl.py`` (a script, not a package module), loaded once."""
    if "stackctl" not in sys.modules:
        spec = importlib.util.spec_from_file_location("stackctl", REPO_ROOT / "stack" / "stackctl.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["stackctl"] = module
        spec.loader.exec_module(module)
    return sys.modules["stackctl"]


def free_ports(count: int) -> int:
    """The first of ``count`` consecutive loopback ports that are free, each with its cluster bus port
    (+10000) free too."""
    def free(port: int) -> bool:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return False
        return True

    for _ in range(200):
        base = random.randrange(21000, 29000)
        if all(free(port) and free(port + 10000) for port in range(base, base + count)):
            return base
    raise RuntimeError("no free ports for a Redis Cluster in 21000..29000")


@dataclass(frozen=True)
class TestCluster:
    """A Redis Cluster started for a test: the ``FX__*`` variables that point fx at it, and where its
    nodes keep their files."""

    env: dict[str, str]
    root: Path

    def slice_of(self, base: Slice) -> Slice:
        """``base``'s graph, topics and prefix, with the online store on this cluster."""
        env = {**base.env, **self.env}
        return Slice(load_settings(environ=env), env)


@contextmanager
def redis_cluster(root: Path, replicas: int = 0) -> Iterator[TestCluster]:
    """Three masters (and ``replicas`` replicas each) under ``root``, stopped by PID afterwards."""
    stackctl = import_stackctl()
    masters = 3
    base = free_ports(masters * (1 + replicas))
    env = {
        "FX__REDIS__MODE": "cluster",
        "FX__REDIS__NODES": ",".join(f"127.0.0.1:{base + i}" for i in range(masters)),
        "FX__REDIS__PASSWORD_FILE": str(root / "redis-password"),
        "FX__STACK__DIR": str(root / "stack"),
        "FX__STACK__REDIS_REPLICAS": str(replicas),
    }
    own = load_settings(environ={**os.environ, **env})
    layout = stackctl.Layout(own.stack.dir)
    services = stackctl.redis_cluster_services(own, layout)
    try:
        stackctl.up(own, layout, services)
        yield TestCluster(env, own.stack.dir)
    finally:
        for service in reversed(services):
            stackctl.stop(service.name, layout)
