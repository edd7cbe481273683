"""From the runs of a benchmark to medians, ratios, ``docs/benchmarks.md`` and the plot. Pure but for file writes."""

from __future__ import annotations

import pstats
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fx_workers.config import REPO_ROOT

MODES = ("naive", "local", "distributed-1", "distributed-2", "distributed-4", "floor-redis-cli", "floor-redis-py")
"""Every mode, in table and plot order."""
FLOORS = ("floor-redis-cli", "floor-redis-py")
NOTES_MARKER = "<!-- Notes below this line are written by hand and kept when bench.run regenerates the file. -->"
MB = 1024 * 1024
MODE_DOCS = {
    "naive": "what the seed's script did: one Cypher query per account, the 16 core node and 2 core edge features "
             "in plain Python per account, one unpipelined `HSET` per account and per transfer",
    "local": "`fx extract --local` (`run_local`): bulk column reads per batch of 1000 accounts, the vectorised "
             "62 + 11 features, RESP-packed pipelined writes; verification timed apart",
    "distributed-k": "k worker processes (`python -m fx_workers --worker-id N`) fed by Kafka, results aggregated "
                     "into Redis by the bench; from planning and the first request published to the last batch "
                     "written to Redis, without Airflow; verification timed apart",
    "floor-redis-cli": "every transfer read once as columns (one `collect()` query) plus every record of `local` "
                       "written once, pre-encoded, through `redis-cli --pipe`: the server's floor",
    "floor-redis-py": "the same read, plus the same records written through redis-py pipelines of 5000 hashes: "
                      "a Python client's floor",
}


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

    @property
    def transfers_per_second(self) -> float:
        return self.transfers / self.seconds if self.seconds else 0.0


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
        )
    return summaries


def ratios(summaries: dict[str, ModeSummary]) -> dict[str, float]:
    """Time ratios between modes that were measured: how many times slower the first is."""
    pairs = [("naive", "local")]
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


def render_size(size: dict[str, Any]) -> str:
    """The table and ratios of one size."""
    summaries = summarise(size["runs"])
    lines = [
        f"## {size['transactions']:,} transactions ({size['accounts']:,} accounts)",
        "",
        "| mode | runs | median s | transfers/s | peak RSS MB | worker peak RSS MB | Redis B/account | "
        "phases, median s | verify s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for s in summaries.values():
        verify = "" if s.verify_seconds is None else f"{s.verify_seconds:.2f}"
        lines.append(
            f"| {s.mode} | {s.repeats} | {s.seconds:.3f} | {s.transfers_per_second:,.0f} | {_mb(s.peak_rss)} | "
            f"{_mb(s.worker_peak_rss)} | {s.redis_bytes_per_account:,.0f} | {_phases(s)} | {verify} |"
        )
    lines += ["", "Ratios of median times: " + "; ".join(f"{k} **{v:.1f}x**" for k, v in ratios(summaries).items())]
    if size.get("notes"):
        lines += ["", *(f"- {note}" for note in size["notes"])]
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


def render(results: dict[str, Any], plot_name: str = "benchmarks.png") -> str:
    """The generated part of ``docs/benchmarks.md``."""
    machine = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `{results['command']}` on {results['finished_at']} (seed {results['seed']}, "
        f"`as_of` = the end of the generated data, so every transfer counts). Each timing is the median of the "
        "runs shown; the modes of one size run interleaved (one repeat of every mode, then the next), so "
        "noise on this shared machine hits them alike. Peak RSS is per process (`wait4`); Redis bytes per "
        "account is the growth of `used_memory` over the run divided by the accounts, so it includes the "
        "transfer records.",
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
    for size in results["sizes"]:
        lines += ["", render_size(size)]
    if results.get("profile"):
        lines += ["", render_profile(results["profile"])]
    return "\n".join(lines) + "\n"


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
    per_size = [(size["transactions"], summarise(size["runs"])) for size in results["sizes"]]
    for mode in MODES:
        points = [(n, s[mode].seconds) for n, s in per_size if mode in s]
        if points:
            xs, ys = zip(*points, strict=True)
            axes.plot(xs, ys, marker="o", linestyle="--" if mode in FLOORS else "-", label=mode)
    axes.set(xscale="log", yscale="log", xlabel="transactions", ylabel="median wall time, s",
             title=f"fx extraction time ({results['machine']['cores']} cores, seed {results['seed']})")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
