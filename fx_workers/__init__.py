"""fx: graph features for fraud and AML models, from Neo4j to Redis through Kafka workers."""

__version__ = "0.1.0"
