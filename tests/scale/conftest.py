"""The scale tests use the integration tests' stack fixtures (a private slice of the shared Kafka, Neo4j
and standalone Redis) and start what the shared stack does not run, such as a Redis Cluster of their
own on free ports, through ``ops`` (the functions of ``make up``)."""

from tests.integration.conftest import kafka_admin, neo4j_driver, piece, redis_client, settings  # noqa: F401
