"""The vectorised engine against the naive reference, and batch independence."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fx_workers.engine.catalogue import (
    EDGE_FEATURE_NAMES,
    EDGE_FEATURES,
    GROUPS,
    NODE_FEATURE_NAMES,
    NODE_FEATURES,
    SCHEMA_VERSION,
    compute_features,
)
from fx_workers.engine.features import BASE
from tests.graphs import ACCOUNTS, AS_OF, batch_input, transfer_graphs
from tests.reference import Reference, Transfer

REL, ABS = 1e-9, 1e-9
BRIEF = Path(__file__).resolve().parents[3] / "shared" / "BRIEF.md"


def assert_close(found: float, expected: float, what: str) -> None:
    assert math.isfinite(found), f"{what}: not finite ({found})"
    assert math.isclose(found, expected, rel_tol=REL, abs_tol=ABS), f"{what}: {found} != {expected}"


def compute_all(transfers: list[Transfer], ids: list[str], batch_size: int, as_of: int = AS_OF):
    """Node rows by id and edge rows by tx id, computed batch by batch."""
    nodes, edges = {}, {}
    for start in range(0, len(ids), batch_size):
        result = compute_features(batch_input(transfers, ids[start : start + batch_size], as_of))
        nodes.update(zip(result.node_ids.tolist(), result.node_values, strict=True))
        edges.update(zip(result.tx_ids.tolist(), result.edge_values, strict=True))
    return nodes, edges


@settings(max_examples=300, deadline=None)
@given(transfer_graphs(), st.sampled_from([AS_OF, AS_OF - 86400, AS_OF - 40 * 86400]))
def test_engine_matches_reference(transfers: list[Transfer], as_of: int) -> None:
    reference = Reference(transfers, as_of)
    nodes, edges = compute_all(transfers, ACCOUNTS, len(ACCOUNTS), as_of)
    for v in ACCOUNTS:
        expected = reference.node(v)
        for name, value in zip(NODE_FEATURE_NAMES, nodes[v], strict=True):
            assert_close(value, expected[name], f"{v}.{name}")
    visible = [t for t in transfers if t.ts <= as_of]
    assert sorted(edges) == sorted(t.tx_id for t in visible)
    for t in visible:
        expected = reference.edge(t)
        for name, value in zip(EDGE_FEATURE_NAMES, edges[t.tx_id], strict=True):
            assert_close(value, expected[name], f"{t.tx_id}.{name}")


@settings(max_examples=100, deadline=None)
@given(transfer_graphs(max_transfers=60), st.randoms(use_true_random=False))
def test_batches_do_not_change_numbers(transfers: list[Transfer], rnd) -> None:
    ids = ACCOUNTS.copy()
    rnd.shuffle(ids)
    whole_nodes, whole_edges = compute_all(transfers, ids, len(ids))
    for batch_size in (1, 7, 3):
        nodes, edges = compute_all(transfers, ids, batch_size)
        assert nodes.keys() == whole_nodes.keys() and edges.keys() == whole_edges.keys()
        for key in nodes:  # bit for bit, not approximately
            assert np.array_equal(nodes[key], whole_nodes[key]), (batch_size, key)
        for key in edges:
            assert np.array_equal(edges[key], whole_edges[key]), (batch_size, key)


def test_hand_computed_example() -> None:
    """A small graph worked out by hand: a -> b twice, b -> a, a -> a."""
    transfers = [
        Transfer("t1", "a", "b", 100.0, AS_OF - 10),
        Transfer("t2", "a", "b", 300.0, AS_OF - 5000),
        Transfer("t3", "b", "a", 50.0, AS_OF - 90000),
        Transfer("t4", "a", "a", 20.0, AS_OF),
        Transfer("t5", "a", "b", 999.0, AS_OF + 1),  # after as_of: ignored
    ]
    nodes, edges = compute_all(transfers, ["a", "b"], 2)
    a = dict(zip(NODE_FEATURE_NAMES, nodes["a"], strict=True))
    assert a["out_count"] == 3 and a["in_count"] == 2
    assert a["out_amount_sum"] == 420.0 and a["in_amount_sum"] == 70.0
    assert a["net_flow"] == -350.0
    assert a["reciprocity"] == 1.0  # R = S = {a, b}
    assert a["count_24h"] == 4  # t1, t2, t4 out; t4 in; t3 is older than 24h
    assert a["active_span_seconds"] == 90000
    assert a["neighbor_mean_total_count"] == 3.0  # only b: 1 out + 2 in
    assert a["self_transfer_count"] == 1 and a["round_amount_ratio"] == pytest.approx(2 / 5)
    t1 = dict(zip(EDGE_FEATURE_NAMES, edges["t1"], strict=True))
    mean, std = 140.0, math.sqrt(((100 - 140) ** 2 + (300 - 140) ** 2 + (20 - 140) ** 2) / 3)
    assert t1["pair_count"] == 2 and t1["amount_zscore_payer"] == pytest.approx((100 - mean) / std)
    assert t1["is_reciprocated"] == 1.0 and "t5" not in edges


def test_equal_amounts_have_zero_std_and_zscore() -> None:
    transfers = [Transfer(f"t{i}", "a", "b", 0.1, AS_OF - i) for i in range(3)]
    nodes, edges = compute_all(transfers, ["a"], 1)
    assert dict(zip(NODE_FEATURE_NAMES, nodes["a"], strict=True))["out_amount_std"] == 0.0
    assert all(row[EDGE_FEATURE_NAMES.index("amount_zscore_payer")] == 0.0 for row in edges.values())


def test_catalogue_shape() -> None:
    """The brief's count is the base catalogue's: the pattern family comes on top of the 62."""
    assert len(BASE.specs("node")) == 62 and len(BASE.specs("edge")) >= 8
    assert GROUPS[0] is BASE and NODE_FEATURES[:62] == BASE.specs("node")
    assert EDGE_FEATURES[: len(BASE.specs("edge"))] == BASE.specs("edge")
    assert len(SCHEMA_VERSION) == 12


def test_every_feature_is_declared_once() -> None:
    """Every feature of every group carries its metadata, and no name is used twice in the whole catalogue."""
    specs = NODE_FEATURES + EDGE_FEATURES
    assert all(f.name and f.family.strip() and f.unit.strip() and f.definition.strip() for f in specs)
    assert len(set(NODE_FEATURE_NAMES + EDGE_FEATURE_NAMES)) == len(specs)
    assert all(calculator.specs for group in GROUPS for calculator in group.calculators)


@settings(max_examples=25, deadline=None)
@given(transfer_graphs(), st.integers(0, len(ACCOUNTS)))
@example([], 0)  # the empty batch
@example([], 1)  # one account without transfers
def test_every_calculator_gives_one_float_column_per_feature(transfers: list[Transfer], size: int) -> None:
    """Each calculator, called alone on its group's context, returns a float64 column per spec: one row per
    batch account (node) or per outgoing transfer (edge); ``size`` 0 is the empty batch."""
    batch = batch_input(transfers, ACCOUNTS[:size], AS_OF)
    rows = {"node": len(batch.ids), "edge": len(batch.out)}
    assert len(BASE.context(batch).tx) == rows["edge"]  # the base group orders the edge rows
    for group in GROUPS:
        context = group.context(batch)
        for calculator in group.calculators:
            values = calculator.compute(context)
            values = values if isinstance(values, tuple) else (values,)
            assert len(values) == len(calculator.specs), calculator.compute.__name__
            for spec, column in zip(calculator.specs, values, strict=True):
                assert isinstance(column, np.ndarray) and column.dtype == np.float64, spec.name
                assert column.shape == (rows[calculator.kind],), spec.name
                assert np.isfinite(column).all(), spec.name


def _brief_table(after: str) -> dict[str, str]:
    text = BRIEF.read_text().split(after, 1)[1]
    rows = {}
    for line in text.splitlines()[2:]:
        if not line.startswith("|"):
            if rows:
                break
            continue
        name, definition = (cell.strip() for cell in line.strip("|").split("|", 1))
        if name != "name" and not name.startswith("---"):
            rows[name] = definition.replace("\\|", "|")
    return rows


@pytest.mark.skipif(not BRIEF.exists(), reason="the shared brief sits beside the repository")
def test_core_features_use_the_brief_names_and_definitions() -> None:
    specs = {f.name: f.definition for f in NODE_FEATURES} | {f.name: f.definition for f in EDGE_FEATURES}
    core = _brief_table("## Core features") | _brief_table("Core edge features")
    assert len(core) == 18
    for name, definition in core.items():
        assert specs.get(name) == definition, name


def test_empty_batch_account_gives_zeros() -> None:
    result = compute_features(batch_input([], ["lonely"], AS_OF))
    assert result.node_values.shape == (1, len(NODE_FEATURES))
    assert not result.node_values.any() and result.edge_values.shape == (0, len(EDGE_FEATURES))
    assert np.isfinite(result.node_values).all()


def test_docs_features_md_is_current() -> None:
    from fx_workers.tools.catalogue_doc import render_markdown

    doc = Path(__file__).resolve().parents[2] / "docs" / "features.md"
    assert doc.read_text() == render_markdown(), "docs/features.md is stale: fx features docs > docs/features.md"
