"""The asset fx's DAGs share: ``fx_extract``'s ``verify`` updates it when it promotes a run, and
``fx_retire`` is scheduled on it."""

from __future__ import annotations

from airflow.sdk import Asset

NODE_FEATURES = Asset("fx://node_features")
"""The run ``fx:latest`` names: updated only when a verified run is promoted."""
