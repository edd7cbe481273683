"""The deferring operator that waits for a run's workers without holding a worker slot."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from fx_airflow.triggers import BatchCompletionTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context


POLL_SECONDS = 10.0
"""How long the task counts signals itself before deferring: a run whose workers finish within it never
pays the trip through the triggerer and back through the scheduler (about 3 to 4 s on the stack). The
slot it holds meanwhile is one of the executor's; the DAG runs one task at a time."""
MAX_RESENDS = 3
"""Times one batch is sent again after failing through an outage (each failure already took
``workers.retry_seconds`` of retries in the worker), while the deadline allows."""


class BatchesFailedError(RuntimeError):
    """A batch failed or did not complete in time; the message lists which."""


class WaitForBatchesOperator(BaseOperator):
    """Defer to :class:`BatchCompletionTrigger` until every batch of the plan is done.

    Before deferring, the task counts the signals already on the topic and those arriving within
    ``poll_seconds``; when they settle the run (every batch done, or one failed) it does not defer at all.
    A batch that failed only through an outage (its signal says ``transient``) is sent again from the
    plan stored in Redis, and the task defers once more with the same deadline; any other failure
    fails the task at once.

    :param plan: the plan task's summary (``run_id``, ``fingerprint``, ``batches``, ``start_offsets``)
    :param topic: the results topic
    :param requests_topic: where batches are sent again
    :param timeout_minutes: how long the workers may take, from deferral
    :param kafka_config_id: the Kafka connection, defaults to "fx_kafka"
    :param redis_config_id: the Redis connection holding the plan, defaults to "fx_redis"
    :param poll_seconds: how long to count signals before deferring, defaults to :data:`POLL_SECONDS`
    """

    template_fields = ("plan", "timeout_minutes")
    ui_color = "#ffefeb"

    def __init__(self, *, plan: Any, topic: str, requests_topic: str, timeout_minutes: Any,
                 kafka_config_id: str = "fx_kafka", redis_config_id: str = "fx_redis",
                 poll_seconds: float = POLL_SECONDS, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plan = plan
        self.topic = topic
        self.requests_topic = requests_topic
        self.timeout_minutes = timeout_minutes
        self.kafka_config_id = kafka_config_id
        self.redis_config_id = redis_config_id
        self.poll_seconds = poll_seconds

    def execute(self, context: Context) -> dict[str, Any]:
        return self._wait(context, deadline=time.time() + float(self.timeout_minutes) * 60, resent={})

    def _wait(self, context: Context, deadline: float, resent: dict[str, int]) -> dict[str, Any]:
        """:meth:`execute_complete` of the signals counted within ``poll_seconds``, or defer."""
        trigger = BatchCompletionTrigger(
            run_id=self.plan["run_id"], plan=self.plan["fingerprint"], topic=self.topic,
            start_offsets=self.plan["start_offsets"], batches=self.plan["batches"], deadline=deadline,
            kafka_config_id=self.kafka_config_id, resent=resent,
        )
        if (event := trigger.poll(min(self.poll_seconds, max(deadline - time.time(), 0)))) is not None:
            return self.execute_complete(context, event)
        # The trigger's own deadline fires first and names the missing batches; this is the backstop.
        self.defer(trigger=trigger, method_name="execute_complete",
                   timeout=timedelta(seconds=max(deadline - time.time(), 0) + 120))

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """Return the event's summary when every batch is done; send outage-failed batches again.

        :raises BatchesFailedError: on a failed batch, a timeout, or outage failures past the budget
        """
        if event["status"] == "done":
            self.log.info("all %d batches of run %s done in %.1fs", event["total"], event["run_id"], event["seconds"])
            return event
        if event["status"] == "retry":
            exhausted = sorted(int(b) for b, n in event["failures"].items() if n > MAX_RESENDS)
            if not exhausted and time.time() < event["deadline"]:
                self._resend(sorted(int(b) for b in event["retryable"]))
                return self._wait(context, event["deadline"], {**event["resent"], **event["failures"]})
            event = {**event, "failed": event["retryable"]}
        detail = (f"missing {event['missing_count']} batches: {event['missing']}" if event["status"] == "timeout"
                  else f"failed batches: {event['failed']}")
        raise BatchesFailedError(
            f"run {event['run_id']}: {event['status']} after {event['seconds']:.0f}s with "
            f"{event['done']}/{event['total']} batches done; {detail} (see the worker logs and the DLQ)"
        )

    def _resend(self, batches: list[int]) -> None:
        """Send ``batches`` again, the same requests as ``publish`` sent, read from the plan in Redis."""
        from airflow.providers.apache.kafka.hooks.produce import KafkaProducerHook
        from airflow.providers.redis.hooks.redis import RedisHook

        from fx_workers.config import settings
        from fx_workers.steps.plan import request_messages
        from fx_workers.worker.transport import DeliveryError, deliver

        self.log.warning("run %s: sending %d batches again after an outage: %s", self.plan["run_id"], len(batches),
                         batches[:50])
        requests = request_messages(RedisHook(self.redis_config_id).get_conn(), settings(), self.plan, batches)
        try:
            deliver(KafkaProducerHook(self.kafka_config_id).get_producer(),
                    [(self.requests_topic, key, value, []) for key, value in requests], timeout=30)
        except DeliveryError as exc:
            raise BatchesFailedError(f"run {self.plan['run_id']}: requests sent again to {self.requests_topic} "
                                     f"were not delivered: {exc}") from exc
