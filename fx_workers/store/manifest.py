"""A run's manifest as types: what the plan and the aggregation record in ``{prefix}:run:{run_id}``.

The manifest stays a Redis HASH of readable fields (``fx runs show`` prints it as it is): text as
itself, every other value as JSON (numbers, lists, the merged statistics). These models are the one
place that writes and parses those fields, so no step builds a JSON blob or reads one back by hand.
The record schema's fields (``encoding``, ``node_names``, ``edge_names``) belong to
:mod:`fx_workers.store.records`; a manifest carries its :class:`RecordSchema`.
"""

from __future__ import annotations

import json
import types
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal, Self, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from fx_workers.protocol import PartStats
from fx_workers.store.records import RecordSchema, schema_fields
from fx_workers.store.runs import RunError, RunStatus
from fx_workers.store.signals import BatchRow

if TYPE_CHECKING:
    from collections.abc import Mapping


def _is_text(annotation: Any) -> bool:
    """Whether a field of this type is stored as its own text rather than as JSON."""
    if get_origin(annotation) in (Union, types.UnionType):
        return all(_is_text(arg) for arg in get_args(annotation) if arg is not type(None))
    if get_origin(annotation) is Literal:
        return all(isinstance(arg, str) for arg in get_args(annotation))
    return annotation is str or (isinstance(annotation, type) and issubclass(annotation, StrEnum))


class HashFields(BaseModel):
    """A model stored as the fields of a Redis hash: text as itself, anything else as JSON."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)

    @field_validator("*", mode="before")
    @classmethod
    def _parse(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields[info.field_name or ""]
        if isinstance(value, str) and not _is_text(field.annotation) and not field.exclude:
            return json.loads(value)
        return value

    def fields(self) -> dict[str, str]:
        """The hash fields, by their stored names; unset (None) fields are left out."""
        data = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        return {name: value if isinstance(value, str) else json.dumps(value) for name, value in data.items()}



class DriftRow(BaseModel):
    """One feature of the run against the run it was compared with (:class:`~fx_workers.engine.stats.FeatureDrift`)."""

    model_config = ConfigDict(frozen=True)

    name: str
    nan_rate_change: float
    mean_shift_sd: float
    psi: float
    verdict: Literal["ok", "warn", "fail"]


class Aggregation(HashFields):
    """What the aggregation of a run's completion signals records; verification reads it back."""

    accounts_written: int
    transfers: int
    batches_counted: int
    duplicates: int
    foreign_signals: int
    batch_table: list[BatchRow | None]
    """Per batch of the plan, its counted signal's row, or None when none was counted."""
    conflicts: dict[int, list[str]]
    """Per batch, the checksums of copies with different content."""
    failed_batches: dict[int, str]
    """Per batch with no successful copy, the error of its failure."""
    stats: dict[Literal["nodes", "edges"], PartStats]
    """The run's per-feature statistics, merged from the counted batches'."""
    drift_against: str = ""
    drift: list[DriftRow] = Field(default_factory=list)
    drift_verdict: Literal["none", "ok", "warn", "fail"] = "none"


class RunManifest(HashFields):
    """What the plan registers of a run (its status changes as it goes), and its aggregation once made."""

    run_id: str
    status: RunStatus = RunStatus.RUNNING
    mode: str
    as_of: int
    schema_version: str = Field(alias="schema")
    fingerprint: str = Field(alias="plan")
    batches: int
    accounts: int
    batch_size: int
    started_at: str
    namespace: str
    dag_run_id: str | None = None
    records: RecordSchema = Field(exclude=True)
    aggregation: Aggregation | None = Field(default=None, exclude=True)

    def fields(self) -> dict[str, str]:
        """The plan's fields with the record schema's (the aggregation's are :meth:`Aggregation.fields`)."""
        return super().fields() | schema_fields(self.records.node_names, self.records.edge_names)

    @classmethod
    def from_fields(cls, run_id: str, fields: Mapping[str, str]) -> Self:
        """The manifest stored as ``fields`` (``RunRegistry.manifest``).

        :raises RunError: when the run has no manifest, or one this fx cannot read
        """
        if "plan" not in fields:
            raise RunError(f"run {run_id!r} has no manifest (fx runs list)")
        aggregation = Aggregation.model_validate(fields) if "batch_table" in fields else None
        return cls.model_validate({**fields, "run_id": run_id, "aggregation": aggregation,
                                   "records": RecordSchema.from_manifest(run_id, fields)})
