"""
### fx_retire: delete the runs retention does not keep

Scheduled on the `fx://node_features` asset, so it runs after every run that `fx_extract` promotes,
as a DAG run of its own: housekeeping never lengthens an extraction, and readers are not affected by
it (it never deletes the run `fx:latest` names). **retire** deletes the records of runs beyond
`retention.runs` (the live one included) and of failed or abandoned runs, by `SCAN` + `UNLINK`, and
logs `retention kept ... deleted ...`; manifests of the newest deleted runs stay for `fx runs list`.
A failed attempt is retried; whatever it leaves, the next promotion's run deletes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from airflow.sdk import dag, task
from fx_airflow.assets import NODE_FEATURES

from fx_workers.config import settings

REDIS = "fx_redis"
config = settings()


@dag(
    dag_id=Path(__file__).stem,
    doc_md=__doc__,
    schedule=[NODE_FEATURES],
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    is_paused_upon_creation=False,  # paused, it would let retired runs pile up in Redis unnoticed
    default_args={"retries": 2, "retry_delay": timedelta(seconds=10)},
    tags=["fx"],
)
def fx_retire() -> None:
    @task
    def retire() -> list[str]:
        """Delete the runs retention does not keep; their ids."""
        from airflow.providers.redis.hooks.redis import RedisHook

        from fx_workers.steps.promote import retire

        return retire(config, RedisHook(REDIS).get_conn())

    retire()


fx_retire()
