"""From the runs of a benchmark to medians, ratios, ``docs/benchmarks.md`` and the plot. Pure but for file writes."""

from __future__ import annotations

import os
import pstats
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fx_workers.config import REPO_ROOT

MODES = ("naive", "local", "local-base", "distributed-1", "distributed-2", "distributed-4", "dag", "floor-redis-cli",
         "floor-redis-py", "floor-redis-cli-hash")
"""Every mode, in table and plot order."""
FLOORS = ("floor-redis-cli", "floor-redis-py", "floor-redis-cli-hash")
NOTES_MARKER = "<!-- Notes below this line are written by hand and kept when bench.run regenerates the file. -->"
MB = 1024 * 1024
MODE_DOCS = {
    "naive": "what the seed's script did: one Cypher query per account, the 16 core node and 2 core edge features "
             "in plain Python per account, one unpipelined `HSET` per account and per transfer",
    "local": "`fx extract --local` (`run_local`): plan, bulk column reads per batch of 1000 accounts (the next "
             "batch read in a thread), the vectorised 74 + 11 features, one packed record per account and "
             "transfer written into the run's namespace, aggregation of the signals, verification, the promotion "
             "of the run to `latest`; timed from the plan to "
             "the run verified and live (retention after it is shown but not counted)",
    "local-base": "`local` with the pattern family off (`extraction.patterns: false`): the 62 + 11 base "
                  "features, no 2-hop window read; `local / local-base` is what the family costs",
    "distributed-k": "k worker processes (`python -m fx_workers --worker-id N`, own topics and consumer group) "
                     "writing their batches into Redis; `make_plan` + `request_messages` published, signals "
                     "counted from their headers as the DAG's trigger does, then `aggregate_run`, `verify_run` "
                     "and `conclude`; timed from the plan to the run verified and live, without Airflow. "
                     "`worker ... (sum)` phases add up the workers' own timings from their signals (they overlap): "
                     "`worker extract` is the reads' own time, `worker extract_wait` how long the loops waited "
                     "for them (a read done ahead, while the batch before was written, is not waited for)",
    "dag": "a whole `fx_extract` run through the stack's Airflow (its scheduler, triggerer and 2 workers, "
           "default config), timed from the trigger (the run's `queued_at`) to its `end_date`; phases are "
           "each task's share from its upstream's end to its own end (see the table by task); Redis bytes are "
           "the manifest's estimate",
    "floor-redis-cli": "every transfer read once as columns (one `collect()` query) plus every record of `local` "
                       "written once, the same bytes, pre-encoded, through `redis-cli --pipe`: the server's floor",
    "floor-redis-py": "the same read, plus the same records written through redis-py, `MSET`s of 2000 "
                      "records: a Python client's floor",
    "floor-redis-cli-hash": "`floor-redis-cli` with the records in the first layout (one HASH per record, one "
                            "field per feature, `repr` text, under today's short keys): the floor before compact "
                            "records, kept to show the gain",
}
DAG_PARTS = ("schedule", "queue", "spawn", "startup", "execute", "post", "to trigger", "trigger", "to resume",
             "finish")
"""A task's parts in the order they happen (see :func:`bench.dag.task_breakdown`)."""
KB = 1000
TARGET_FLOOR = 2.0
"""distributed-2 against the server floor, at 100k and 1M (issue 17)."""
TARGET_AIRFLOW = 1.6
"""``fx_extract`` through Airflow against the same run without it (distributed-2), at 100k (issue 17)."""
TARGET_VERIFY_SHARE = 0.10
TARGET_DAG_SECONDS = 12.0
"""A run of the demo's size through Airflow, trigger to success (issue 17's ``make demo`` bar)."""
TARGET_BYTES_PER_ACCOUNT = {"100,000 transactions": 1_500, "AMLSim": 4_000}
"""Redis per account, transfers included, for one run (issue 17)."""
RSS_BOUND = 1.5
"""Worker peak RSS counts as bounded when the largest size's is within this factor of the smallest's."""


