"""A Kafka hook for reading the results topic from recorded offsets."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.providers.apache.kafka.hooks.base import KafkaBaseHook

from fx_workers.protocol import PRODUCER_CONFIG, READER_CONFIG

if TYPE_CHECKING:
    from confluent_kafka import Consumer


class ResultsReaderHook(KafkaBaseHook):
    """A consumer for ``assign()`` at given offsets that never joins a group or commits, so readers
    (the trigger, the aggregation, their retries) never move each other's or the workers' offsets.
    The connection's producer settings (:data:`~fx_workers.protocol.PRODUCER_CONFIG`, for the DAG's
    ``publish``) are left out: a consumer warns about each.

    :param kafka_config_id: the connection, defaults to "kafka_default"
    """

    def _get_client(self, config: dict[str, Any]) -> Consumer:
        from confluent_kafka import Consumer

        reader = {key: value for key, value in config.items() if key not in PRODUCER_CONFIG}
        return Consumer(reader | READER_CONFIG)
