"""The feature catalogue: every group's features in order, the schema version, and one batch's matrices.

Everything that names or counts features (the store, statistics, export, the generated docs) derives
from here, so a new feature touches only its own calculator and its reference test.
"""

from __future__ import annotations

import hashlib

import numpy as np

from fx_workers.engine.batch import BatchFeatures, BatchInput
from fx_workers.engine.features import BASE
from fx_workers.engine.patterns import PATTERNS
from fx_workers.engine.spec import FeatureGroup, FeatureSpec

GROUPS: tuple[FeatureGroup, ...] = (BASE, PATTERNS)

NODE_FEATURES: tuple[FeatureSpec, ...] = tuple(s for g in GROUPS for s in g.specs("node"))
EDGE_FEATURES: tuple[FeatureSpec, ...] = tuple(s for g in GROUPS for s in g.specs("edge"))
NODE_FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in NODE_FEATURES)
EDGE_FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in EDGE_FEATURES)


def _schema_version() -> str:
    """A short hash of every name and definition: it changes whenever a number's meaning does."""
    text = "\n".join(f"{kind}:{f.name}:{f.definition}" for kind, specs in
                     (("node", NODE_FEATURES), ("edge", EDGE_FEATURES)) for f in specs)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


SCHEMA_VERSION = _schema_version()


def _matrix(columns: dict[str, np.ndarray], names: tuple[str, ...], rows: int) -> np.ndarray:
    return np.column_stack([columns[name] for name in names]) if rows else np.zeros((0, len(names)))


def compute_features(batch: BatchInput) -> BatchFeatures:
    """Every node feature of the batch's accounts and every edge feature of their outgoing transfers.

    :param batch: the batch's transfers, neighbour counts and windowed neighbourhood, as read by
        :mod:`fx_workers.engine.graph`
    :return: matrices in :data:`NODE_FEATURES` and :data:`EDGE_FEATURES` column order; edge rows
        follow the base group's ``tx`` order
    """
    columns: dict[str, np.ndarray] = {}
    contexts = []
    for group in GROUPS:
        context, group_columns = group.compute(batch)
        contexts.append(context)
        columns |= group_columns
    tx = contexts[0].tx  # the base group orders the edge rows; the other groups' edge columns follow it
    return BatchFeatures(batch.ids, _matrix(columns, NODE_FEATURE_NAMES, len(batch.ids)),
                         tx, _matrix(columns, EDGE_FEATURE_NAMES, len(tx)))
