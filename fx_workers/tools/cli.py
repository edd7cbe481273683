"""The ``fx`` command line: thin wrappers that parse, call package code, and print."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from fx_workers.config import ConfigError, settings

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

app = typer.Typer(help="fx: graph features for fraud and AML models.", no_args_is_help=True)
features_app = typer.Typer(help="Read stored features from Redis.", no_args_is_help=True)
app.add_typer(features_app, name="features")
console = Console(stderr=True)
stdout = Console(width=None if sys.stdout.isatty() else 200)
"""Tables for stdout; piped output is not cut at rich's default 80 columns."""


class CsvFormat(StrEnum):
    native = "native"
    amlworld = "amlworld"


@contextmanager
def progress_bar(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr; yields ``advance(n)``."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


def fail(message: str, code: int = 1) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
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
    console.print(summary)


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
    console.print(summary)


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
    stdout.print(table)
    if failed:
        raise typer.Exit(1)


@app.command()
def extract(
    local: Annotated[bool, typer.Option("--local", help="Run in this process, without Kafka and Airflow.")] = False,
    as_of: Annotated[int | None, typer.Option(help="Point in time, epoch seconds; defaults to now.")] = None,
    batch_size: Annotated[int | None, typer.Option(min=1, help="Accounts per batch; defaults to config.")] = None,
) -> None:
    """Compute every account's and transfer's features into Redis, then verify the run."""
    import time

    from fx_workers.extract import run_local

    if not local:
        raise fail("the distributed run is the Airflow DAG: `airflow dags trigger fx_extract`; "
                   "use --local for a single-process run")
    summary = run_local(settings(), as_of=int(time.time()) if as_of is None else as_of,
                        batch_size=batch_size, progress=progress_bar)
    console.print(str(summary))
    if not summary.verification.ok:
        console.print(str(summary.verification))
        raise typer.Exit(1)


@app.command()
def verify(
    run: Annotated[str | None, typer.Option("--run", help="Run id; defaults to the latest verified run.")] = None,
    sample: Annotated[int | None, typer.Option(min=0, help="Accounts to recompute from Neo4j.")] = None,
) -> None:
    """Check that a run's records are complete, finite and equal to a fresh recomputation."""
    from fx_workers.verify import RunNotFoundError, verify_run

    try:
        report = verify_run(settings(), run, sample=sample, progress=progress_bar)
    except RunNotFoundError as exc:
        raise fail(str(exc)) from None
    stdout.print(str(report), highlight=False)
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


@features_app.command("get")
def features_get(
    ids: Annotated[list[str], typer.Argument(help="Account ids (or transaction ids with --edge).")],
    edge: Annotated[bool, typer.Option("--edge", help="Read transfer features.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print stored features for some accounts or transfers."""
    import json

    from rich.table import Table

    from fx_workers.sink import FeatureReader, open_redis
    from fx_workers.store.keys import RedisKeys

    config = settings().redis
    reader = FeatureReader(open_redis(config), RedisKeys(config.prefix))
    records = dict(zip(ids, (reader.edges if edge else reader.nodes)(ids), strict=True))
    if as_json:
        print(json.dumps(records, indent=2))
    else:
        table = Table("feature", *ids)
        names = sorted({name for record in records.values() if record for name in record},
                       key=lambda n: (n.startswith("_"), n))
        for name in names:
            table.add_row(name, *(str(records[i].get(name, "")) if records[i] else "-" for i in ids))
        stdout.print(table)
    if any(record is None for record in records.values()):
        raise fail(f"no features stored for: {', '.join(i for i, r in records.items() if r is None)}")


@features_app.command("docs")
def features_docs() -> None:
    """Print the catalogue as Markdown (the source of docs/features.md)."""
    from fx_workers.tools.catalogue_doc import render_markdown

    print(render_markdown(), end="")


def main() -> None:
    """Entry point that turns configuration errors into one line."""
    try:
        app()
    except ConfigError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        sys.exit(2)
