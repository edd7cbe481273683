"""The pure parts of the benchmark: the naive features, the phase clock, the reductions and the report."""

from __future__ import annotations

import cProfile
import math
from typing import TYPE_CHECKING, Any

from hypothesis import given, settings

from bench import report
from bench.floor import resp_commands
from bench.measure import PhaseClock
from bench.naive import Leg, core_edge_features, core_node_features
from fx_workers.engine.features import EDGE_FEATURE_NAMES, NODE_FEATURE_NAMES
from tests.graphs import ACCOUNTS, AS_OF, transfer_graphs
from tests.reference import Reference, Transfer

if TYPE_CHECKING:
    from pathlib import Path

CORE_NODE = NODE_FEATURE_NAMES[:16]
CORE_EDGE = ("amount_zscore_payer", "pair_count")


def neighbourhood(transfers: list[Transfer], v: str) -> tuple[list[Leg], list[Leg], list[int]]:
    """What the naive per-account query returns for ``v``."""
    visible = [t for t in transfers if t.ts <= AS_OF]
    out = [Leg(t.tx_id, t.payee, t.amount, t.ts) for t in visible if t.payer == v]
    inc = [Leg(t.tx_id, t.payer, t.amount, t.ts) for t in visible if t.payee == v]
    others = {leg.other for leg in out + inc} - {v}
    totals = [sum(t.payer == u for t in visible) + sum(t.payee == u for t in visible) for u in others]
    return out, inc, totals


@settings(max_examples=60, deadline=None)
@given(transfer_graphs())
def test_naive_core_features_equal_the_reference(transfers: list[Transfer]) -> None:
    reference = Reference(transfers, AS_OF)
    for v in ACCOUNTS:
        out, inc, totals = neighbourhood(transfers, v)
        node = core_node_features(out, inc, totals, AS_OF)
        assert tuple(node) == CORE_NODE
        expected = reference.node(v)
        for name in CORE_NODE:
            assert math.isclose(node[name], expected[name], rel_tol=1e-9, abs_tol=1e-9), (v, name)
        by_tx = {t.tx_id: t for t in transfers}
        for tx_id, edge in core_edge_features(out).items():
            expected_edge = reference.edge(by_tx[tx_id])
            for name in CORE_EDGE:
                assert math.isclose(edge[name], expected_edge[name], rel_tol=1e-9, abs_tol=1e-9), (tx_id, name)


def test_core_edge_names_are_in_the_catalogue() -> None:
    assert set(CORE_EDGE) <= set(EDGE_FEATURE_NAMES)
    edges = core_edge_features([Leg("t1", "b", 10.0, AS_OF)])
    assert tuple(edges["t1"]) == CORE_EDGE


def test_phase_clock_is_exclusive_and_an_opaque_phase_swallows_its_callees() -> None:
    ticks = iter(range(100))
    clock = PhaseClock(now=lambda: float(next(ticks)))
    inner = clock.wrap("inner", lambda: None)
    outer = clock.wrap("outer", lambda: inner())
    hidden = clock.wrap("verify", lambda: inner(), opaque=True)
    outer()  # ticks: outer starts 0, inner 1..2, outer ends 3
    hidden()  # ticks: verify 4..5, inner not timed
    assert dict(clock.seconds) == {"outer": 2.0, "inner": 1.0, "verify": 1.0}


def test_phase_clock_patch_restores_the_original() -> None:
    class Owner:
        @staticmethod
        def work() -> int:
            return 7

    original = Owner.work
    clock = PhaseClock()
    with clock.patch([(Owner, "work", "w")]):
        assert Owner.work() == 7
    assert Owner.work is original and set(clock.seconds) == {"w"}


def run(mode: str, seconds: float, **extra: Any) -> dict[str, Any]:
    return {"mode": mode, "seconds": seconds, "accounts": 10, "transfers": 100, "phases": {"neo4j": seconds / 2},
            "verify_seconds": None, "worker_peak_rss": [], "peak_rss": 100 * report.MB, "redis_bytes": 5000} | extra


