"""Benchmarks: fx against the naive per-account extractor and the I/O floor (``python -m bench.run``)."""
