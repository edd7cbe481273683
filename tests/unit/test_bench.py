"""The pure parts of the benchmark: the naive features, the phase clock, the reductions and the report."""

from __future__ import annotations

import cProfile
import json
import math
import threading
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from hypothesis import given, settings

from bench import report
from bench.capacity import batch_overhead, from_bench, tail
from bench.dag import TRIGGER, log_parts, task_breakdown
from bench.floor import encode_row, load_records, resp_commands
from bench.measure import BenchError, PhaseClock
from bench.model import (
    Deployment,
    Rates,
    Workload,
    fair_share,
    predict,
    shards_for_memory,
    worker_chain_seconds,
    workers_to_saturate,
    write_throughput,
)
from bench.naive import Leg, core_edge_features, core_node_features
from bench.run import merge
from fx_workers.engine.catalogue import EDGE_FEATURE_NAMES, NODE_FEATURE_NAMES
from fx_workers.store.bulk import encode_rows
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


def test_phase_clock_times_a_call_from_another_thread_whole_and_apart() -> None:
    ticks = iter(range(100))
    clock = PhaseClock(now=lambda: float(next(ticks)))
    read = clock.wrap("neo4j", lambda: None)
    reader = threading.Thread(target=read)
    reader.start()
    reader.join()
    clock.wrap("compute", lambda: None)()
    assert dict(clock.seconds) == {"neo4j (thread)": 1.0, "compute": 1.0}


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
            "verify_seconds": None, "worker_peak_rss": [], "peak_rss": 100 * report.MB, "redis_bytes": 5000,
            "redis_peak_bytes": 6000, "tasks": {}} | extra


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
                                  run("floor-redis-cli", 0.5), run("local-base", 1.6)])
    assert report.ratios(summaries) == {
        "naive / local": 20.0,
        "local / local-base": 1.25,
        "local / distributed-4": 2.0,
        "local / floor-redis-cli": 4.0,
        "distributed-4 / floor-redis-cli": 2.0,
    }


def test_ratios_compare_the_dag_with_distributed_2() -> None:
    summaries = report.summarise([run("distributed-2", 2.0), run("dag", 15.0)])
    assert report.ratios(summaries) == {"dag / distributed-2": 7.5}


def test_dag_tasks_take_medians_per_part_and_count_a_missing_part_as_zero() -> None:
    runs = [run("dag", 10.0, tasks={"plan": {"queue": 1.0, "execute": 2.0}}),
            run("dag", 12.0, tasks={"plan": {"queue": 3.0}}),
            run("dag", 11.0, tasks={"plan": {"queue": 2.0, "execute": 4.0}})]
    assert report.summarise(runs)["dag"].tasks == {"plan": {"queue": 2.0, "execute": 2.0}}


def results() -> dict[str, Any]:
    return {
        "command": "python -m bench.run --sizes 500", "finished_at": "2025-01-01T00:00:00+00:00", "seed": 7,
        "machine": {"cores": 2, "memory_gib": 24.0, "cpu": "Xeon", "python": "3.11.9", "neo4j": "5.26.12",
                    "redis": "7.0.15"},
        "notes": [],
        "sizes": [{"transactions": 500, "accounts": 62, "runs": [run("naive", 2.0), run("local", 0.5)],
                   "notes": ["naive not run above 100k"]}],
        "profile": {"transactions": 500, "seconds": 0.9,
                    "top": [{"function": "fx_workers/store/writer.py:74(_write_part)", "calls": 4, "own_seconds": 0.2,
                             "cumulative_seconds": 0.3}]},
    }


def test_render_has_the_machine_a_table_per_size_the_ratios_and_the_profile() -> None:
    text = report.render(results())
    assert "| 2 | 24 GiB | Xeon | 3.11.9 | 5.26.12 | 7.0.15 |" in text
    assert "## 500 transactions (62 accounts)" in text
    assert "| local | 1 | 0.500 | 200 | 100 |  | 500 | neo4j 0.25 |  |" in text
    assert "naive / local **4.0x**" in text
    assert "- naive not run above 100k" in text
    assert "| `fx_workers/store/writer.py:74(_write_part)` | 4 | 0.20 | 0.30 |" in text


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


def test_resp_commands_encode_one_set_per_packed_record_and_one_hset_per_hash() -> None:
    packed, hashed = resp_commands([("fx:r1:node_features:A1", b"\x00\x01"),
                                    ("fx:r1:node_features:A1", {"out_count": "2.0", "in_count": "5"})])
    assert packed == b"*3\r\n$3\r\nSET\r\n$22\r\nfx:r1:node_features:A1\r\n$2\r\n\x00\x01\r\n"
    assert hashed == (b"*6\r\n$4\r\nHSET\r\n$22\r\nfx:r1:node_features:A1\r\n"
                      b"$9\r\nout_count\r\n$3\r\n2.0\r\n$8\r\nin_count\r\n$1\r\n5\r\n")


