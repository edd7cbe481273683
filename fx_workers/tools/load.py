"""Load a transaction CSV into Neo4j, per the graph model of the brief.

The whole file is read and checked before the first write, so a bad row refuses the load and
leaves the graph as it was. Writes are batched ``UNWIND`` statements: every distinct account is
merged first, then transfers are merged on ``tx_id``, which a relationship uniqueness constraint
keeps unique and fast to find. Loading the same file twice therefore changes nothing, and a load
that stops half way (each batch is its own transaction) is completed by running it again.
"""

from __future__ import annotations

import csv
import math
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any, NamedTuple

from fx_workers.engine.graph import Cypher, open_driver
from fx_workers.progress import ProgressFactory, no_progress

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from neo4j import Driver

    from fx_workers.config import Settings

    RowParser = Callable[[list[str], int], "Transfer"]

BATCH_SIZE = 10_000
MAX_LISTED = 20
NATIVE_HEADER = ("tx_id", "payer", "payee", "amount", "ts", "currency", "channel", "is_laundering")
NATIVE_REQUIRED = NATIVE_HEADER[:5]
AMLWORLD_COLUMNS = (
    "Timestamp", "From Bank", "Account", "To Bank", "Account.1", "Amount Received", "Receiving Currency",
    "Amount Paid", "Payment Currency", "Payment Format", "Is Laundering",
)  # fmt: skip
"""The AMLworld header with the second "Account" (the payee's) named as pandas names it."""
AMLWORLD_TIME_FORMAT = "%Y/%m/%d %H:%M"
_INTEGER = re.compile(r"-?[0-9]+")

CONSTRAINTS = (
    "CREATE CONSTRAINT {A}_{id}_unique IF NOT EXISTS FOR (a:{A}) REQUIRE a.{id} IS UNIQUE",
    "CREATE CONSTRAINT {T}_{tx}_unique IF NOT EXISTS FOR ()-[t:{T}]-() REQUIRE t.{tx} IS UNIQUE",
    # lets extraction ask "is any transfer after as_of?" with an index seek (see graph.Cypher)
    "CREATE RANGE INDEX {T}_{ts} IF NOT EXISTS FOR ()-[t:{T}]-() ON (t.{ts})",
)
DELETE_GRAPH = (
    "MATCH ()-[t:{T}]->() CALL (t) {{ DELETE t }} IN TRANSACTIONS OF $batch ROWS",
    "MATCH (a:{A}) CALL (a) {{ DETACH DELETE a }} IN TRANSACTIONS OF $batch ROWS",
)
MERGE_ACCOUNTS = "UNWIND $rows AS id MERGE (:{A} {{{id}: id}})"
MERGE_TRANSFERS = (
    "UNWIND $rows AS r "
    "MATCH (p:{A} {{{id}: r.payer}}), (q:{A} {{{id}: r.payee}}) "
    "MERGE (p)-[t:{T} {{{tx}: r.tx_id}}]->(q) "
    "SET t.{amount} = r.amount, t.{ts} = r.ts, "
    "t.currency = r.currency, t.channel = r.channel, t.is_laundering = r.is_laundering"
)


class Transfer(NamedTuple):
    """One checked row; the optional fields are ``None`` when the file leaves them out."""

    tx_id: str
    payer: str
    payee: str
    amount: float
    ts: int
    currency: str | None = None
    channel: str | None = None
    is_laundering: bool | None = None


@dataclass(frozen=True)
class BadRow:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


class BadRowsError(ValueError):
    """The file has bad rows (or a bad header); nothing was written."""

    def __init__(self, path: Path, bad: list[BadRow]) -> None:
        self.path = path
        self.bad = bad
        super().__init__(f"{path}: {len(bad)} bad row(s), nothing was written\n{_describe(bad)}")


@dataclass(frozen=True)
class ParsedCsv:
    transfers: list[Transfer]
    skipped: list[BadRow]


@dataclass(frozen=True)
class LoadSummary:
    """What :func:`load_csv` wrote: distinct accounts and transfers in the file, rows skipped."""

    file: Path
    accounts: int
    transfers: int
    skipped: tuple[BadRow, ...]
    seconds: float

    def __str__(self) -> str:
        text = (
            f"loaded {self.transfers} transfers between {self.accounts} accounts "
            f"from {self.file} in {self.seconds:.1f} s"
        )
        if self.skipped:
            text += f"; skipped {len(self.skipped)} bad row(s)\n{_describe(self.skipped)}"
        return text

    def __rich__(self) -> object:
        from rich.text import Text

        return Text(str(self))


class _RowError(ValueError):
    """One row (or the header) is bad; the message is the reason shown to the user."""


def ensure_schema(driver: Driver, settings: Settings) -> None:
    """Create the constraints and index that loading and extraction rely on (idempotent)."""
    cypher = Cypher(settings.graph)
    for query in CONSTRAINTS:
        driver.execute_query(cypher.render(query), database_=settings.neo4j.database)


