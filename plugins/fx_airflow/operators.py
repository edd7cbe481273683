"""The deferring operator that waits for a run's workers without holding a worker slot."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from fx_airflow.triggers import BatchCompletionTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context


class BatchesFailedError(RuntimeError):
    """A batch failed or did not complete in time; the message lists which."""


class WaitForBatchesOperator(BaseOperator):
    """Defer to :class:`BatchCompletionTrigger` until every batch of the plan is done.

    :param plan: the plan task's summary (``run_id``, ``fingerprint``, ``batches``, ``start_offsets``)
    :param topic: the results topic
    :param timeout_minutes: how long the workers may take, from deferral
    :param kafka_config_id: the Kafka connection, defaults to "fx_kafka"
    """

    template_fields = ("plan", "timeout_minutes")
    ui_color = "#ffefeb"

    def __init__(self, *, plan: Any, topic: str, timeout_minutes: Any, kafka_config_id: str = "fx_kafka",
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.plan = plan
        self.topic = topic
        self.timeout_minutes = timeout_minutes
        self.kafka_config_id = kafka_config_id

    def execute(self, context: Context) -> None:
        minutes = float(self.timeout_minutes)
        trigger = BatchCompletionTrigger(
            run_id=self.plan["run_id"], plan=self.plan["fingerprint"], topic=self.topic,
            start_offsets=self.plan["start_offsets"], batches=self.plan["batches"], deadline=time.time() + minutes * 60,
            kafka_config_id=self.kafka_config_id,
        )
        # The trigger's own deadline fires first and names the missing batches; this is the backstop.
        self.defer(trigger=trigger, method_name="execute_complete", timeout=timedelta(minutes=minutes + 2))

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        """Return the event's summary when every batch is done.

        :raises BatchesFailedError: on a failed batch or a timeout
        """
        if event["status"] == "done":
            self.log.info("all %d batches of run %s done in %.1fs", event["total"], event["run_id"], event["seconds"])
            return event
        detail = (f"failed batches: {event['failed']}" if event["status"] == "failed"
                  else f"missing {event['missing_count']} batches: {event['missing']}")
        raise BatchesFailedError(
            f"run {event['run_id']}: {event['status']} after {event['seconds']:.0f}s with "
            f"{event['done']}/{event['total']} batches done; {detail} (see the worker logs and the DLQ)"
        )