@dataclass(frozen=True)
class ModeSummary:
    """The repeats of one mode at one size, reduced: medians, except peak RSS (the largest)."""

    mode: str
    repeats: int
    seconds: float
    transfers: int
    peak_rss: int
    worker_peak_rss: int | None
    redis_bytes_per_account: float
    phases: dict[str, float]
    verify_seconds: float | None
    tasks: dict[str, dict[str, float]]
    """dag mode: median seconds per part of each task."""

    @property
    def transfers_per_second(self) -> float:
        return self.transfers / self.seconds if self.seconds else 0.0

    @property
    def verify_share(self) -> float | None:
        return None if self.verify_seconds is None or not self.seconds else self.verify_seconds / self.seconds


def summarise(runs: list[dict[str, Any]]) -> dict[str, ModeSummary]:
    """Each mode's runs reduced to a :class:`ModeSummary`, in :data:`MODES` order."""
    summaries = {}
    for mode in MODES:
        mine = [run for run in runs if run["mode"] == mode]
        if not mine:
            continue
        phase_names = dict.fromkeys(name for run in mine for name in run["phases"])
        verify = [run["verify_seconds"] for run in mine if run["verify_seconds"] is not None]
        workers = [rss for run in mine for rss in run["worker_peak_rss"]]
        summaries[mode] = ModeSummary(
            mode=mode,
            repeats=len(mine),
            seconds=statistics.median(run["seconds"] for run in mine),
            transfers=mine[0]["transfers"],
            peak_rss=max(run["peak_rss"] for run in mine),
            worker_peak_rss=max(workers) if workers else None,
            redis_bytes_per_account=statistics.median(run["redis_bytes"] / max(run["accounts"], 1) for run in mine),
            phases={name: statistics.median(run["phases"].get(name, 0.0) for run in mine) for name in phase_names},
            verify_seconds=statistics.median(verify) if verify else None,
            tasks=_median_tasks([run.get("tasks", {}) for run in mine]),
        )
    return summaries


