"""One batch end to end through the engine: its graph read from Neo4j, then its features.

The workers, ``fx extract --local`` and verification all call :func:`extract_batch`, so the
distributed and single-process runs cannot disagree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fx_workers.engine.catalogue import Catalogue, catalogue
from fx_workers.engine.graph import Cypher, WindowCache, read_batch

if TYPE_CHECKING:
    from neo4j import Driver

    from fx_workers.config import Settings
    from fx_workers.engine.batch import BatchFeatures, BatchInput


def catalogue_of(settings: Settings) -> Catalogue:
    """The catalogue this configuration computes (``extraction.patterns``)."""
    return catalogue(settings.extraction.patterns)


def read_graph(driver: Driver, settings: Settings, ids: list[str], as_of: int,
               cache: WindowCache | None = None) -> BatchInput:
    """The batch's graph, read with the configured model's queries (the pattern window only when needed).

    :param cache: the run's pattern window, kept between its batches (see :class:`WindowCache`)
    """
    return read_batch(driver, Cypher(settings.graph), ids, as_of, settings.neo4j.database,
                      window=catalogue_of(settings).reads_window, cache=cache)


def extract_batch(driver: Driver, settings: Settings, ids: list[str], as_of: int,
                  cache: WindowCache | None = None) -> BatchFeatures:
    """Read one batch's neighbourhood from Neo4j and compute its features."""
    return catalogue_of(settings).compute(read_graph(driver, settings, ids, as_of, cache))
