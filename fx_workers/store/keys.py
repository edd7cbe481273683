"""Every Redis key fx writes, in one place (the layout of the brief)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RedisKeys:
    """Key builders for one prefix (``redis.prefix`` in config, default ``fx``)."""

    prefix: str = "fx"

    def node(self, node_id: str) -> str:
        return f"{self.prefix}:node_features:{node_id}"

    def edge(self, tx_id: str) -> str:
        return f"{self.prefix}:edge_features:{tx_id}"

    def run(self, run_id: str) -> str:
        return f"{self.prefix}:run:{run_id}"

    @property
    def latest(self) -> str:
        return f"{self.prefix}:latest"

    def worker_health(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}:health"


META_RUN_ID = "_run_id"
META_AS_OF = "_as_of"
META_SCHEMA = "_schema"
META_FIELDS = (META_RUN_ID, META_AS_OF, META_SCHEMA)