def delete_graph(driver: Driver, settings: Settings) -> None:
    """Delete every transfer and account of the configured labels, :data:`BATCH_SIZE` at a time: one
    transaction for a whole large graph would outgrow Neo4j's transaction memory."""
    cypher = Cypher(settings.graph)
    with driver.session(database=settings.neo4j.database) as session:
        for query in DELETE_GRAPH:  # CALL ... IN TRANSACTIONS needs an auto-commit transaction
            session.run(cypher.render(query), batch=BATCH_SIZE).consume()


def load_csv(
    path: Path,
    settings: Settings,
    *,
    fmt: str = "native",
    replace: bool = False,
    skip_bad: bool = False,
    progress: ProgressFactory = no_progress,
) -> LoadSummary:
    """Check the whole file, then write its accounts and transfers to Neo4j in batches.

    :param path: the CSV file
    :param settings: Neo4j connection and graph model names
    :param fmt: ``native`` or ``amlworld``, defaults to ``native``
    :param replace: first delete the model's relationships and nodes, defaults to False
    :param skip_bad: load the good rows and report the bad ones in the summary, defaults to False
    :param progress: ``progress(description, total)`` context manager yielding ``advance(n)``
    :raises BadRowsError: before any write, when a row is bad and not ``skip_bad``, or the header is
    """
    started = time.perf_counter()
    parsed = read_transfers(path, fmt, skip_bad=skip_bad)
    accounts = list(dict.fromkeys(account for t in parsed.transfers for account in (t.payer, t.payee)))
    cypher = Cypher(settings.graph)
    database = settings.neo4j.database
    with open_driver(settings.neo4j) as driver:
        if replace:
            with progress("deleting the old graph", None):
                delete_graph(driver, settings)
        ensure_schema(driver, settings)
        _write_batches(driver, database, cypher.render(MERGE_ACCOUNTS), accounts, "accounts", progress)
        _write_batches(
            driver,
            database,
            cypher.render(MERGE_TRANSFERS),
            parsed.transfers,
            "transfers",
            progress,
            encode=lambda batch: [t._asdict() for t in batch],
        )
    return LoadSummary(
        file=path,
        accounts=len(accounts),
        transfers=len(parsed.transfers),
        skipped=tuple(parsed.skipped),
        seconds=time.perf_counter() - started,
    )


def _write_batches(
    driver: Driver,
    database: str,
    query: str,
    rows: list[Any],
    description: str,
    progress: ProgressFactory,
    encode: Callable[[list[Any]], list[Any]] = list,
) -> None:
    """Run ``query`` once per batch of ``rows``, passed as ``$rows``, each in its own transaction."""
    with progress(description, len(rows)) as advance:
        for start in range(0, len(rows), BATCH_SIZE):
            batch = rows[start : start + BATCH_SIZE]
            driver.execute_query(query, rows=encode(batch), database_=database)
            advance(len(batch))


def read_transfers(path: Path, fmt: str = "native", *, skip_bad: bool = False) -> ParsedCsv:
    """Parse and check every row of a transaction CSV, without touching Neo4j.

    Checks: the header, the number of fields, non-empty ids, amount a finite number >= 0, ts an
    integer (epoch seconds), ``tx_id`` unique within the file. Blank lines are ignored.

    :param path: the CSV file
    :param fmt: ``native`` or ``amlworld`` (see :func:`_amlworld_parser`), defaults to ``native``
    :param skip_bad: return the bad rows as ``skipped`` instead of raising, defaults to False
    :raises BadRowsError: when the header is bad, or a row is bad and not ``skip_bad``
    :raises ValueError: when ``fmt`` is unknown
    """
    if fmt not in _PARSERS:
        raise ValueError(f"fmt must be one of {sorted(_PARSERS)}. Got {fmt!r}")
    transfers: list[Transfer] = []
    bad: list[BadRow] = []
    first_line: dict[str, int] = {}
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            parse = _PARSERS[fmt](next(reader, None))
            for fields in reader:
                if not fields:
                    continue
                try:
                    transfer = parse(fields, reader.line_num)
                    first = first_line.setdefault(transfer.tx_id, reader.line_num)
                    if first != reader.line_num:
                        raise _RowError(f"tx_id {transfer.tx_id!r} repeats line {first}")
                    transfers.append(transfer)
                except _RowError as exc:
                    bad.append(BadRow(reader.line_num, str(exc)))
        except (_RowError, csv.Error) as exc:  # the header, or the file stops being CSV
            raise BadRowsError(path, [*bad, BadRow(max(reader.line_num, 1), str(exc))]) from None
    if bad and not skip_bad:
        raise BadRowsError(path, bad)
    return ParsedCsv(transfers, bad)


