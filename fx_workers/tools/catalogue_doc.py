"""Render the feature catalogue as ``docs/features.md`` (a test fails when the file is stale)."""

from __future__ import annotations

from fx_workers.engine.catalogue import EDGE_FEATURES, NODE_FEATURES, SCHEMA_VERSION
from fx_workers.engine.features import __doc__ as NOTATION
from fx_workers.engine.patterns import __doc__ as PATTERN_NOTES
from fx_workers.engine.spec import FeatureSpec


def _table(specs: tuple[FeatureSpec, ...]) -> list[str]:
    rows = ["| # | name | family | unit | definition |", "| --- | --- | --- | --- | --- |"]
    rows += [f"| {i} | `{f.name}` | {f.family} | {f.unit} | {f.definition.replace('|', chr(92) + '|')} |"
             for i, f in enumerate(specs, start=1)]
    return rows


def render_markdown() -> str:
    notation = NOTATION.split("\n\n")[1].replace("\n", " ")
    windows, how, cost = PATTERN_NOTES.split("\n\n")[1:4]
    lines = [
        "# Feature catalogue",
        "",
        "Generated from `fx_workers/engine/features.py` (the base) and `fx_workers/engine/patterns.py` (the pattern "
        "family) by `fx features docs > docs/features.md`; do not edit by hand.",
        "",
        f"Schema version: `{SCHEMA_VERSION}` (a hash of every name and definition; it travels with every result).",
        "",
        notation,
        "",
        f"## Node features ({len(NODE_FEATURES)})",
        "",
        *_table(NODE_FEATURES),
        "",
        "### The pattern family",
        "",
        windows.replace("\n", " "),
        "",
        how,
        "",
        cost.strip().replace("\n", " "),
        "",
        f"## Edge features ({len(EDGE_FEATURES)})",
        "",
        "For transfer e from payer p to payee q with ts <= as_of; computed in p's batch.",
        "",
        *_table(EDGE_FEATURES),
        "",
    ]
    return "\n".join(lines)
