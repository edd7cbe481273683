"""The pattern family: the shapes laundering takes (fan-out, fan-in, cycles, scatter-gather) in time windows."""

from __future__ import annotations

from fx_workers.engine.spec import FeatureGroup

PATTERNS: FeatureGroup = FeatureGroup(lambda batch: batch)