def test_render_shows_the_verification_share_redis_with_retained_runs_and_the_dag_tasks() -> None:
    data = results()
    data["sizes"][0]["runs"] = [run("local", 2.0, verify_seconds=0.5),
                                run("dag", 15.0, tasks={"plan": {"queue": 1.0, "execute": 2.0},
                                                        "verify": {"execute": 3.0}})]
    data["sizes"][0]["retention"] = {"runs": 3, "retained": 2, "after": [62_000, 124_000, 124_000],
                                     "peak": [62_000, 124_000, 186_000]}
    text = report.render(data)
    assert "| local | 1 | 2.000 | 50 | 100 |  | 500 | neo4j 1.00 | 0.50 (25%) |" in text
    assert "With two runs retained: 2,000 B/account; the peak while the next run is written before retention: " \
           "3,000 B/account." in text
    assert "| task | queue | execute | total |" in text
    assert "| plan | 1.00 | 2.00 | 3.00 |" in text
    assert "| verify |  | 3.00 | 3.00 |" in text
    assert "| **all** | 1.00 | 5.00 | 6.00 |" in text


def size(transactions: int, *runs: dict[str, Any]) -> dict[str, Any]:
    return {"transactions": transactions, "accounts": 10, "runs": list(runs), "notes": []}


def test_targets_give_ratios_gaps_shares_and_verdicts() -> None:
    data = {"sizes": [
        size(500, run("dag", 18.0), run("distributed-2", 1.0, worker_peak_rss=[100 * report.MB])),
        size(100_000, run("distributed-2", 3.0, worker_peak_rss=[120 * report.MB]), run("dag", 4.5),
             run("floor-redis-cli", 1.0), run("floor-redis-cli-hash", 2.0), run("local", 9.0, redis_bytes=14_000)),
        size(1_000_000, run("distributed-2", 30.0, verify_seconds=2.0, worker_peak_rss=[200 * report.MB]),
             run("floor-redis-cli", 20.0)),
        {**size(175_255, run("local", 5.0, redis_bytes=41_000)), "name": "amlsim"},
    ]}
    assert [row[1:] for row in report.targets(data)] == [
        ["3.0x (3.00 s against 1.00 s; the gap: 1.00 s; the hash layout's floor 2.00 s, 1.5x)", "**missed**"],
        ["1.5x (30.00 s against 20.00 s)", "**met**"],  # 1M, no hash floor measured
        ["1.5x (4.50 s against 3.00 s)", "**met**"],  # 100k, Airflow against distributed-2
        ["6.7% (2.00 s)", "**met**"],  # verification's share at 1M
        ["18.0 s (median of 1)", "**missed**"],  # dag at 500
        ["1,400 B", "**met**"],  # Redis per account at 100k
        ["4,100 B", "**missed**"],  # on AMLSim
        ["500 transactions 100 MB; 100,000 transactions 120 MB; 1,000,000 transactions 200 MB", "**missed**"],
    ]


def test_targets_say_what_was_not_measured() -> None:
    rows = report.targets({"sizes": [size(500, run("local", 1.0))]})
    assert [row[1:] for row in rows[:7]] == [["not measured", ""]] * 7


LOG = [
    (0.0, "::group::Pre Execute"), (2.0, "Worker startup parse complete"), (2.1, "::endgroup::"),
    (3.0, "::group::Post Execute"), (3.1, "Pausing task as DEFERRED. "), (3.2, "::endgroup::"),
    (4.0, f"{TRIGGER}trigger fx_extract/r/wait_for_workers/-1/1 (ID 1) starting"), (9.0, f"{TRIGGER}progress"),
    (10.0, f"{TRIGGER}trigger completed"), (11.5, "::group::Pre Execute"), (11.8, "Worker startup parse complete"),
    (12.0, "::group::Post Execute"), (12.25, "::endgroup::"),
]
"""A deferred task's log lines and its trigger's, as :func:`bench.dag.task_log` merges them."""


def test_log_parts_split_a_deferred_task_into_processes_and_the_trigger() -> None:
    parts = log_parts(LOG)
    assert {k: round(v, 6) for k, v in parts.items()} == {
        "startup": 2.3, "execute": 1.2, "post": 0.35, "to trigger": 0.9, "trigger": 6.0, "to resume": 1.5}
    assert math.isclose(sum(parts.values()), 12.25)


