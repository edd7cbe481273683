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
    from fx_workers.generate import write_csv

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
    from fx_workers.load import BadRowsError, load_csv

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

    from fx_workers.doctor import run_checks

    checks = run_checks(settings())
    table = Table("check", "status", "detail", "fix")
    for check in checks:
        status = "[green]ok[/green]" if check.ok else "[red]FAIL[/red]"
        table.add_row(check.name, status, check.detail, "" if check.ok else check.fix)
    Console().print(table)
    if not all(check.ok for check in checks):
        raise typer.Exit(1)


def main() -> None:
    """Entry point that turns configuration errors into one line."""
    try:
        app()
    except ConfigError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        sys.exit(2)
