"""The ``fx`` command line: thin wrappers that parse, call package code, and print.

Imports are lazy, as in Feast's and Airflow's CLIs: at import time this module loads only typer,
so ``fx --help`` never pays for pydantic, rich, numpy or a client library; each command imports
what it uses (``tests/unit/test_cli_imports.py`` pins the set).
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from rich.console import Console

    from fx_workers.config import Settings
    from fx_workers.store.reader import FeatureReader

PLAIN_HELP = {"rich_markup_mode": None}
"""Help and usage errors as click prints them: typer's rich rendering imports rich, markdown-it and
pygments (0.5 s) before it prints a line."""
app = typer.Typer(help="fx: graph features for fraud and AML models.", no_args_is_help=True, **PLAIN_HELP)
features_app = typer.Typer(help="Read stored features from Redis.", no_args_is_help=True, **PLAIN_HELP)
app.add_typer(features_app, name="features")
runs_app = typer.Typer(help="List runs, and roll the published one back or forward.", no_args_is_help=True,
                       **PLAIN_HELP)
app.add_typer(runs_app, name="runs")
RunOption = Annotated[str | None, typer.Option("--run", help="Run id (fx runs list); defaults to the published run.")]


@cache
def console() -> Console:
    """Messages and progress bars, on stderr."""
    from rich.console import Console

    return Console(stderr=True)


@cache
def stdout() -> Console:
    """Tables for stdout; piped output is not cut at rich's default 80 columns."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 200)


def settings() -> Settings:
    """The configuration (config.yaml and ``FX__`` variables), loaded on first use."""
    from fx_workers.config import settings as load

    return load()


class CsvFormat(StrEnum):
    native = "native"
    amlworld = "amlworld"


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr; yields ``advance(n)``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console(), transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def fail(message: str, code: int = 1) -> typer.Exit:
    console().print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


@app.command()
def generate(
    transactions: Annotated[int, typer.Option("--transactions", "-n", min=1, help="Number of transfers.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="CSV file to write.")],
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same file.")] = 7,
    accounts: Annotated[int | None, typer.Option(help="Number of accounts, defaults to N/8.")] = None,
) -> None:
    """Write a synthetic transaction graph as native CSV."""
    from fx_workers.tools.generate import write_csv

    summary = write_csv(out, transactions=transactions, seed=seed, accounts=accounts)
    console().print(summary)


@app.command()
def load(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="CSV file to load.")],
    replace: Annotated[bool, typer.Option(help="Delete the model's nodes and relationships first.")] = False,
    fmt: Annotated[CsvFormat, typer.Option("--format", help="native or amlworld.")] = CsvFormat.native,
    skip_bad: Annotated[bool, typer.Option(help="Load the good rows and list the bad ones.")] = False,
) -> None:
    """Load a transaction CSV into Neo4j."""
    from fx_workers.tools.load import BadRowsError, load_csv

    try:
        summary = load_csv(file, settings(), fmt=fmt.value, replace=replace, skip_bad=skip_bad,
                           progress=progress_bar)
    except BadRowsError as exc:
        raise fail(str(exc)) from None
    console().print(summary)


@app.command()
def doctor() -> None:
    """Check the services, topics and graph; print a fix for each failure."""
    from rich.table import Table

    from fx_workers.tools.doctor import run_checks

    checks = run_checks(settings())
    failed = not all(check.ok for check in checks)
    table = Table("check", "status", "detail", *(["fix"] if failed else []))
    for check in checks:
        status = "[green]ok[/green]" if check.ok else "[red]FAIL[/red]"
        table.add_row(check.name, status, check.detail, *([("" if check.ok else check.fix)] if failed else []))
    stdout().print(table)
    if failed:
        raise typer.Exit(1)


@app.command()
def extract(
    local: Annotated[bool, typer.Option("--local", help="Run in this process, without Kafka and Airflow.")] = False,
    as_of: Annotated[int | None, typer.Option(help="Point in time, epoch seconds; defaults to now.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, max=20_000,
                                                   help="Accounts per batch; defaults to config.")] = None,
) -> None:
    """Compute every account's and transfer's features into a new run, verify it, then publish it."""
    import time

    from fx_workers.steps.local import run_local

    if not local:
        raise fail("the distributed run is the Airflow DAG: `airflow dags trigger fx_extract`; "
                   "use --local for a single-process run")
    summary = run_local(settings(), as_of=int(time.time()) if as_of is None else as_of,
                        batch_size=batch_size, progress=progress_bar)
    console().print(str(summary))
    if not summary.verification.ok:
        console().print(str(summary.verification))
        raise typer.Exit(1)


