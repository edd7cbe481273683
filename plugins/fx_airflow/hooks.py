"""A Kafka hook for reading the results topic from recorded offsets."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.providers.apache.kafka.hooks.base import KafkaBaseHook

from fx_workers.protocol import READER_CONFIG

if TYPE_CHECKING:
    from confluent_kafka import Consumer


class ResultsReaderHook(KafkaBaseHook):
    """A consumer for ``assign()`` at given offsets that never joins a group or commits, so readers
    (the trigger, the aggregation, their retries) never move each other's or the workers' offsets.

    :param kafka_config_id: the connection, defaults to "kafka_default"
    """

    def _get_client(self, config: dict[str, Any]) -> Consumer:
        from confluent_kafka import Consumer

        return Consumer(config | READER_CONFIG)
