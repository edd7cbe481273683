"""Every Redis key fx writes, in one place (the layout of the brief).

A run's records live in its own namespace, ``{prefix}:{run_id}:``, as ``n:{account_id}`` and
``e:{tx_id}``: one letter for the part, since every byte of a key is paid once per record (a transfer's
key is about a fifth of its Redis memory), and the id as the key's last part so a run's records spread
over Redis Cluster's slots (no hash tag). Run ids are short lower-case hex
(:func:`fx_workers.store.runs.new_run_id`), so a namespace never collides with the fixed keys
(``latest``, ``run:``, ``runs``, ``worker:``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


def glob_escape(text: str) -> str:
    """``text`` as a literal in a ``SCAN MATCH`` pattern."""
    return _GLOB_SPECIAL.sub(r"\\\1", text)


@dataclass(frozen=True)
class RunKeys:
    """The keys of one run's namespace."""

    namespace: str
    """``{prefix}:{run_id}``"""

    def node(self, node_id: str) -> str:
        return f"{self.namespace}:n:{node_id}"

    def edge(self, tx_id: str) -> str:
        return f"{self.namespace}:e:{tx_id}"

    def plan_batch(self, batch_id: int) -> str:
        """The account ids of one batch of the run's plan (a JSON list)."""
        return f"{self.namespace}:plan:{batch_id}"

    @property
    def pattern(self) -> str:
        """``SCAN MATCH`` pattern of every key of the namespace."""
        return f"{glob_escape(self.namespace)}:*"

    @property
    def edge_pattern(self) -> str:
        return f"{glob_escape(self.namespace)}:e:*"


@dataclass(frozen=True)
class RedisKeys:
    """Key builders for one prefix (``redis.prefix`` in config, default ``fx``)."""

    prefix: str = "fx"

    def of_run(self, run_id: str) -> RunKeys:
        return RunKeys(f"{self.prefix}:{run_id}")

    def run(self, run_id: str) -> str:
        """The run's manifest (a HASH)."""
        return f"{self.prefix}:run:{run_id}"

    @property
    def runs(self) -> str:
        """Every run's id, scored by its creation time (a ZSET)."""
        return f"{self.prefix}:runs"

    @property
    def latest(self) -> str:
        """The id of the run readers get (a STRING)."""
        return f"{self.prefix}:latest"

    def worker_health(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}:health"