def _native_parser(header: list[str] | None) -> RowParser:
    """Rows of ``tx_id,payer,payee,amount,ts[,currency,channel,is_laundering]``, columns by name."""
    names = [name.strip() for name in header or []]
    missing = [name for name in NATIVE_REQUIRED if name not in names]
    if missing:
        raise _RowError(f"header lacks {', '.join(missing)}; expected {','.join(NATIVE_HEADER)}")
    column = {name: names.index(name) for name in NATIVE_HEADER if name in names}

    def parse(fields: list[str], line: int) -> Transfer:
        _check_width(fields, len(names))
        value = {name: fields[i].strip() for name, i in column.items()}
        return Transfer(
            tx_id=_non_empty(value, "tx_id"),
            payer=_non_empty(value, "payer"),
            payee=_non_empty(value, "payee"),
            amount=_amount(value, "amount"),
            ts=_epoch_seconds(value, "ts"),
            currency=value.get("currency") or None,
            channel=value.get("channel") or None,
            is_laundering=_flag(value, "is_laundering"),
        )

    return parse


def _amlworld_parser(header: list[str] | None) -> RowParser:
    """Rows of the IBM AMLworld CSV (``HI-Small_Trans.csv`` and friends), columns by position.

    An account is ``"{bank}:{account}"`` because account numbers repeat across banks; the amount
    is Amount Paid in the Payment Currency; the channel is the Payment Format; timestamps are UTC.
    The file has no transaction id, so ``tx_id`` is ``AML{line}``, the row's line number: stable
    for one file, so reloading it is idempotent, but two different files share ids, so load
    only one AMLworld file into a graph (use ``--replace``).
    """
    names = [name.strip() for name in header or []]
    if names[4:5] == ["Account"]:
        names[4] = "Account.1"
    if tuple(names) != AMLWORLD_COLUMNS:
        raise _RowError(f"header is not the AMLworld header {','.join(AMLWORLD_COLUMNS)}")

    def parse(fields: list[str], line: int) -> Transfer:
        _check_width(fields, len(names))
        value = dict(zip(AMLWORLD_COLUMNS, (field.strip() for field in fields), strict=True))
        return Transfer(
            tx_id=f"AML{line}",
            payer=f"{_non_empty(value, 'From Bank')}:{_non_empty(value, 'Account')}",
            payee=f"{_non_empty(value, 'To Bank')}:{_non_empty(value, 'Account.1')}",
            amount=_amount(value, "Amount Paid"),
            ts=_aml_timestamp(value["Timestamp"]),
            currency=value["Payment Currency"] or None,
            channel=value["Payment Format"] or None,
            is_laundering=_flag(value, "Is Laundering"),
        )

    return parse


_PARSERS: dict[str, Callable[[list[str] | None], RowParser]] = {
    "native": _native_parser,
    "amlworld": _amlworld_parser,
}


def _check_width(fields: list[str], width: int) -> None:
    if len(fields) != width:
        raise _RowError(f"expected {width} fields, found {len(fields)}")


def _non_empty(value: dict[str, str], name: str) -> str:
    if not value[name]:
        raise _RowError(f"{name} is empty")
    return value[name]


def _amount(value: dict[str, str], name: str) -> float:
    text = value[name]
    try:
        amount = float(text)
    except ValueError:
        raise _RowError(f"{name} {text!r} is not a number") from None
    if not math.isfinite(amount) or amount < 0:
        raise _RowError(f"{name} {text!r} must be a finite number >= 0")
    return amount


def _epoch_seconds(value: dict[str, str], name: str) -> int:
    text = value[name]
    if not _INTEGER.fullmatch(text):
        raise _RowError(f"{name} {text!r} is not an integer (seconds since the Unix epoch)")
    return int(text)


def _flag(value: dict[str, str], name: str) -> bool | None:
    text = value.get(name, "")
    if text not in ("", "0", "1"):
        raise _RowError(f"{name} {text!r} must be 0 or 1")
    return None if text == "" else text == "1"


@lru_cache(maxsize=65_536)
def _aml_timestamp(text: str) -> int:
    """Epoch seconds of a ``2022/09/01 00:20`` UTC timestamp; cached, as a file repeats each minute."""
    try:
        return int(datetime.strptime(text, AMLWORLD_TIME_FORMAT).replace(tzinfo=UTC).timestamp())
    except ValueError:
        raise _RowError(f"Timestamp {text!r} is not YYYY/MM/DD HH:MM") from None


def _describe(bad: list[BadRow] | tuple[BadRow, ...]) -> str:
    """The first :data:`MAX_LISTED` bad rows, one per line, and how many more there are."""
    lines = [f"  {row}" for row in bad[:MAX_LISTED]]
    if len(bad) > MAX_LISTED:
        lines.append(f"  ... and {len(bad) - MAX_LISTED} more")
    return "\n".join(lines)
