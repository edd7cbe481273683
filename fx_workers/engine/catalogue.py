"""The feature catalogue: every group's features in order, the schema version, and one batch's matrices.

Everything that names or counts features (the store, statistics, export, the generated docs) derives
from here, so a new feature touches only its own calculator and its reference test. The pattern family
can be left out (``extraction.patterns: false``): that catalogue has a schema version of its own.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from fx_workers.engine.batch import BatchFeatures, BatchInput
from fx_workers.engine.features import BASE
from fx_workers.engine.patterns import PATTERNS
from fx_workers.engine.spec import FeatureGroup, FeatureSpec


def _matrix(columns: dict[str, np.ndarray], names: tuple[str, ...], rows: int) -> np.ndarray:
    return np.column_stack([columns[name] for name in names]) if rows else np.zeros((0, len(names)))


@dataclass(frozen=True)
class Catalogue:
    """Feature groups in order: the base group first (it orders the edge rows), then the others."""

    groups: tuple[FeatureGroup, ...]

    @cached_property
    def node_features(self) -> tuple[FeatureSpec, ...]:
        return tuple(s for g in self.groups for s in g.specs("node"))

    @cached_property
    def edge_features(self) -> tuple[FeatureSpec, ...]:
        return tuple(s for g in self.groups for s in g.specs("edge"))

    @cached_property
    def node_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.node_features)

    @cached_property
    def edge_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.edge_features)

    @cached_property
    def schema_version(self) -> str:
        """A short hash of every name and definition: it changes whenever a number's meaning does."""
        text = "\n".join(f"{kind}:{f.name}:{f.definition}" for kind, specs in
                         (("node", self.node_features), ("edge", self.edge_features)) for f in specs)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def reads_window(self) -> bool:
        """Whether a batch read must fetch the pattern window's 2-hop ball."""
        return PATTERNS in self.groups

    def compute(self, batch: BatchInput) -> BatchFeatures:
        """Every node feature of the batch's accounts and every edge feature of their outgoing transfers.

        :param batch: the batch's transfers, neighbour counts and windowed neighbourhood, as read by
            :mod:`fx_workers.engine.graph`
        :return: matrices in :attr:`node_names` and :attr:`edge_names` column order; edge rows follow
            the base group's ``tx`` order
        """
        columns: dict[str, np.ndarray] = {}
        contexts = []
        for group in self.groups:
            context, group_columns = group.compute(batch)
            contexts.append(context)
            columns |= group_columns
        tx = contexts[0].tx
        return BatchFeatures(batch.ids, _matrix(columns, self.node_names, len(batch.ids)),
                             tx, _matrix(columns, self.edge_names, len(tx)))


CATALOGUE = Catalogue((BASE, PATTERNS))
"""The whole catalogue, the default."""
WITHOUT_PATTERNS = Catalogue((BASE,))


def catalogue(patterns: bool = True) -> Catalogue:
    """The catalogue a run computes (``extraction.patterns`` chooses)."""
    return CATALOGUE if patterns else WITHOUT_PATTERNS


def by_schema(version: str) -> Catalogue | None:
    """The catalogue with this schema version, if this code has it."""
    return next((c for c in (CATALOGUE, WITHOUT_PATTERNS) if c.schema_version == version), None)


GROUPS = CATALOGUE.groups
NODE_FEATURES = CATALOGUE.node_features
EDGE_FEATURES = CATALOGUE.edge_features
NODE_FEATURE_NAMES = CATALOGUE.node_names
EDGE_FEATURE_NAMES = CATALOGUE.edge_names
SCHEMA_VERSION = CATALOGUE.schema_version
compute_features = CATALOGUE.compute