def test_task_breakdown_adds_the_scheduler_the_executor_and_the_ends_of_the_process() -> None:
    ti = {"queued_when": "2026-01-01T00:00:01Z", "start_date": "2026-01-01T00:00:01.5Z",
          "end_date": "2026-01-01T00:00:15Z"}
    start = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    log = [(start + 2.0 + at, event) for at, event in LOG]
    parts = task_breakdown(ti, log, upstream_end=start + 0.25)
    assert {k: round(v, 6) for k, v in parts.items() if k in ("schedule", "queue", "spawn", "finish")} == {
        "schedule": 0.75, "queue": 0.5, "spawn": 0.5, "finish": 0.75}
    assert math.isclose(sum(parts.values()), 15.0 - 0.25)


def test_floor_records_are_the_bytes_the_batch_writer_stores(tmp_path: Path) -> None:
    path = tmp_path / "records.npz"
    node_values = np.arange(2 * len(NODE_FEATURE_NAMES), dtype=float).reshape(2, -1) / 3
    edge_values = np.full((1, len(EDGE_FEATURE_NAMES)), 0.1)
    np.savez(path, node_ids=np.array(["A1", "A:2"]), node_values=node_values, tx_ids=np.array(["T1"]),
             edge_values=edge_values)
    records, accounts, transfers = load_records(path, "fxbench", "r1")
    assert (accounts, transfers) == (2, 1)
    assert [key for key, _ in records] == ["fxbench:r1:n:A1", "fxbench:r1:n:A:2", "fxbench:r1:e:T1"]
    assert records[1][1] == encode_rows(node_values[1:]).rows()[0]
    assert records[2][1] == encode_rows(edge_values).rows()[0]
    hashed, _, _ = load_records(path, "fxbench", "r1", layout="hash")
    assert [key for key, _ in hashed] == [key for key, _ in records]
    assert list(hashed[1][1].values()) == encode_row(node_values[1].tolist())
    assert list(hashed[2][1]) == list(EDGE_FEATURE_NAMES)


def test_merge_appends_the_sizes_of_later_runs() -> None:
    first, second = results(), results() | {"command": "python -m bench.run --sizes 1000000",
                                            "finished_at": "2025-01-02T00:00:00+00:00", "notes": ["1M once"]}
    second["sizes"] = [{**second["sizes"][0], "transactions": 1_000_000}]
    del first["profile"]
    merged = merge([first, second])
    assert [s["transactions"] for s in merged["sizes"]] == [500, 1_000_000]
    assert merged["sizes"][1]["notes"][0] == "measured by `python -m bench.run --sizes 1000000` at commit ?"
    assert merged["command"] == "python -m bench.run --sizes 500; python -m bench.run --sizes 1000000"
    assert (merged["finished_at"], merged["notes"], merged["profile"]) == (second["finished_at"], ["1M once"],
                                                                           second["profile"])


RATES = Rates(neo4j_transfers_per_s=10_000, read_transfers_per_s=5_000, compute_accounts_per_s=2_000,
              write_records_per_s=10_000, redis_records_per_s=50_000, batch_overhead_s=0.1,
              plan_accounts_per_s=100_000, tail_s=2.0, airflow_s=15.0, node_bytes=2_000, edge_bytes=400)
LOAD = Workload(transfers=100_000, accounts=10_000)
"""By hand: 110,000 records, 10 batches of 1000; a worker's chain is 100,000 / 5,000 (its read) + 100,000 / 10,000
(Neo4j) + 10,000 / 2,000 (compute) + 110,000 / 10,000 (its write) + 110,000 / 50,000 (Redis) + 10 x 0.1 (per
batch) = 20 + 10 + 5 + 11 + 2.2 + 1 = 49.2 s; the fixed part is 10,000 / 100,000 (plan) + 2 (tail) + 15 (Airflow)
= 17.1 s; one run's records take 10,000 x 2,000 + 100,000 x 400 = 60 MB."""


def test_the_slowest_stage_sets_the_wall_time() -> None:
    where = Deployment(workers=8, shards=2, neo4j_cores=1)
    assert worker_chain_seconds(RATES, LOAD, 1000) == pytest.approx(49.2)
    guess = predict(RATES, LOAD, where)
    assert guess.stages == pytest.approx({"worker": 49.2 / 8, "neo4j": 10.0, "redis": 1.1})
    assert (guess.bottleneck, guess.seconds) == ("neo4j", pytest.approx(17.1 + 10.0))
    assert guess.memory_bytes == pytest.approx(60e6 * 3)  # two retained runs and the one being written
    assert guess.per_shard_bytes(2) == pytest.approx(90e6)
    assert shards_for_memory(guess, 25e6) == 8


