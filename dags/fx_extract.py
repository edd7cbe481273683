"""
### fx_extract: graph features for every account, computed by the fx worker pool

1. **plan** reads every account with its transfer count (its cost) from Neo4j, cuts
   cost-balanced batches, makes sure the Kafka topics exist, and records where this run's results
   will start on `features-computed`. Only a summary goes to XCom, never node ids.
2. **publish** sends one extraction request per batch to `feature-extraction`, re-deriving the
   batches from the same Neo4j read (a retry republishes the same batches).
3. **wait_for_workers** defers to the triggerer, which counts the workers' completion signals and
   logs `progress ... batches=done/total ... eta=...` lines; it fails on a failed batch and on
   `timeout_minutes`, naming the missing batches.
4. **aggregate** reads this run's results from the recorded offsets, drops duplicates
   (redelivered batches), and writes the feature hashes to Redis.
5. **verify** runs the checks of `fx verify`, writes the run manifest `fx:run:{run_id}`, points
   `fx:latest` at the run and updates the `fx://node_features` asset.

Params: `as_of` (epoch seconds; empty means the run's data interval end), `batch_size`,
`timeout_minutes`. Troubleshooting: the worker logs (`.stack/logs/worker-N.log`) have one line per
batch; rejected requests are in `feature-extraction-dlq` with the reason.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.providers.apache.kafka.operators.produce import ProduceToTopicOperator
from airflow.sdk import Asset, Param, dag, task
from fx_airflow.operators import WaitForBatchesOperator

from fx_workers.config import settings

if TYPE_CHECKING:
    from collections.abc import Iterator

    from airflow.sdk import DagRun

    from fx_workers.sink import RedisSink

KAFKA, NEO4J, REDIS = "fx_kafka", "fx_neo4j", "fx_redis"
NODE_FEATURES = Asset("fx://node_features")
config = settings()
topics = config.kafka.topics


def _sink() -> RedisSink:
    from airflow.providers.redis.hooks.redis import RedisHook

    from fx_workers.sink import RedisSink
    from fx_workers.store.keys import RedisKeys

    return RedisSink(RedisHook(REDIS).get_conn(), RedisKeys(config.redis.prefix))


def produce_requests(plan: dict[str, Any]) -> Iterator[tuple[bytes, bytes]]:
    """The producer function of ``publish``: the plan's requests, re-derived from Neo4j."""
    from airflow.providers.neo4j.hooks.neo4j import Neo4jHook

    from fx_workers.pipeline import request_messages

    with Neo4jHook(NEO4J).get_conn() as driver:
        yield from request_messages(driver, config, plan)


@dag(
    dag_id=Path(__file__).stem,
    doc_md=__doc__,
    schedule=config.airflow.schedule,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=10), "retry_exponential_backoff": True},
    params={
        "as_of": Param(None, type=["null", "integer"], minimum=0, title="As of (epoch seconds)",
                       description="Count transfers with ts <= as_of; empty means the data interval end."),
        "batch_size": Param(config.extraction.batch_size, type="integer", minimum=1, maximum=20_000,
                            title="Accounts per batch", section="Tuning"),
        "timeout_minutes": Param(30, type="integer", minimum=1, maximum=24 * 60,
                                 title="Minutes the workers may take", section="Tuning"),
    },
    tags=["fx"],
)
def fx_extract() -> None:
    @task
    def plan(params: dict[str, Any], run_id: str, dag_run: DagRun,
             data_interval_end: datetime | None = None) -> dict[str, Any]:
        """Cut cost-balanced batches and record the results topic's end offsets."""
        from airflow.providers.apache.kafka.hooks.client import KafkaAdminClientHook
        from airflow.providers.neo4j.hooks.neo4j import Neo4jHook
        from fx_airflow.hooks import ResultsReaderHook

        from fx_workers.pipeline import missing_topics, plan_run

        admin = KafkaAdminClientHook(KAFKA)
        if missing := missing_topics(admin.get_conn, config):
            admin.create_topic(missing)
        as_of = params["as_of"]
        if as_of is None:
            as_of = int((data_interval_end or dag_run.run_after).timestamp())
        reader = ResultsReaderHook(KAFKA).get_conn
        try:
            with Neo4jHook(NEO4J).get_conn() as driver:
                return plan_run(driver, reader, config, run_id=run_id, as_of=as_of,
                                batch_size=params["batch_size"]).to_dict()
        finally:
            reader.close()

    @task
    def aggregate(plan: dict[str, Any]) -> dict[str, Any]:
        """Write this run's results to Redis, each batch once."""
        from dataclasses import asdict

        from fx_airflow.hooks import ResultsReaderHook

        from fx_workers.pipeline import aggregate_run

        reader = ResultsReaderHook(KAFKA).get_conn
        try:
            return asdict(aggregate_run(reader, _sink(), config, plan))
        finally:
            reader.close()

    @task(outlets=[NODE_FEATURES], retries=1)
    def verify(plan: dict[str, Any], waited: dict[str, Any], summary: dict[str, Any]) -> str:
        """Verify the run; on success write the manifest as verified and point ``latest`` at it."""
        from airflow.sdk.exceptions import AirflowFailException

        from fx_workers.pipeline import finish_run

        report = finish_run(config, _sink(), plan, [summary], wait_seconds=waited["seconds"],
                            aggregate_seconds=summary["seconds"])
        if not report.ok:
            raise AirflowFailException(str(report))
        return str(report)

    planned = plan()
    publish = ProduceToTopicOperator(
        task_id="publish",
        kafka_config_id=KAFKA,
        topic=topics.requests,
        producer_function=produce_requests,
        producer_function_kwargs={"plan": planned},
        delivery_callback="fx_workers.pipeline.fail_on_delivery_error",
        synchronous=False,
    )
    waited = WaitForBatchesOperator(task_id="wait_for_workers", plan=planned, topic=topics.results,
                                    timeout_minutes="{{ params.timeout_minutes }}", kafka_config_id=KAFKA, retries=0)
    summary = aggregate(planned)
    planned >> publish >> waited >> summary
    verify(planned, waited.output, summary)


fx_extract()