def _median_tasks(runs: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per task and part, the median over the runs (a part a run lacks counts as 0)."""
    names = dict.fromkeys(task for run in runs for task in run)
    return {task: {part: statistics.median(run.get(task, {}).get(part, 0.0) for run in runs)
                   for part in dict.fromkeys(p for run in runs for p in run.get(task, {}))}
            for task in names}


def ratios(summaries: dict[str, ModeSummary]) -> dict[str, float]:
    """Time ratios between modes that were measured: how many times slower the first is."""
    pairs = [("naive", "local"), ("local", "local-base"), ("dag", "distributed-2")]
    pairs += [("local", mode) for mode in summaries if mode.startswith("distributed-")]
    pairs += [(mode, floor) for mode in summaries if mode == "local" or mode.startswith("distributed-")
              for floor in FLOORS]
    return {f"{a} / {b}": summaries[a].seconds / summaries[b].seconds
            for a, b in pairs if a in summaries and b in summaries and summaries[b].seconds > 0}


def top_functions(profile: Path, limit: int = 15) -> list[dict[str, Any]]:
    """The functions with the most own time in a cProfile dump."""
    stats = pstats.Stats(str(profile)).stats
    rows = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:limit]
    return [
        {"function": f"{_short(path)}:{line}({name})", "calls": calls, "own_seconds": own, "cumulative_seconds": cum}
        for (path, line, name), (_, calls, own, cum, _) in rows
    ]


def _short(path: str) -> str:
    """A profile path without the site-packages or repository prefix."""
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1]
    return path.removeprefix(f"{REPO_ROOT}/")


def _mb(value: float | None) -> str:
    return "" if value is None else f"{value / MB:,.0f}"


def _phases(summary: ModeSummary) -> str:
    return ", ".join(f"{name} {seconds:.2f}" for name, seconds in summary.phases.items())


def size_title(size: dict[str, Any]) -> str:
    """``100,000 transactions`` or ``AMLSim, 175,255 transactions``."""
    name = "AMLSim, " if size.get("name") == "amlsim" else ""
    return f"{name}{size['transactions']:,} transactions"


def _verify(s: ModeSummary) -> str:
    return "" if s.verify_share is None else f"{s.verify_seconds:.2f} ({100 * s.verify_share:.0f}%)"


def render_size(size: dict[str, Any]) -> str:
    """The table, ratios, Redis with retained runs and the dag mode's tasks of one size."""
    summaries = summarise(size["runs"])
    lines = [
        f"## {size_title(size)} ({size['accounts']:,} accounts)",
        "",
        "| mode | runs | median s | transfers/s | peak RSS MB | worker peak RSS MB | Redis B/account | "
        "phases, median s | verify s (share) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for s in summaries.values():
        lines.append(
            f"| {s.mode} | {s.repeats} | {s.seconds:.3f} | {s.transfers_per_second:,.0f} | {_mb(s.peak_rss)} | "
            f"{_mb(s.worker_peak_rss)} | {s.redis_bytes_per_account:,.0f} | {_phases(s)} | {_verify(s)} |"
        )
    lines += ["", "Ratios of median times: " + "; ".join(f"{k} **{v:.1f}x**" for k, v in ratios(summaries).items())]
    if retention := size.get("retention"):
        after, peak, accounts = retention["after"], retention["peak"], max(size["accounts"], 1)
        lines += ["", f"Redis over {retention['runs']} local runs in a row (retention keeps {retention['retained']}): "
                  + "; ".join(f"after run {i + 1} {_mb(a)} MB (peak {_mb(p)} MB)"
                              for i, (a, p) in enumerate(zip(after, peak, strict=True)))
                  + f". With two runs retained: {after[1] / accounts:,.0f} B/account; the peak while the next run "
                  f"is written before retention: {peak[-1] / accounts:,.0f} B/account."]
    if "dag" in summaries:
        lines += ["", render_tasks(summaries["dag"])]
    if size.get("notes"):
        lines += ["", *(f"- {note}" for note in size["notes"])]
    return "\n".join(lines)


def render_tasks(dag: ModeSummary) -> str:
    """The dag mode's median seconds per task and part of its wall time."""
    parts = [p for p in DAG_PARTS if any(p in t for t in dag.tasks.values())]
    lines = [f"`fx_extract` through Airflow by task (median of {dag.repeats}, seconds; from the upstream task's "
             f"end to this task's end; trigger to success {dag.seconds:.1f} s):", "",
             "| task | " + " | ".join(parts) + " | total |", "| --- |" + " ---: |" * (len(parts) + 1)]
    for task, times in dag.tasks.items():
        cells = " | ".join(f"{times[p]:.2f}" if p in times else "" for p in parts)
        lines.append(f"| {task} | {cells} | {sum(times.values()):.2f} |")
    totals = " | ".join(f"{sum(t.get(p, 0.0) for t in dag.tasks.values()):.2f}" for p in parts)
    lines.append(f"| **all** | {totals} | {sum(sum(t.values()) for t in dag.tasks.values()):.2f} |")
    return "\n".join(lines)


def render_profile(profile: dict[str, Any]) -> str:
    """The cProfile table of the local path."""
    lines = [
        f"## Profile of the local path at {profile['transactions']:,} transactions",
        "",
        f"cProfile of one `run_local` ({profile['seconds']:.1f} s under the profiler, its verification not "
        "profiled); the functions with the most own time:",
        "",
        "| function | calls | own s | cumulative s |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [f"| `{row['function']}` | {row['calls']:,} | {row['own_seconds']:.2f} | {row['cumulative_seconds']:.2f} |"
              for row in profile["top"]]
    return "\n".join(lines)


def _size(results: dict[str, Any], transactions: int | None, name: str | None = None) -> dict[str, ModeSummary] | None:
    """The summaries of the generated graph of ``transactions``, or of the graph ``name``, if it was measured
    (the last measurement when merged results have it twice)."""
    found = [size for size in results["sizes"] if size.get("name") == name
             and (name is not None or size["transactions"] == transactions)]
    return summarise(found[-1]["runs"]) if found else None


def _verdict(ok: bool) -> str:
    return "**met**" if ok else "**missed**"


def _ratio_row(target: str, summaries: dict[str, ModeSummary] | None, mode: str, base: str, limit: float,
               beside: str | None = None) -> list[str]:
    """``mode`` against ``base`` as a target row; with ``beside``, ``mode`` against that mode too (the hash
    layout's floor, so the absolute gain shows)."""
    if not summaries or not {mode, base} <= set(summaries):
        return [target, "not measured", ""]
    ours, theirs = summaries[mode], summaries[base]
    ratio = ours.seconds / theirs.seconds
    gap = "" if ratio <= limit else f"; the gap: {ours.seconds - limit * theirs.seconds:.2f} s"
    extra = ""
    if beside and beside in summaries:
        other = summaries[beside]
        extra = f"; the hash layout's floor {other.seconds:.2f} s, {ours.seconds / other.seconds:.1f}x"
    return [target, f"{ratio:.1f}x ({ours.seconds:.2f} s against {theirs.seconds:.2f} s{gap}{extra})",
            _verdict(ratio <= limit)]


def targets(results: dict[str, Any]) -> list[list[str]]:
    """Issue 17's targets (with issue 10's that still stand) as ``[target, measured, verdict]`` rows, from what
    this run measured."""
    hundred, million = _size(results, 100_000), _size(results, 1_000_000)
    floor = f"distributed-2 <= {TARGET_FLOOR}x the server floor (plan to verified and live)"
    rows = [_ratio_row(f"100,000: {floor}", hundred, "distributed-2", "floor-redis-cli", TARGET_FLOOR,
                       "floor-redis-cli-hash"),
            _ratio_row(f"1,000,000: {floor}", million, "distributed-2", "floor-redis-cli", TARGET_FLOOR,
                       "floor-redis-cli-hash"),
            _ratio_row(f"100,000: `fx_extract` through Airflow <= {TARGET_AIRFLOW}x the same run without it "
                       "(distributed-2)", hundred, "dag", "distributed-2", TARGET_AIRFLOW)]
    share = million["distributed-2"].verify_share if million and "distributed-2" in million else None
    rows.append([f"1,000,000: verification <= {TARGET_VERIFY_SHARE:.0%} of the distributed-2 run",
                 "not measured" if share is None else f"{share:.1%} ({million['distributed-2'].verify_seconds:.2f} s)",
                 "" if share is None else _verdict(share <= TARGET_VERIFY_SHARE)])
    dag = (_size(results, 500) or {}).get("dag")
    rows.append([f"500: a run through Airflow <= {TARGET_DAG_SECONDS:.0f} s trigger to success",
                 "not measured" if dag is None else f"{dag.seconds:.1f} s (median of {dag.repeats})",
                 "" if dag is None else _verdict(dag.seconds <= TARGET_DAG_SECONDS)])
    for (title, limit), summaries in zip(TARGET_BYTES_PER_ACCOUNT.items(), (hundred, _size(results, None, "amlsim")),
                                         strict=True):
        target = f"{title}: Redis per account, transfers included, for one run (local) <= {limit / KB} KB"
        if not summaries or "local" not in summaries:
            rows.append([target, "not measured", ""])
            continue
        per_account = summaries["local"].redis_bytes_per_account
        rows.append([target, f"{per_account:,.0f} B", _verdict(per_account <= limit)])
    rss = [(size_title(size), summaries["distributed-2"].worker_peak_rss) for size in results["sizes"]
           if "distributed-2" in (summaries := summarise(size["runs"]))]
    if rss:
        values = [v for _, v in rss if v]
        bounded = max(values) <= RSS_BOUND * min(values)
        rows.append(["worker peak RSS bounded by batch size (distributed-2, every size)",
                     "; ".join(f"{name} {_mb(v)} MB" for name, v in rss), _verdict(bounded)])
    return rows


def render_targets(results: dict[str, Any]) -> str:
    lines = ["## Targets (issue 17)", "",
             "Ratios are of medians measured side by side in this run. Redis per account is the growth of "
             "`used_memory` over a local run (its plan and manifest included); `python -m bench.layout` measures "
             "the records alone, and the client's CPU per record.", "",
             "| target | measured | verdict |", "| --- | --- | --- |"]
    lines += [f"| {' | '.join(row)} |" for row in targets(results)]
    return "\n".join(lines)


ABSOLUTE_PATH = re.compile(r"(?<![\w.~-])/[^\s`'\"),;]+")


def relative_paths(text: str, root: Path = REPO_ROOT) -> str:
    """``text`` with every absolute path inside ``root``'s parent folder made relative to ``root``
    (``/work/shared/data/x`` from ``/work/main`` is ``../shared/data/x``): the commands a bench ran
    with name paths of the machine it ran on, which mean nothing to a reader of the docs."""

    def relative(match: re.Match[str]) -> str:
        path = match.group(0)
        return os.path.relpath(path, root) if Path(path).is_relative_to(root.parent) else path

    return ABSOLUTE_PATH.sub(relative, text)


def render(results: dict[str, Any], plot_name: str = "benchmarks.png") -> str:
    """The generated part of ``docs/benchmarks.md``, with paths relative to the repository (:func:`relative_paths`)."""
    machine = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `{results['command']}` on {results['finished_at']} at commit "
        f"{results.get('commit', 'unknown')} (seed {results['seed']}, "
        f"`as_of` = the end of the generated data, so every transfer counts). Each timing is the median of the "
        "runs shown; the modes of one size run interleaved (one repeat of every mode, then the next), so "
        "noise on this shared machine hits them alike. Peak RSS is per process (`wait4`); Redis bytes per "
        "account is the growth of `used_memory` over the run divided by the accounts, so it includes the "
        "transfer records and the run's plan and manifest (small sizes are dominated by noise from the "
        "stack's other Redis users).",
        "",
        "| cores | memory | CPU | Python | Neo4j | Redis |",
        "| ---: | ---: | --- | --- | --- | --- |",
        f"| {machine['cores']} | {machine['memory_gib']:.0f} GiB | {machine['cpu']} | {machine['python']} | "
        f"{machine['neo4j']} | {machine['redis']} |",
        "",
        f"![median time against transactions, log-log, one line per mode]({plot_name})",
        "",
        "Modes:",
        "",
        *(f"- **{mode}**: {text}." for mode, text in MODE_DOCS.items()),
        "",
    ]
    lines += [f"- {note}" for note in results.get("notes", [])]
    lines += ["", render_targets(results)]
    for size in results["sizes"]:
        lines += ["", render_size(size)]
    if results.get("profile"):
        lines += ["", render_profile(results["profile"])]
    return relative_paths("\n".join(lines) + "\n")


def write_doc(path: Path, generated: str) -> None:
    """Write ``generated``, keeping whatever was written by hand below :data:`NOTES_MARKER`."""
    notes = ""
    if path.exists() and NOTES_MARKER in (old := path.read_text()):
        notes = old.split(NOTES_MARKER, 1)[1]
    path.write_text(f"{generated}\n{NOTES_MARKER}{notes or chr(10)}")


def plot(results: dict[str, Any], path: Path) -> None:
    """Median time against transactions, log-log, one line per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(8, 5.5))
    generated = [(size["transactions"], summarise(size["runs"])) for size in results["sizes"] if not size.get("name")]
    named = [(size["transactions"], summarise(size["runs"])) for size in results["sizes"] if size.get("name")]
    for mode in MODES:
        latest = {n: s[mode].seconds for n, s in generated if mode in s}  # merged results: a size's last
        points = sorted(latest.items())
        if points:
            xs, ys = zip(*points, strict=True)
            [line] = axes.plot(xs, ys, marker="o", linestyle="--" if mode in FLOORS else "-", label=mode)
            for n, s in named:
                if mode in s:
                    axes.plot([n], [s[mode].seconds], marker="*", markersize=11, color=line.get_color())
    axes.set(xscale="log", yscale="log", xlabel="transactions (stars: AMLSim)", ylabel="median wall time, s",
             title=f"fx extraction time ({results['machine']['cores']} cores, seed {results['seed']})")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
