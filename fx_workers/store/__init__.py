"""The online store: the Redis key layout, the batch writer, the reader, and the registry of runs."""