def test_summarise_takes_medians_and_the_largest_rss() -> None:
    runs = [run("local", 3.0), run("local", 1.0, peak_rss=300 * report.MB), run("local", 2.0),
            run("distributed-2", 1.0, worker_peak_rss=[10, 30]), run("naive", 40.0)]
    summaries = report.summarise(runs)
    assert list(summaries) == ["naive", "local", "distributed-2"]
    local = summaries["local"]
    assert (local.repeats, local.seconds, local.peak_rss) == (3, 2.0, 300 * report.MB)
    assert local.transfers_per_second == 50.0 and local.redis_bytes_per_account == 500.0
    assert local.phases == {"neo4j": 1.0}
    assert summaries["distributed-2"].worker_peak_rss == 30


def test_ratios_only_between_measured_modes() -> None:
    summaries = report.summarise([run("naive", 40.0), run("local", 2.0), run("distributed-4", 1.0),
                                  run("floor-redis-cli", 0.5)])
    assert report.ratios(summaries) == {
        "naive / local": 20.0,
        "local / distributed-4": 2.0,
        "local / floor-redis-cli": 4.0,
        "distributed-4 / floor-redis-cli": 2.0,
    }


def results() -> dict[str, Any]:
    return {
        "command": "python -m bench.run --sizes 500", "finished_at": "2025-01-01T00:00:00+00:00", "seed": 7,
        "machine": {"cores": 2, "memory_gib": 24.0, "cpu": "Xeon", "python": "3.11.9", "neo4j": "5.26.12",
                    "redis": "7.0.15"},
        "notes": [],
        "sizes": [{"transactions": 500, "accounts": 62, "runs": [run("naive", 2.0), run("local", 0.5)],
                   "notes": ["naive not run above 100k"]}],
        "profile": {"transactions": 500, "seconds": 0.9,
                    "top": [{"function": "fx_workers/sink.py:60(_write_hashes)", "calls": 4, "own_seconds": 0.2,
                             "cumulative_seconds": 0.3}]},
    }


def test_render_has_the_machine_a_table_per_size_the_ratios_and_the_profile() -> None:
    text = report.render(results())
    assert "| 2 | 24 GiB | Xeon | 3.11.9 | 5.26.12 | 7.0.15 |" in text
    assert "## 500 transactions (62 accounts)" in text
    assert "| local | 1 | 0.500 | 200 | 100 |  | 500 | neo4j 0.25 |  |" in text
    assert "naive / local **4.0x**" in text
    assert "- naive not run above 100k" in text
    assert "| `fx_workers/sink.py:60(_write_hashes)` | 4 | 0.20 | 0.30 |" in text


def test_write_doc_keeps_the_notes_below_the_marker(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    report.write_doc(doc, "# old\n")
    doc.write_text(doc.read_text() + "My analysis.\n")
    report.write_doc(doc, "# new\n")
    assert doc.read_text() == f"# new\n\n{report.NOTES_MARKER}\nMy analysis.\n"


def test_plot_writes_a_png(tmp_path: Path) -> None:
    path = tmp_path / "plot.png"
    report.plot(results(), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_top_functions_reads_a_cprofile_dump(tmp_path: Path) -> None:
    path = tmp_path / "run.prof"
    profiler = cProfile.Profile()
    profiler.runcall(sorted, range(1000))
    profiler.dump_stats(path)
    top = report.top_functions(path, limit=1)
    assert len(top) == 1 and top[0]["calls"] >= 1 and "sorted" in top[0]["function"]


def test_resp_commands_encode_one_hset_per_record() -> None:
    [command] = resp_commands([("fx:node_features:A1", {"out_count": "2.0", "_as_of": "5"})])
    assert command == (b"*6\r\n$4\r\nHSET\r\n$19\r\nfx:node_features:A1\r\n"
                       b"$9\r\nout_count\r\n$3\r\n2.0\r\n$6\r\n_as_of\r\n$1\r\n5\r\n")
