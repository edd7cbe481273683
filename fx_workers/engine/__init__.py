"""The feature engine: read a batch's neighbourhood from Neo4j, compute its features, summarise them."""
