"""
### fx_extract: graph features for every account, computed by the fx worker pool

1. **plan** reads every account with its transfer count (its cost) from Neo4j once, cuts
   cost-balanced batches, stores them under a new run in Redis (`fx:run:{run}` is its manifest),
   and records where this run's completion signals will start on `features-computed`. Only a
   summary goes to XCom, never account ids.
2. **publish** sends one extraction request per batch to `feature-extraction`, from the plan
   stored in Redis (a retry sends the same requests; Neo4j is not read again).
3. **wait_for_workers** counts the signals already there (for up to 10 s); unless that settles the
   run, it defers to the triggerer, which counts the workers' completion signals of
   this plan and logs `progress ... batches=done/total ... eta=...` lines; it fails on a failed batch
   and on `timeout_minutes`, naming the missing batches. A batch failed only by an outage (a service
   down for longer than the workers' `retry_seconds`) is sent again, up to 3 times, within the deadline.
   Workers write each batch straight into the run's own namespace in Redis; no feature value crosses
   Kafka.
4. **aggregate** merges the signals (each batch once), the run's per-feature statistics and the
   drift against the published run into the manifest, and logs them as a table. It takes what the
   wait counted from its result and reads only the signals that arrived after it (all of the run's
   when that result is missing or of another plan).
5. **verify** checks counts, a recomputed sample and sampled checksums; only then it points
   `fx:latest` at the run (readers switch atomically) and updates the `fx://node_features` asset.
   A failed verification changes nothing readers see. The asset's update schedules `fx_retire`,
   which deletes runs beyond `retention.runs` and failed or abandoned ones in a DAG run of its own,
   outside this one.

Params: `as_of` (epoch seconds; empty means the run's data interval end), `batch_size`,
`timeout_minutes`. Troubleshooting: the worker logs (`.stack/logs/worker-N.log`) have one line per
batch; rejected requests are in `feature-extraction-dlq` with the reason; `fx runs list`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.providers.apache.kafka.operators.produce import ProduceToTopicOperator
from airflow.sdk import Param, dag, task
from fx_airflow.assets import NODE_FEATURES
from fx_airflow.operators import WaitForBatchesOperator

from fx_workers.config import settings

if TYPE_CHECKING:
    from collections.abc import Iterator

    from airflow.sdk import DagRun
    from redis import Redis

KAFKA, NEO4J, REDIS = "fx_kafka", "fx_neo4j", "fx_redis"
config = settings()
topics = config.kafka.topics


def _redis() -> Redis:
    from airflow.providers.redis.hooks.redis import RedisHook

    return RedisHook(REDIS).get_conn()


def produce_requests(plan: dict[str, Any]) -> Iterator[tuple[bytes, bytes]]:
    """The producer function of ``publish``: the plan's requests, from the plan stored in Redis."""
    from fx_workers.steps.plan import request_messages

    yield from request_messages(_redis(), config, plan)


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
        """Cut cost-balanced batches, store them under a new run, record the signals topic's end offsets."""
        from airflow.providers.apache.kafka.hooks.client import KafkaAdminClientHook
        from airflow.providers.neo4j.hooks.neo4j import Neo4jHook
        from fx_airflow.hooks import ResultsReaderHook

        from fx_workers.steps.plan import make_plan
        from fx_workers.steps.topics import end_offsets, ensure_topics

        ensure_topics(KafkaAdminClientHook(KAFKA).get_conn, config)
        as_of = params["as_of"]
        if as_of is None:
            as_of = int((data_interval_end or dag_run.run_after).timestamp())
        reader = ResultsReaderHook(KAFKA).get_conn
        try:
            offsets = end_offsets(reader, topics.results)
        finally:
            reader.close()
        with Neo4jHook(NEO4J).get_conn() as driver:
            planned, _ = make_plan(driver, _redis(), config, as_of=as_of, batch_size=params["batch_size"],
                                   mode="airflow", partitions=config.kafka.partitions.requests,
                                   start_offsets=offsets, dag_run_id=run_id)
        return planned.to_dict()

    @task
    def aggregate(plan: dict[str, Any], waited: dict[str, Any] | None) -> dict[str, Any]:
        """Merge the run's completion signals (as the wait counted them), statistics and drift into its manifest."""
        from fx_airflow.hooks import ResultsReaderHook

        from fx_workers.steps.aggregate import aggregate_run

        reader = ResultsReaderHook(KAFKA).get_conn
        try:
            return aggregate_run(reader, _redis(), config, plan, waited)
        finally:
            reader.close()

    @task(outlets=[NODE_FEATURES], retries=1)
    def verify(plan: dict[str, Any], waited: dict[str, Any]) -> str:
        """Verify the run; only when it passes, point ``latest`` at it (the asset's update schedules fx_retire)."""
        from airflow.sdk.exceptions import AirflowFailException

        from fx_workers.steps.promote import conclude
        from fx_workers.steps.verify import verify_run

        client = _redis()
        report = verify_run(config, client, plan["run_id"])
        conclude(config, client, report, wait_seconds=waited["seconds"])
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
        delivery_callback="fx_workers.steps.topics.fail_on_delivery_error",
        synchronous=False,
    )
    waited = WaitForBatchesOperator(task_id="wait_for_workers", plan=planned, topic=topics.results,
                                    requests_topic=topics.requests, timeout_minutes="{{ params.timeout_minutes }}",
                                    kafka_config_id=KAFKA, retries=0)
    aggregated = aggregate(planned, waited.output)
    planned >> publish >> waited >> aggregated >> verify(planned, waited.output)


fx_extract()