@app.command()
def verify(
    run: RunOption = None,
    sample: Annotated[int | None, typer.Option(min=0, help="Accounts to recompute from Neo4j.")] = None,
    batches: Annotated[int | None, typer.Option(
        min=0, help="Whole batches to recompute and re-read against their checksums.")] = None,
) -> None:
    """Check a run's counts, a recomputed sample and sampled checksums (changes nothing)."""
    from fx_workers.steps.verify import verify_run
    from fx_workers.store.client import open_redis
    from fx_workers.store.runs import RunError

    config = settings()
    try:
        report = verify_run(config, open_redis(config.redis), run, sample=sample, batches=batches,
                            progress=progress_bar)
    except RunError as exc:
        raise fail(str(exc)) from None
    stdout().print(str(report), highlight=False)
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def worker(
    worker_id: Annotated[str | None, typer.Option(
        "--worker-id", help="Stable id: Kafka client id and static membership; defaults to the hostname.")] = None,
    max_messages: Annotated[int | None, typer.Option(min=1, help="Exit after this many requests.")] = None,
    check: Annotated[bool, typer.Option("--check", help="Exit 0 if the worker's health key is fresh, else 1.")] = False,
) -> None:
    """Run an extraction worker until SIGTERM (the same as `python -m fx_workers`)."""
    from fx_workers.worker import check_health, default_worker_id, serve

    worker_id = worker_id or default_worker_id()
    if check:
        healthy, detail = check_health(settings(), worker_id)
        print(detail)
        raise typer.Exit(0 if healthy else 1)
    serve(settings(), worker_id, max_messages)


def _reader(run: str | None) -> FeatureReader:
    from fx_workers.store.client import open_redis
    from fx_workers.store.keys import RedisKeys
    from fx_workers.store.reader import FeatureReader

    config = settings().redis
    return FeatureReader(open_redis(config), RedisKeys(config.prefix), run)


@features_app.command("get")
def features_get(
    ids: Annotated[list[str], typer.Argument(help="Account ids (or transaction ids with --edge).")],
    edge: Annotated[bool, typer.Option("--edge", help="Read transfer features.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    run: RunOption = None,
) -> None:
    """Print stored features for some accounts or transfers, from the published run."""
    import json

    from rich.table import Table

    from fx_workers.store.runs import RunError

    reader = _reader(run)
    try:
        records = dict(zip(ids, (reader.edges if edge else reader.nodes)(ids), strict=True))
    except RunError as exc:
        raise fail(str(exc)) from None
    if as_json:
        print(json.dumps(records, indent=2))
    else:
        table = Table("feature", *ids)
        names = sorted({name for record in records.values() if record for name in record},
                       key=lambda n: (n.startswith("_"), n))
        for name in names:
            table.add_row(name, *(str(records[i].get(name, "")) if records[i] else "-" for i in ids))
        stdout().print(table)
    if any(record is None for record in records.values()):
        raise fail(f"no features stored for: {', '.join(i for i, r in records.items() if r is None)}")


@features_app.command("export")
def features_export(
    out: Annotated[Path, typer.Option("--out", "-o", help="FILE.parquet or FILE.csv.")],
    edges: Annotated[bool, typer.Option("--edges", help="One row per transfer instead of per account.")] = False,
    run: RunOption = None,
) -> None:
    """Write a run's features for model training: the id first, then the catalogue's columns."""
    from fx_workers.store.runs import RunError
    from fx_workers.tools.export import ExportError, export_run

    try:
        summary = export_run(_reader(run), out, edges=edges, progress=progress_bar)
    except (RunError, ExportError) as exc:
        raise fail(str(exc)) from None
    console().print(str(summary))


@features_app.command("docs")
def features_docs() -> None:
    """Print the catalogue as Markdown (the source of docs/features.md)."""
    from fx_workers.tools.catalogue_doc import render_markdown

    print(render_markdown(), end="")


@runs_app.command("list")
def runs_list() -> None:
    """Every run, newest first: status, as_of, counts, size; the published one is marked."""
    from datetime import UTC, datetime

    from rich.table import Table

    from fx_workers.store.client import open_redis
    from fx_workers.store.keys import RedisKeys
    from fx_workers.store.runs import RunRegistry

    config = settings().redis
    table = Table("run", "live", "status", "as_of", "mode", "accounts", "transfers", "size", "drift", "created",
                  "dag run")
    for run in RunRegistry(open_redis(config), RedisKeys(config.prefix)).list():
        as_of = run.get("as_of")
        created = run.get("created")
        table.add_row(
            run.run_id, "*" if run.latest else "", run.status,
            datetime.fromtimestamp(int(as_of), UTC).isoformat(timespec="seconds") if as_of else "",
            run.get("mode"), run.get("accounts"), run.get("transfers"),
            f"{int(run.get('size_bytes', '0')) / 2**20:.1f} MiB" if run.get("size_bytes") else "",
            run.get("drift_verdict"),
            datetime.fromtimestamp(float(created), UTC).isoformat(timespec="seconds") if created else "",
            run.get("dag_run_id"),
        )
    stdout().print(table)


@runs_app.command("promote")
def runs_promote(run: Annotated[str, typer.Argument(help="A retained verified run (fx runs list).")]) -> None:
    """Point readers at another retained verified run: a rollback or a roll-forward, in one write."""
    from fx_workers.store.client import open_redis
    from fx_workers.store.keys import RedisKeys
    from fx_workers.store.runs import RunError, RunRegistry

    config = settings().redis
    registry = RunRegistry(open_redis(config), RedisKeys(config.prefix))
    before = registry.latest()
    try:
        registry.promote(run)
    except RunError as exc:
        raise fail(str(exc)) from None
    console().print(f"{registry.keys.latest}: {before} -> {run}")


def main() -> None:
    """Entry point that turns configuration errors into one line."""
    try:
        app()
    except Exception as exc:
        from fx_workers.config import ConfigError

        if not isinstance(exc, ConfigError):
            raise
        console().print(f"[red]configuration error:[/red] {exc}")
        sys.exit(2)
