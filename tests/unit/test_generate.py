from __future__ import annotations

import csv
from collections import Counter
from typing import TYPE_CHECKING

import numpy as np
import pytest

from fx_workers.tools.generate import CHANNELS, CURRENCIES, END_TS, WINDOW_SECONDS, _pattern_edges, write_csv
from fx_workers.tools.load import NATIVE_HEADER, read_transfers

if TYPE_CHECKING:
    from pathlib import Path


def rows_of(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("generate") / "sample.csv"
    write_csv(path, transactions=2000, seed=11)
    return path


def test_same_seed_gives_the_same_bytes(tmp_path: Path) -> None:
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    write_csv(first, transactions=300, seed=5)
    write_csv(second, transactions=300, seed=5)
    assert first.read_bytes() == second.read_bytes()


def test_different_seeds_differ(tmp_path: Path) -> None:
    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    write_csv(first, transactions=300, seed=5)
    write_csv(second, transactions=300, seed=6)
    assert first.read_bytes() != second.read_bytes()


@pytest.mark.parametrize("n", [1, 2, 7, 39, 40, 41, 500, 2001])
def test_exactly_n_rows_with_the_native_header(tmp_path: Path, n: int) -> None:
    path = tmp_path / "out.csv"
    summary = write_csv(path, transactions=n, seed=1)
    assert path.read_text().splitlines()[0] == ",".join(NATIVE_HEADER)
    assert len(rows_of(path)) == n == summary.rows


def test_summary_matches_the_file(sample: Path, tmp_path: Path) -> None:
    summary = write_csv(tmp_path / "again.csv", transactions=2000, seed=11)
    rows = rows_of(sample)
    assert summary.accounts == len({r["payer"] for r in rows} | {r["payee"] for r in rows})
    assert summary.laundering_rows == sum(r["is_laundering"] == "1" for r in rows)
    assert "2000 transactions" in str(summary)


def test_columns_are_valid(sample: Path) -> None:
    rows = rows_of(sample)
    assert not read_transfers(sample).skipped  # the loader accepts every row
    assert [r["tx_id"] for r in rows] == [f"T{i:07d}" for i in range(1, 2001)]
    assert all(len(r["payer"]) == len(r["payee"]) == 7 and r["payer"][0] == "A" for r in rows)
    assert all(r["amount"] == f"{float(r['amount']):.2f}" and float(r["amount"]) > 0 for r in rows)
    ts = [int(r["ts"]) for r in rows]
    assert ts == sorted(ts)
    assert ts[0] >= END_TS - WINDOW_SECONDS and ts[-1] < END_TS
    assert {r["currency"] for r in rows} <= set(CURRENCIES)
    assert {r["channel"] for r in rows} <= set(CHANNELS)
    assert {r["is_laundering"] for r in rows} == {"0", "1"}


def test_realistic_features_are_present(sample: Path) -> None:
    rows = rows_of(sample)
    amounts = [float(r["amount"]) for r in rows]
    pairs = Counter((r["payer"], r["payee"]) for r in rows)
    payers = Counter(r["payer"] for r in rows)
    assert any(r["payer"] == r["payee"] for r in rows)
    assert pairs.most_common(1)[0][1] >= 5
    assert sum(a % 100 == 0 for a in amounts) >= 50
    assert any(9000 <= a < 10000 for a in amounts)
    assert 20 <= sum(r["is_laundering"] == "1" for r in rows) <= 100
    assert payers.most_common(1)[0][1] >= 10 * np.median(list(payers.values()))  # heavy tail


def test_rhythm_has_quiet_nights_and_weekends(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    write_csv(path, transactions=20_000, seed=3)
    ts = np.array([int(r["ts"]) for r in rows_of(path)])
    per_hour = np.bincount(ts % 86_400 // 3600, minlength=24)
    assert per_hour[1:5].sum() * 5 < per_hour[10:14].sum()
    day = ts // 86_400
    weekday = (day + 3) % 7
    per_day = Counter(day.tolist())
    weekend = np.mean([c for d, c in per_day.items() if (d + 3) % 7 >= 5])
    workday = np.mean([c for d, c in per_day.items() if (d + 3) % 7 < 5])
    assert weekend < 0.7 * workday
    assert set(weekday.tolist()) == set(range(7))


def test_accounts_option_bounds_the_pool(tmp_path: Path) -> None:
    path = tmp_path / "few.csv"
    summary = write_csv(path, transactions=1000, seed=2, accounts=30)
    ids = {r["payer"] for r in rows_of(path)} | {r["payee"] for r in rows_of(path)}
    assert summary.accounts == len(ids) <= 30
    assert all(int(i[1:]) < 30 for i in ids)


def test_rejects_nonsense_sizes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        write_csv(tmp_path / "x.csv", transactions=0, seed=1)
    with pytest.raises(ValueError, match="at least 1"):
        write_csv(tmp_path / "x.csv", transactions=10, seed=1, accounts=0)


@pytest.mark.parametrize(
    ("kind", "payer", "payee"),
    [
        ("fan_out", [0, 0, 0], [1, 2, 3]),
        ("fan_in", [1, 2, 3], [0, 0, 0]),
        ("cycle", [0, 1, 2, 3], [1, 2, 3, 0]),
        ("scatter_gather", [0, 0, 1, 2], [1, 2, 3, 3]),
    ],
)
def test_pattern_edges(kind: str, payer: list[int], payee: list[int]) -> None:
    got_payer, got_payee = _pattern_edges(kind, np.arange(4))
    assert got_payer.tolist() == payer
    assert got_payee.tolist() == payee
