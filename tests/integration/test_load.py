"""fx load against the real Neo4j of the local stack: counts match the file, bad files write nothing.

Each test loads, with ``replace``, exactly what it asserts on, since other tests share the database.
``settings`` and ``neo4j_driver`` come from ``conftest.py``.
"""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from fx_workers.engine.graph import Cypher
from fx_workers.tools.generate import write_csv
from fx_workers.tools.load import BadRowsError, load_csv

if TYPE_CHECKING:
    from neo4j import Driver

    from fx_workers.config import Settings

pytestmark = pytest.mark.integration

COUNTS = (
    "CALL () {{ MATCH (a:{A}) RETURN count(a) AS accounts }} "
    "CALL () {{ MATCH ()-[t:{T}]->() RETURN count(t) AS transfers, count(DISTINCT t.{tx}) AS tx_ids, "
    "sum(t.{amount}) AS amount, sum(t.{ts}) AS ts }} "
    "RETURN accounts, transfers, tx_ids, amount, ts"
)


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("load") / "g.csv"
    write_csv(path, transactions=2000, seed=21)
    return path


def query(driver: Driver, settings: Settings, template: str, **params: object) -> list[dict]:
    """Rows of a query whose names (``{A}``, ``{T}``, ...) come from the graph model."""
    cypher = Cypher(settings.graph).render(template)
    records, _, _ = driver.execute_query(cypher, params, database_=settings.neo4j.database)
    return [dict(record) for record in records]


def graph_counts(driver: Driver, settings: Settings) -> dict[str, float]:
    return query(driver, settings, COUNTS)[0]


def file_counts(path: Path) -> dict[str, float]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return {
        "accounts": len({r["payer"] for r in rows} | {r["payee"] for r in rows}),
        "transfers": len(rows),
        "tx_ids": len(rows),
        "amount": math.fsum(float(r["amount"]) for r in rows),
        "ts": sum(int(r["ts"]) for r in rows),
    }


def assert_graph_holds(driver: Driver, settings: Settings, path: Path) -> None:
    assert graph_counts(driver, settings) == pytest.approx(file_counts(path), rel=1e-12)


def test_counts_in_neo4j_match_the_file(settings: Settings, neo4j_driver: Driver, generated: Path) -> None:
    summary = load_csv(generated, settings, replace=True)
    assert_graph_holds(neo4j_driver, settings, generated)
    expected = file_counts(generated)
    assert (summary.accounts, summary.transfers, summary.skipped) == (expected["accounts"], 2000, ())


def test_properties_and_constraints(settings: Settings, neo4j_driver: Driver, generated: Path) -> None:
    load_csv(generated, settings, replace=True)
    with generated.open(newline="") as f:
        first = next(csv.DictReader(f))
    [transfer] = query(
        neo4j_driver,
        settings,
        "MATCH (p:{A})-[t:{T} {{{tx}: $tx}}]->(q:{A}) RETURN p.{id} AS payer, q.{id} AS payee, t.{amount} AS amount, "
        "t.{ts} AS ts, t.currency AS currency, t.channel AS channel, t.is_laundering AS flag",
        tx=first["tx_id"],
    )
    assert transfer == {
        "payer": first["payer"],
        "payee": first["payee"],
        "amount": float(first["amount"]),
        "ts": int(first["ts"]),
        "currency": first["currency"],
        "channel": first["channel"],
        "flag": first["is_laundering"] == "1",
    }
    rows = query(neo4j_driver, settings, "SHOW CONSTRAINTS YIELD type, labelsOrTypes, properties")
    constraints = {(r["type"], *r["labelsOrTypes"], *r["properties"]) for r in rows}
    model = settings.graph
    assert ("UNIQUENESS", model.account_label, model.id_property) in constraints
    assert ("RELATIONSHIP_UNIQUENESS", model.transfer_type, model.tx_id_property) in constraints


def test_reloading_the_same_file_changes_nothing(settings: Settings, neo4j_driver: Driver, generated: Path) -> None:
    load_csv(generated, settings, replace=True)
    load_csv(generated, settings)
    assert_graph_holds(neo4j_driver, settings, generated)


def test_replace_leaves_only_the_new_file(
    settings: Settings, neo4j_driver: Driver, generated: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other.csv"
    write_csv(other, transactions=300, seed=22)
    load_csv(generated, settings, replace=True)
    load_csv(other, settings, replace=True)
    assert_graph_holds(neo4j_driver, settings, other)


def test_a_malformed_row_is_refused_and_nothing_is_written(
    settings: Settings, neo4j_driver: Driver, generated: Path, tmp_path: Path
) -> None:
    lines = generated.read_text().splitlines(keepends=True)
    lines[16] = lines[16].replace(lines[16].split(",")[3], "abc", 1)  # line 17: amount
    bad = tmp_path / "bad.csv"
    bad.write_text("".join(lines[:1000]))
    load_csv(generated, settings, replace=True)

    with pytest.raises(BadRowsError, match="line 17: amount 'abc' is not a number"):
        load_csv(bad, settings, replace=True)
    assert_graph_holds(neo4j_driver, settings, generated)

    fx = Path(sys.executable).parent / "fx"
    result = subprocess.run([fx, "load", str(bad), "--replace"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "line 17: amount 'abc' is not a number" in result.stderr
    assert_graph_holds(neo4j_driver, settings, generated)


def test_skip_bad_loads_the_rest(settings: Settings, neo4j_driver: Driver, tmp_path: Path) -> None:
    path = tmp_path / "some_bad.csv"
    path.write_text("tx_id,payer,payee,amount,ts\nT1,A,B,1.5,10\nT2,A,B,oops,20\nT3,B,B,2,30\n")
    summary = load_csv(path, settings, replace=True, skip_bad=True)
    assert [str(row) for row in summary.skipped] == ["line 3: amount 'oops' is not a number"]
    assert graph_counts(neo4j_driver, settings) == {
        "accounts": 2,
        "transfers": 2,
        "tx_ids": 2,
        "amount": 3.5,
        "ts": 40,
    }


def test_amlworld_accounts_are_bank_and_account(settings: Settings, neo4j_driver: Driver, tmp_path: Path) -> None:
    path = tmp_path / "aml.csv"
    path.write_text(
        "Timestamp,From Bank,Account,To Bank,Account,Amount Received,Receiving Currency,"
        "Amount Paid,Payment Currency,Payment Format,Is Laundering\n"
        "2022/09/01 00:20,010,8000EBD30,011,8000EBD30,10,US Dollar,10,US Dollar,ACH,0\n"
        "2022/09/01 00:21,011,8000EBD30,010,8000EBD30,9,US Dollar,9,US Dollar,Wire,1\n"
    )
    load_csv(path, settings, fmt="amlworld", replace=True)
    rows = query(
        neo4j_driver, settings, "MATCH (p:{A})-[t:{T}]->(q:{A}) RETURN p.{id}, q.{id}, t.{tx} AS tx ORDER BY tx"
    )
    assert [tuple(r.values()) for r in rows] == [
        ("010:8000EBD30", "011:8000EBD30", "AML2"),
        ("011:8000EBD30", "010:8000EBD30", "AML3"),
    ]
