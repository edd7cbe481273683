"""Do fx's features help detect laundering? ``python -m bench.usefulness`` (``make bench-usefulness``).

On the AMLSim sample in ``../shared/data/amlsim`` (labelled transfers, each laundering one with its
typology) it loads the graph with ``fx load`` under a label, relationship type and Redis prefix of its own
(:data:`bench.usefulness_data.BENCH_ENV`), takes one ``fx extract --local`` run per weekly cutoff aligned on
2017-04-01, reads each through ``fx features export --run``, joins every transfer with its payer's and
payee's features as of the latest cutoff strictly before it, and trains LightGBM (one setting, 3 seeds) on
the transfers before 2017-04-01 to flag those after. Feature sets side by side: raw transfer fields, plain
counts, fx without its pattern family, fx with it (whatever the catalogue holds when it runs), and snapml's
GraphFeaturePreprocessor when it is installed. Writes ``docs/usefulness.md`` and ``docs/usefulness.png``,
and the numbers to ``bench/results/usefulness/results-<time>.json``; deletes its runs from Redis at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench import usefulness_data as data
from bench import usefulness_model as model
from bench import usefulness_report as report
from fx_workers.config import REPO_ROOT

DOCS = REPO_ROOT / "docs"
COUNTS = ("in_count", "out_count")
SET_NAMES = ("raw", "counts", "fx_base", "fx", "gfp")
LABELS = {"raw": "raw transfer fields", "counts": "plain counts", "fx_base": "fx without patterns",
          "fx": "fx with patterns", "gfp": "snapml GFP (7d)"}


def pattern_names() -> set[str]:
    """The pattern family as the catalogue holds it now (empty while it is being written)."""
    from fx_workers.engine.patterns import PATTERNS

    return {spec.name for spec in PATTERNS.specs("node")}


def families() -> dict[str, str]:
    from fx_workers.engine.catalogue import NODE_FEATURES

    return {spec.name: spec.family for spec in NODE_FEATURES}


def family_of(column: str, family: dict[str, str]) -> str:
    """``raw`` for the transfer's fields, ``pair`` for pair features, else the catalogue's family."""
    if column.startswith("pair."):
        return "pair"
    if "." not in column:
        return "raw"
    name = column.split(".", 1)[1]
    return "gfp" if name.startswith("gfp_") else family.get(name, "other")


def feature_sets(columns: list[str], raw: list[str], patterns: set[str], with_gfp: bool) -> dict[str, list[str]]:
    """Each set's columns: every set starts from the raw transfer fields."""
    node = [c for c in columns if c.startswith(("payer.", "payee.")) and "gfp_" not in c]
    pair = [c for c in columns if c.startswith("pair.")]
    sets = {
        "raw": raw,
        "counts": raw + [f"{side}.{name}" for side in ("payer", "payee") for name in COUNTS],
        "fx_base": raw + [c for c in node if c.split(".", 1)[1] not in patterns] + pair,
        "fx": raw + node + pair,
    }
    if with_gfp:
        sets["gfp"] = raw + [c for c in columns if "gfp_" in c]
    return sets


def snapshots(transfers: data.Transfers, cuts: np.ndarray, reuse: bool, progress: Progress) -> list[data.Snapshot]:
    """One fx run per cutoff and its exports; the next run is extracted while the last one is exported."""
    out = data.WORK / data.data_key(transfers)
    out.mkdir(parents=True, exist_ok=True)
    task = progress.add_task("fx runs (extract --local, export)", total=len(cuts))
    snaps: list[data.Snapshot] = []
    exports = []
    with ThreadPoolExecutor(1) as exporter:
        for cutoff in (int(c) for c in cuts):
            nodes, edges = out / f"nodes-{cutoff}.parquet", out / f"edges-{cutoff}.parquet"
            if reuse and nodes.exists() and edges.exists():
                exports.append((cutoff, "reused", None))
                progress.advance(task)
                continue
            run_id = data.extract(cutoff)
            future = exporter.submit(data.export, run_id, nodes, edges)
            future.add_done_callback(lambda _: progress.advance(task))
            exports.append((cutoff, run_id, future))
        for cutoff, run_id, future in exports:
            if future is not None:
                future.result()
            snaps.append(data.read_snapshot(transfers, cutoff, run_id, out / f"nodes-{cutoff}.parquet",
                                            out / f"edges-{cutoff}.parquet"))
    return snaps


