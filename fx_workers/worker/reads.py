"""A worker's reads of the graph, on one thread of their own, so the next batch's Neo4j read runs while
the current batch is written to Redis (as ``fx extract --local`` does).

Every read runs on that one thread, retries included, in the order they were asked for: the run's
pattern window cache is then never shared between threads, and never sees another order of runs
than the loop's.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from fx_workers.engine.extract import catalogue_of, extract_batch
from fx_workers.engine.graph import WindowCache
from fx_workers.worker.job import Read

if TYPE_CHECKING:
    from concurrent.futures import Future

    from neo4j import Driver

    from fx_workers.config import Settings
    from fx_workers.engine.batch import BatchFeatures
    from fx_workers.protocol import ExtractionRequest
    from fx_workers.worker.job import BatchReader


class Neo4jGraph:
    """The features of a request's batch, read from Neo4j and computed by the configured catalogue."""

    def __init__(self, driver: Driver, settings: Settings) -> None:
        self.driver = driver
        self.settings = settings
        self.schema_version = catalogue_of(settings).schema_version
        self.windows = WindowCache()
        """The pattern window of the run this worker computes now, read once for all its batches here."""

    def read(self, request: ExtractionRequest) -> BatchFeatures:
        return extract_batch(self.driver, self.settings, request.ids, request.as_of,
                             self.windows.bind(request.run_id))


class ReadAhead:
    """A :class:`~fx_workers.worker.job.GraphReader` whose reads run, and are timed, on its thread;
    :meth:`start` begins one before it is needed."""

    def __init__(self, graph: BatchReader) -> None:
        self.graph = graph
        self.schema_version = graph.schema_version
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fx-read")

    def start(self, request: ExtractionRequest) -> Prefetched:
        """Begin reading ``request``'s batch now; the returned reader gives it to the job."""
        return Prefetched(self, self._pool.submit(self._timed, request))

    def read(self, request: ExtractionRequest) -> Read:
        return self._pool.submit(self._timed, request).result()

    def _timed(self, request: ExtractionRequest) -> Read:
        started = time.perf_counter()
        features = self.graph.read(request)
        return Read(features, round((time.perf_counter() - started) * 1000, 1))

    def close(self) -> None:
        """Drop the reads not begun yet and wait for the one running (one batch at most), so the driver
        is never closed under a read: the driver raises ``BufferError`` from the read thread then."""
        self._pool.shutdown(wait=True, cancel_futures=True)


class Prefetched:
    """A :class:`~fx_workers.worker.job.GraphReader` for one request whose read began ahead; a retry reads
    it again."""

    def __init__(self, reads: ReadAhead, future: Future[Read]) -> None:
        self.schema_version = reads.schema_version
        self._reads = reads
        self._future: Future[Read] | None = future

    def read(self, request: ExtractionRequest) -> Read:
        future, self._future = self._future, None
        return future.result() if future is not None else self._reads.read(request)
