from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from pydantic import SecretStr

from fx_workers.config import Neo4jConfig, Settings
from fx_workers.tools.load import MAX_LISTED, BadRowsError, Transfer, load_csv, read_transfers

if TYPE_CHECKING:
    from pathlib import Path

NATIVE_HEADER = "tx_id,payer,payee,amount,ts,currency,channel,is_laundering\n"
AMLWORLD_HEADER = (
    "Timestamp,From Bank,Account,To Bank,Account,Amount Received,Receiving Currency,"
    "Amount Paid,Payment Currency,Payment Format,Is Laundering\n"
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "in.csv"
    path.write_text(text)
    return path


def test_native_rows_are_typed(tmp_path: Path) -> None:
    path = write(tmp_path, NATIVE_HEADER + "T1,A1,A2,12.50,1700000000,USD,card,0\nT2,A2,A2,0,5,,,1\n")
    assert read_transfers(path).transfers == [
        Transfer("T1", "A1", "A2", 12.5, 1_700_000_000, "USD", "card", False),
        Transfer("T2", "A2", "A2", 0.0, 5, None, None, True),
    ]


def test_native_optional_columns_may_be_absent_and_columns_go_by_name(tmp_path: Path) -> None:
    path = write(tmp_path, "ts,amount,payee,payer,tx_id\n10,1.5,B,A,T1\n\n20,2,A,B,T2\n")
    assert read_transfers(path).transfers == [Transfer("T1", "A", "B", 1.5, 10), Transfer("T2", "B", "A", 2.0, 20)]


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("T9,A1,A2,abc,10,USD,card,0", "amount 'abc' is not a number"),
        ("T9,A1,A2,-1,10,USD,card,0", "amount '-1' must be a finite number >= 0"),
        ("T9,A1,A2,nan,10,USD,card,0", "amount 'nan' must be a finite number >= 0"),
        ("T9,A1,A2,inf,10,USD,card,0", "amount 'inf' must be a finite number >= 0"),
        ("T9,A1,A2,1,1.5,USD,card,0", "ts '1.5' is not an integer"),
        ("T9,A1,A2,1,,USD,card,0", "ts '' is not an integer"),
        ("T9,,A2,1,10,USD,card,0", "payer is empty"),
        (",A1,A2,1,10,USD,card,0", "tx_id is empty"),
        ("T9,A1,A2,1,10,USD,card,yes", "is_laundering 'yes' must be 0 or 1"),
        ("T9,A1,A2,1,10", "expected 8 fields, found 5"),
        ("T1,A1,A2,1,10,USD,card,0", "tx_id 'T1' repeats line 2"),
    ],
)
def test_a_bad_row_is_reported_with_its_line_and_nothing_is_returned(tmp_path: Path, row: str, reason: str) -> None:
    path = write(tmp_path, NATIVE_HEADER + "T1,A1,A2,1,10,USD,card,0\n\n" + row + "\n")
    with pytest.raises(BadRowsError) as caught:
        read_transfers(path)
    assert [bad.line for bad in caught.value.bad] == [4]
    assert caught.value.bad[0].reason.startswith(reason)
    assert f"line 4: {reason}" in str(caught.value)


def test_skip_bad_returns_the_good_rows_and_the_skipped_ones(tmp_path: Path) -> None:
    path = write(tmp_path, NATIVE_HEADER + "T1,A1,A2,abc,10,,,\nT2,A1,A2,3,10,,,\nT3,A1,A2,4,x,,,\n")
    parsed = read_transfers(path, skip_bad=True)
    assert [t.tx_id for t in parsed.transfers] == ["T2"]
    assert [bad.line for bad in parsed.skipped] == [2, 4]


def test_the_message_lists_at_most_twenty_bad_rows_and_counts_the_rest(tmp_path: Path) -> None:
    rows = "".join(f"T{i},A1,A2,oops,10,,,\n" for i in range(MAX_LISTED + 5))
    with pytest.raises(BadRowsError) as caught:
        read_transfers(write(tmp_path, NATIVE_HEADER + rows))
    message = str(caught.value)
    assert len(caught.value.bad) == MAX_LISTED + 5
    assert f"line {MAX_LISTED + 1}: amount 'oops'" in message
    assert f"line {MAX_LISTED + 2}:" not in message
    assert "and 5 more" in message


def test_a_bad_header_is_refused_even_with_skip_bad(tmp_path: Path) -> None:
    path = write(tmp_path, "tx_id,payer,payee,amount\nT1,A1,A2,1\n")
    with pytest.raises(BadRowsError, match="line 1: header lacks ts"):
        read_transfers(path, skip_bad=True)
    with pytest.raises(BadRowsError, match="line 1: header lacks tx_id"):
        read_transfers(write(tmp_path, ""))


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="must be one of"):
        read_transfers(write(tmp_path, NATIVE_HEADER), "parquet")


def test_amlworld_rows(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        AMLWORLD_HEADER
        + "2022/09/01 00:20,010,8000EBD30,010,8000EBD30,3697.34,US Dollar,3697.34,US Dollar,Reinvestment,0\n"
        + "2022/09/01 00:22,03208,8000F4580,001,8000F5340,0.01,US Dollar,0.02,Euro,Cheque,1\n",
    )
    assert read_transfers(path, "amlworld").transfers == [
        Transfer("AML2", "010:8000EBD30", "010:8000EBD30", 3697.34, 1_661_991_600, "US Dollar", "Reinvestment", False),
        Transfer("AML3", "03208:8000F4580", "001:8000F5340", 0.02, 1_661_991_720, "Euro", "Cheque", True),
    ]


def test_amlworld_accepts_the_pandas_header_and_reports_bad_rows(tmp_path: Path) -> None:
    header = AMLWORLD_HEADER.replace("To Bank,Account,", "To Bank,Account.1,")
    path = write(
        tmp_path,
        header
        + "2022-09-01 00:20,010,X,010,Y,1,US Dollar,1,US Dollar,ACH,0\n"
        + "2022/09/01 00:20,010,X,010,,1,US Dollar,abc,US Dollar,ACH,0\n",
    )
    with pytest.raises(BadRowsError) as caught:
        read_transfers(path, "amlworld")
    assert [str(bad) for bad in caught.value.bad] == [
        "line 2: Timestamp '2022-09-01 00:20' is not YYYY/MM/DD HH:MM",
        "line 3: Account.1 is empty",
    ]


def test_amlworld_refuses_another_header(tmp_path: Path) -> None:
    with pytest.raises(BadRowsError, match="line 1: header is not the AMLworld header"):
        read_transfers(write(tmp_path, NATIVE_HEADER), "amlworld")


def test_load_refuses_bad_rows_before_connecting(tmp_path: Path) -> None:
    """Neo4j is unreachable here, so reaching the database would fail differently."""
    nowhere = Settings(neo4j=Neo4jConfig(uri="bolt://127.0.0.1:1", password=SecretStr("unused")))
    path = write(tmp_path, NATIVE_HEADER + "T1,A1,A2,1,10,,,\nT2,A1,A2,abc,10,,,\n")
    with pytest.raises(BadRowsError, match="line 3: amount 'abc' is not a number"):
        load_csv(path, nowhere, replace=True)