def evaluate(x: np.ndarray, y: np.ndarray, typology: np.ndarray, split: model.Split) -> dict[str, Any]:
    """Every seed's fit; test F1 at the validation threshold, PR-AUC, recall per typology, gain."""
    runs = [model.fit_and_score(x, y, split, seed) for seed in model.SEEDS]
    y_test, kinds = y[split.test], typology[split.test]
    result: dict[str, Any] = {"seeds": [], "gain": np.mean([r.gain for r in runs], axis=0).tolist()}
    for run in runs:
        flagged = run.test_score >= run.threshold
        result["seeds"].append({
            "seed": run.seed, "threshold": run.threshold, "validation_f1": run.validation_f1,
            "f1": model.f1_at(y_test, run.test_score, run.threshold),
            "pr_auc": model.average_precision(y_test, run.test_score),
            "recall": {kind: float(flagged[kinds == kind].mean()) for kind in sorted(set(kinds[y_test]))},
        })
    precision, recall = model.precision_recall(y_test, runs[0].test_score)
    keep = np.unique(np.linspace(0, len(recall) - 1, 400).astype(int))
    result["curve"] = {"precision": precision[keep].tolist(), "recall": recall[keep].tolist()}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.usefulness", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reuse", action="store_true",
                        help="reuse exports of an earlier run with the same catalogue schema and data")
    parser.add_argument("--render", type=Path, metavar="JSON", help="only re-render the docs from a results file")
    args = parser.parse_args(argv)
    if args.render:
        report.write(json.loads(args.render.read_text()), DOCS / "usefulness.md", DOCS / "usefulness.png")
        return 0
    started, clock = datetime.now(UTC), time.monotonic()
    console = Console(stderr=True)
    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        timings[name] = round(time.monotonic() - since, 1)
        console.print(f"usefulness: {name} took {timings[name]:.0f} s")
        return time.monotonic()

    transfers = data.read_transfers()
    cuts = data.cutoffs(int(transfers.ts[0]), int(transfers.ts[-1]))
    console.print(f"usefulness: {len(transfers):,} transfers, {len(transfers.accounts):,} accounts, "
                  f"{len(cuts)} cutoffs {model.cutoff_label(cuts[0])}..{model.cutoff_label(cuts[-1])}")
    console.print(f"usefulness: {data.ensure_graph(transfers)}")
    step = lap("load", clock)
    try:
        import snapml  # noqa: F401
        gfp_note = None
    except ImportError as exc:
        gfp_note = f"snapml is not installed here ({exc}); GFP was not measured"
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        try:
            snaps = snapshots(transfers, cuts, args.reuse, progress)
        finally:
            console.print(f"usefulness: deleted the benchmark's runs ({data.clear_runs()})")
        step = lap("fx runs and exports", step)
        gfp: list[dict[str, np.ndarray]] = []
        if gfp_note is None:
            task = progress.add_task("snapml GFP per cutoff", total=len(cuts))
            for cutoff in cuts:
                gfp.append(model.gfp_snapshot(transfers, int(cutoff)))
                progress.advance(task)
            step = lap("GFP", step)
        which = data.snapshot_index(transfers.ts, cuts)
        rows = np.flatnonzero(which >= 0)
        raw = data.raw_columns(transfers)
        columns = {name: values[rows] for name, values in raw.items()}
        columns |= data.joined(transfers, snaps, rows, which[rows], (lambda j: gfp[j]) if gfp else None)
        names = list(columns)
        x = np.column_stack([columns[name] for name in names])
        y, typology = transfers.label[rows], transfers.typology[rows]
        split = model.split_rows(transfers.ts[rows], data.SPLIT)
        sets = feature_sets(names, list(raw), pattern_names(), bool(gfp))
        task = progress.add_task("LightGBM (feature sets x seeds)", total=len(sets) * len(model.SEEDS))
        family = families()
        results: dict[str, Any] = {}
        for key, chosen in sets.items():
            index = [names.index(c) for c in chosen]
            results[key] = evaluate(x[:, index], y, typology, split) | {"label": LABELS[key], "columns": len(chosen)}
            gains: dict[str, float] = {}
            for column, gain in zip(chosen, results[key].pop("gain"), strict=True):
                gains[family_of(column, family)] = gains.get(family_of(column, family), 0.0) + gain
            results[key]["family_gain"] = gains
            progress.advance(task, len(model.SEEDS))
            f1 = [s["f1"] for s in results[key]["seeds"]]
            console.print(f"usefulness: {LABELS[key]}: test F1 {np.mean(f1):.3f} ± {np.std(f1):.3f}")
        lap("models", step)
    timings["total"] = round(time.monotonic() - clock, 1)
    timings["load_average_end"] = os.getloadavg()[0]
    document = {
        "command": " ".join(["python -m bench.usefulness", *(sys.argv[1:] if argv is None else argv)]),
        "started_at": started.isoformat(timespec="seconds"), "commit": report.commit(),
        "cutoffs": [model.cutoff_label(c) for c in cuts], "runs": [s.run_id for s in snaps],
        "patterns": sorted(pattern_names()), "gfp_note": gfp_note, "timings": timings,
        "rows": {"scored": len(rows), "fit": int(split.fit.sum()), "validation": int(split.validation.sum()),
                 "test": int(split.test.sum()), "test_positives": int(y[split.test].sum())},
        "params": model.PARAMS | {"rounds": model.ROUNDS, "seeds": list(model.SEEDS)},
        "sets": results,
    }
    path = data.WORK / f"results-{started:%Y%m%dT%H%M%S}.json"
    path.write_text(json.dumps(document, indent=1))
    report.write(document, DOCS / "usefulness.md", DOCS / "usefulness.png")
    console.print(f"usefulness: {timings['total']:.0f} s in all; wrote {path}, docs/usefulness.md and "
                  "docs/usefulness.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
