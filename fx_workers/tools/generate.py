"""Synthetic transaction graphs in the native CSV format, for demos, tests and benchmarks.

The shape mimics real payment data closely enough to exercise the features: a few very busy
accounts and many quiet ones, daily and weekly rhythm, log-normal amounts with round and
just-below-reporting-threshold values, self-transfers, recurring pairs, and a few labelled
laundering patterns. Everything is drawn from one seeded numpy ``Generator`` and the time window
ends at a fixed instant, so a seed always gives the same file, byte for byte.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from fx_workers.tools.load import NATIVE_HEADER

if TYPE_CHECKING:
    from pathlib import Path

END_TS = 1_735_689_600
"""2025-01-01T00:00:00Z, a fixed end so that files do not depend on when they were made."""
WINDOW_SECONDS = 30 * 86_400
CURRENCIES = ("USD", "EUR", "GBP")
CURRENCY_WEIGHTS = (0.75, 0.17, 0.08)
CHANNELS = ("card", "ach", "wire", "cheque", "cash")
CHANNEL_WEIGHTS = (0.45, 0.25, 0.12, 0.08, 0.10)
LAUNDERING_CHANNELS = (1, 2)
"""ach and wire: laundering moves money between accounts, not over the counter."""
HOURLY_ACTIVITY = np.array(
    [1, 0.6, 0.4, 0.3, 0.3, 0.5, 1.2, 2.5, 4, 5, 5.5, 5.5, 5, 5, 4.8, 4.6, 4.8, 5.2, 5, 4.2, 3.4, 2.6, 2, 1.4]
)
"""Relative activity per UTC hour: quiet at night, peaks late morning and early evening."""
WEEKEND_ACTIVITY = 0.45
SELF_TRANSFER_SHARE = 0.01
RECURRING_PAIR_SHARE = 0.4
ROUND_AMOUNT_SHARE = 0.07
BELOW_THRESHOLD_SHARE = 0.01
PATTERNS = ("fan_out", "fan_in", "cycle", "scatter_gather")


@dataclass(frozen=True)
class GenerateSummary:
    """What :func:`write_csv` wrote."""

    rows: int
    accounts: int
    laundering_rows: int
    file: Path

    def __str__(self) -> str:
        return (
            f"wrote {self.rows} transactions between {self.accounts} accounts "
            f"({self.laundering_rows} laundering) to {self.file}"
        )

    def __rich__(self) -> object:
        from rich.text import Text

        return Text(str(self))


@dataclass(frozen=True)
class _Transfers:
    """Columns of generated transfers; accounts and channels as integer codes."""

    payer: np.ndarray
    payee: np.ndarray
    amount: np.ndarray
    ts: np.ndarray
    channel: np.ndarray
    laundering: np.ndarray

    @staticmethod
    def concat(parts: list[_Transfers]) -> _Transfers:
        columns = zip(*(vars(part).values() for part in parts), strict=True)
        return _Transfers(*(np.concatenate(column) for column in columns))

    def take(self, order: np.ndarray) -> _Transfers:
        return _Transfers(*(column[order] for column in vars(self).values()))


def write_csv(path: Path, *, transactions: int, seed: int, accounts: int | None = None) -> GenerateSummary:
    """Write ``transactions`` synthetic transfers, sorted by time, as native CSV.

    :param path: the file to write (its folder is created)
    :param transactions: exact number of rows
    :param seed: the same seed gives the same file
    :param accounts: size of the account pool, defaults to ``transactions // 8`` (at least 2);
        the heavy tail leaves some accounts of the pool without transfers
    :raises ValueError: when ``transactions`` or ``accounts`` is below 1
    """
    n_accounts = max(2, transactions // 8) if accounts is None else accounts
    if transactions < 1 or n_accounts < 1:
        raise ValueError(f"transactions and accounts must be at least 1. Got {transactions} and {n_accounts}")
    rng = np.random.default_rng(seed)
    laundering = _laundering(rng, n_accounts, budget=min(transactions // 4, max(40, transactions // 100)))
    normal = _normal(rng, n_accounts, transactions - sum(part.payer.size for part in laundering))
    rows = _Transfers.concat([normal, *laundering])
    rows = rows.take(np.argsort(rows.ts, kind="stable"))
    home_currency = rng.choice(len(CURRENCIES), size=n_accounts, p=CURRENCY_WEIGHTS)

    width = max(6, len(str(n_accounts - 1)))
    account_ids = np.array([f"A{i:0{width}d}" for i in range(n_accounts)])
    width = max(7, len(str(transactions)))
    columns = (
        [f"T{i:0{width}d}" for i in range(1, transactions + 1)],
        account_ids[rows.payer].tolist(),
        account_ids[rows.payee].tolist(),
        [f"{a:.2f}" for a in rows.amount.tolist()],
        rows.ts.tolist(),
        np.array(CURRENCIES)[home_currency[rows.payer]].tolist(),
        np.array(CHANNELS)[rows.channel].tolist(),
        rows.laundering.astype(np.int8).tolist(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(NATIVE_HEADER)
        writer.writerows(zip(*columns, strict=True))
    return GenerateSummary(
        rows=transactions,
        accounts=np.count_nonzero(np.bincount(np.concatenate([rows.payer, rows.payee]))),
        laundering_rows=int(rows.laundering.sum()),
        file=path,
    )


def _normal(rng: np.random.Generator, n_accounts: int, size: int) -> _Transfers:
    """Everyday transfers: heavy-tailed activity, recurring pairs, a few self-transfers."""
    activity = rng.pareto(1.3, n_accounts) + 1
    payer_p = _normalised(activity * rng.lognormal(0, 0.75, n_accounts))
    payee_p = _normalised(activity * rng.lognormal(0, 0.75, n_accounts))
    payer = rng.choice(n_accounts, size=size, p=payer_p)
    payee = rng.choice(n_accounts, size=size, p=payee_p)

    # Some rows repeat an established relationship (rent, payroll, a regular supplier).
    n_pairs = max(1, size // 6)
    pair_payer = rng.choice(n_accounts, size=n_pairs, p=payer_p)
    pair_payee = rng.choice(n_accounts, size=n_pairs, p=payee_p)
    recurring = rng.random(size) < RECURRING_PAIR_SHARE
    pair = rng.choice(n_pairs, size=int(recurring.sum()), p=_normalised(rng.pareto(2.0, n_pairs) + 1))
    payer[recurring], payee[recurring] = pair_payer[pair], pair_payee[pair]
    own = rng.random(size) < SELF_TRANSFER_SHARE
    payee[own] = payer[own]

    return _Transfers(
        payer=payer,
        payee=payee,
        amount=_amounts(rng, size),
        ts=_timestamps(rng, size),
        channel=rng.choice(len(CHANNELS), size=size, p=CHANNEL_WEIGHTS),
        laundering=np.zeros(size, dtype=bool),
    )


def _amounts(rng: np.random.Generator, size: int) -> np.ndarray:
    """Log-normal amounts in cents, some round hundreds and some just below 10 000."""
    amount = np.maximum(np.round(rng.lognormal(np.log(60), 1.2, size), 2), 0.01)
    kind = rng.random(size)
    round_ = kind < ROUND_AMOUNT_SHARE
    amount[round_] = rng.integers(1, 51, int(round_.sum())) * 100.0
    below = (kind >= ROUND_AMOUNT_SHARE) & (kind < ROUND_AMOUNT_SHARE + BELOW_THRESHOLD_SHARE)
    amount[below] = np.round(rng.uniform(9000, 9999.99, int(below.sum())), 2)
    return amount


def _timestamps(rng: np.random.Generator, size: int) -> np.ndarray:
    """Epoch seconds in the window, drawn per (day, hour) slot: fewer at night and at weekends."""
    start = END_TS - WINDOW_SECONDS
    days = np.arange(WINDOW_SECONDS // 86_400)
    weekday = (start // 86_400 + days + 3) % 7  # 1970-01-01 was a Thursday; Monday is 0
    day_activity = np.where(weekday >= 5, WEEKEND_ACTIVITY, 1.0)
    slot_p = _normalised(np.outer(day_activity, HOURLY_ACTIVITY).ravel())
    slot = rng.choice(slot_p.size, size=size, p=slot_p)
    return start + slot * 3600 + rng.integers(0, 3600, size)


def _laundering(rng: np.random.Generator, n_accounts: int, budget: int) -> list[_Transfers]:
    """Labelled patterns, one part each, added until the next one would exceed ``budget`` rows."""
    parts: list[_Transfers] = []
    used = 0
    while n_accounts >= 4:
        nodes = rng.choice(n_accounts, size=rng.integers(4, min(10, n_accounts) + 1), replace=False)
        payer, payee = _pattern_edges(str(rng.choice(PATTERNS)), nodes)
        if used + payer.size > budget:
            break
        used += payer.size
        # A pattern moves one sum in a burst of hours, each hop keeping most of it.
        base = rng.lognormal(np.log(4000), 0.6)
        hours = np.cumsum(rng.exponential(4 * 3600, payer.size)).astype(np.int64)
        first = rng.integers(END_TS - WINDOW_SECONDS, END_TS - 4 * 86_400)
        parts.append(
            _Transfers(
                payer=payer,
                payee=payee,
                amount=np.round(base * rng.uniform(0.9, 1.0, payer.size), 2),
                ts=np.minimum(first + hours, END_TS - 1),
                channel=rng.choice(LAUNDERING_CHANNELS, size=payer.size),
                laundering=np.ones(payer.size, dtype=bool),
            )
        )
    return parts


def _pattern_edges(kind: str, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Payer and payee codes, in the order the money moves, for one pattern over ``nodes``."""
    head, rest = nodes[0], nodes[1:]
    if kind == "fan_out":
        return np.full(rest.size, head), rest
    if kind == "fan_in":
        return rest, np.full(rest.size, head)
    if kind == "cycle":
        return nodes, np.roll(nodes, -1)
    mules, sink = rest[:-1], rest[-1]  # scatter_gather: head -> mules -> sink
    payer = np.concatenate([np.full(mules.size, head), mules])
    return payer, np.concatenate([mules, np.full(mules.size, sink)])


def _normalised(weights: np.ndarray) -> np.ndarray:
    return weights / weights.sum()