def test_read_servers_divide_neo4j_and_the_workers_come_next() -> None:
    guess = predict(RATES, LOAD, Deployment(workers=8, shards=2, neo4j_cores=1, neo4j_servers=3))
    assert guess.stages["neo4j"] == pytest.approx(10 / 3)
    assert (guess.bottleneck, guess.seconds) == ("worker", pytest.approx(17.1 + 6.15))
    assert workers_to_saturate(RATES, LOAD, Deployment(workers=8, shards=2, neo4j_cores=1)) == pytest.approx(4.92)


def test_one_host_counts_every_cpu_second_against_its_cores() -> None:
    guess = predict(RATES, LOAD, Deployment(workers=4, shards=1, neo4j_cores=2, host_cores=2, airflow=False))
    assert guess.stages["host"] == pytest.approx((49.2 - 1) / 2)  # Kafka's per-batch share is waiting, not CPU
    assert (guess.bottleneck, guess.seconds) == ("host", pytest.approx(2.1 + 24.1))


def test_write_throughput_is_capped_by_the_clients_the_shards_or_the_host() -> None:
    # a writer spends 1/10,000 s of its own and waits 1/50,000 s for the shard: 1.2e-4 s a record
    assert write_throughput(10_000, 50_000, clients=2, shards=1, host_cores=None) == pytest.approx(2 / 1.2e-4)
    assert write_throughput(10_000, 50_000, clients=8, shards=1, host_cores=None) == pytest.approx(50_000)
    assert write_throughput(10_000, 50_000, clients=8, shards=3, host_cores=None) == pytest.approx(8 / 1.2e-4)
    assert write_throughput(10_000, 50_000, clients=2, shards=3, host_cores=1) == pytest.approx(1 / 1.2e-4)


def test_fair_share_and_workload_shape() -> None:
    assert fair_share(2, 2, 0) == 2
    assert fair_share(2, 1, 0) == 1
    assert fair_share(2, 2, 3) == pytest.approx(0.8)
    assert Workload.like(1000, 8.0) == Workload(1000, 125)
    assert Workload.like(1001, 8.0).accounts == 126
    assert LOAD.records == 110_000


def test_batch_overhead_and_tail_come_from_a_distributed_run() -> None:
    run = {"seconds": 15.0, "accounts": 2500, "phases": {
        "plan + publish": 1.0, "workers": 10.0, "worker extract (sum)": 3.0, "worker write (sum)": 4.0,
        "worker stats (sum)": 1.0}}
    assert batch_overhead(run) == pytest.approx((10 - 8) / 3)  # 2,500 accounts: 3 batches
    # read ahead: the reads' own 3 s overlapped the writes; the loop waited 0.5 s for them
    run["phases"]["worker extract_wait (sum)"] = 0.5
    assert batch_overhead(run) == pytest.approx((10 - 5.5) / 3)
    assert tail(run) == pytest.approx(4.0)


def test_from_bench_takes_airflow_from_a_size_with_dag_and_the_plan_from_the_largest(tmp_path: Path) -> None:
    def run(mode: str, seconds: float, plan: float = 0.0) -> dict[str, Any]:
        return {"mode": mode, "seconds": seconds, "phases": {"plan + publish": plan}}

    small = {"transactions": 100_000, "accounts": 12_000,
             "runs": [run("dag", 22.0), run("dag", 24.0), run("distributed-2", 6.0, 0.2),
                      run("distributed-2", 7.0, 0.4)]}
    large = {"transactions": 1_000_000, "accounts": 120_000, "runs": [run("distributed-2", 99.0, 1.5)]}
    (tmp_path / "bench-20260101T000000.json").write_text(json.dumps({"sizes": [small]}))
    (tmp_path / "bench-20260102T000000.json").write_text(json.dumps({"sizes": [large]}))
    found = from_bench(tmp_path)
    assert found["airflow"]["seconds"] == pytest.approx(23.0 - 6.5)  # medians of each mode
    assert (found["plan"]["transactions"], found["plan"]["accounts_per_s"]) == (1_000_000, pytest.approx(80_000))


def test_from_bench_says_when_make_bench_never_ran(tmp_path: Path) -> None:
    with pytest.raises(BenchError, match="run make bench"):
        from_bench(tmp_path)
