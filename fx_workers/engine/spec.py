"""How a feature is declared: its name, family, unit and one-line definition sit on the function that
computes it, as tsfresh's feature calculators carry their metadata.

A :class:`FeatureGroup` is a family of calculators that share one context, built once per batch from
its :class:`~fx_workers.engine.batch.BatchInput` (grouped counts, pairs, the windowed neighbourhood).
:mod:`fx_workers.engine.catalogue` puts the groups together into the catalogue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, Literal, TypeVar

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable

    from fx_workers.engine.batch import BatchInput

Kind = Literal["node", "edge"]
Context = TypeVar("Context")
Columns = np.ndarray | tuple[np.ndarray, ...]


@dataclass(frozen=True)
class FeatureSpec:
    """One catalogue entry: what the number means, exactly."""

    name: str
    family: str
    unit: str
    definition: str


@dataclass(frozen=True)
class Calculator(Generic[Context]):
    """A function computing one or more columns (one per spec, in order) from its group's context."""

    kind: Kind
    specs: tuple[FeatureSpec, ...]
    compute: Callable[[Context], Columns]


@dataclass
class FeatureGroup(Generic[Context]):
    """Calculators sharing one context; decorate a function with :meth:`node` or :meth:`edge` to add it.

    Node columns have one row per batch account; edge columns one row per outgoing transfer of the
    batch, in the order of the context's ``tx`` array.
    """

    context: Callable[[BatchInput], Context]
    calculators: list[Calculator[Context]] = field(default_factory=list)

    def node(self, family: str, unit: str, *rows: tuple[str, str]) -> Callable[[Callable], Callable]:
        """Register a node calculator returning one column per ``(name, definition)`` row."""
        return self._register("node", family, unit, rows)

    def edge(self, family: str, unit: str, *rows: tuple[str, str]) -> Callable[[Callable], Callable]:
        """Register an edge calculator returning one column per ``(name, definition)`` row."""
        return self._register("edge", family, unit, rows)

    def _register(self, kind: Kind, family: str, unit: str,
                  rows: tuple[tuple[str, str], ...]) -> Callable[[Callable], Callable]:
        specs = tuple(FeatureSpec(name, family, unit, definition) for name, definition in rows)

        def add(function: Callable[[Context], Columns]) -> Callable[[Context], Columns]:
            self.calculators.append(Calculator(kind, specs, function))
            return function

        return add

    def specs(self, kind: Kind) -> tuple[FeatureSpec, ...]:
        return tuple(spec for c in self.calculators if c.kind == kind for spec in c.specs)

    def compute(self, batch: BatchInput) -> tuple[Context, dict[str, np.ndarray]]:
        """The group's context for ``batch`` and every column by name."""
        context = self.context(batch)
        columns: dict[str, np.ndarray] = {}
        for calculator in self.calculators:
            values = calculator.compute(context)
            values = values if isinstance(values, tuple) else (values,)
            if len(values) != len(calculator.specs):
                raise ValueError(f"{calculator.compute.__name__} gave {len(values)} columns for "
                                 f"{[s.name for s in calculator.specs]}")
            columns.update((spec.name, np.asarray(v, dtype=np.float64))
                           for spec, v in zip(calculator.specs, values, strict=True))
        return context, columns
