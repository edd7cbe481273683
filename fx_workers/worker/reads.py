"""A worker's reads of the graph: the :class:`~fx_workers.worker.job.GraphReader` of Neo4j."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fx_workers.engine.extract import catalogue_of, extract_batch
from fx_workers.engine.graph import WindowCache

if TYPE_CHECKING:
    from neo4j import Driver

    from fx_workers.config import Settings
    from fx_workers.engine.batch import BatchFeatures
    from fx_workers.protocol import ExtractionRequest


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
