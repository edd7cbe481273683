"""Warm the scheduler for fx's tasks: import, once, what every task process would import again.

Airflow imports ``airflow_local_settings`` from ``sys.path`` (the plugins folder is on it) when any of
its processes starts. With the LocalExecutor on Linux, a task process is a bare ``os.fork()`` of an
executor worker, itself forked from the scheduler: modules the scheduler imported before starting its
workers come free in every task. fx's tasks each paid about 0.9 s for redis-py (the Redis hook) and
1.2 s for the Neo4j driver with numpy (``plan``, ``verify``) on the shared machine.

Only the scheduler warms: the triggerer, the DAG processor and the API server (and every other
``import airflow``) import nothing more than this module. Imports only, no connection and no thread,
so forking stays safe. A failed import is logged and the task imports it itself.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys

log = logging.getLogger(__name__)

WARMED = (
    "airflow.providers.redis.hooks.redis",
    "airflow.providers.neo4j.hooks.neo4j",
    "airflow.providers.apache.kafka.operators.produce",
    "airflow.providers.apache.kafka.hooks.client",
    "numpy",
)
"""Libraries the DAG file and its tasks import, before the scheduler forks its workers. Never fx's own
modules: a task must run the checkout's code as it is now (the plan's catalogue must be the workers'),
not as it was when the scheduler started."""


def warm_scheduler(argv: list[str]) -> list[str]:
    """Import :data:`WARMED` when ``argv`` starts the scheduler; the modules imported."""
    if os.path.basename(argv[0] if argv else "") != "airflow" or argv[1:2] != ["scheduler"]:
        return []
    warmed = []
    for module in WARMED:
        try:
            importlib.import_module(module)
        except Exception:  # an optional warm-up; the task imports it itself and reports the error there
            log.warning("not warmed: %s", module, exc_info=True)
        else:
            warmed.append(module)
    return warmed


warm_scheduler(sys.argv)
