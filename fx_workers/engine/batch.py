"""The arrays that travel between the graph read, the feature engine, messages and sinks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PATTERN_WINDOW = 30 * 86400
"""The longest window of the pattern features (30 days, in seconds): what the batch read fetches."""


@dataclass(frozen=True)
class EdgeArrays:
    """Transfers incident to a batch, one row per (batch account, transfer).

    ``owner`` indexes the batch account the row belongs to; ``other`` is the counterparty's id.
    """

    owner: np.ndarray  # int64
    tx: np.ndarray  # str
    other: np.ndarray  # str
    amount: np.ndarray  # float64
    ts: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.owner)


@dataclass(frozen=True)
class Transfers:
    """Transfers as plain columns, one row each (no owner): the windowed neighbourhood of a batch."""

    payer: np.ndarray  # str
    payee: np.ndarray  # str
    ts: np.ndarray  # int64

    def __len__(self) -> int:
        return len(self.ts)

    @property
    def nbytes(self) -> int:
        return self.payer.nbytes + self.payee.nbytes + self.ts.nbytes

    def touching(self, accounts: np.ndarray) -> Transfers:
        """The transfers whose payer or payee is one of ``accounts``."""
        keep = np.isin(self.payer, accounts) | np.isin(self.payee, accounts)
        return Transfers(self.payer[keep], self.payee[keep], self.ts[keep])


@dataclass(frozen=True)
class Counts:
    """Accounts, sorted by id, with their own out and in transfer counts up to ``as_of``."""

    ids: np.ndarray  # str, sorted
    out: np.ndarray  # int64
    inc: np.ndarray  # int64

    @classmethod
    def of(cls, ids: np.ndarray, out: np.ndarray, inc: np.ndarray) -> Counts:
        order = np.argsort(ids, kind="stable")
        return cls(ids[order], out[order], inc[order])

    @property
    def nbytes(self) -> int:
        return self.ids.nbytes + self.out.nbytes + self.inc.nbytes

    def select(self, ids: np.ndarray) -> Counts | None:
        """The counts of ``ids`` (sorted, distinct), or None when one of them is not here."""
        at = np.searchsorted(self.ids, ids)
        if not (at < len(self.ids)).all() or not np.array_equal(self.ids[at], ids):
            return None
        return Counts(ids, self.out[at], self.inc[at])


@dataclass(frozen=True)
class BatchInput:
    """Everything the features of a batch of accounts need, read from the graph in bulk.

    ``out`` holds each account's outgoing transfers and ``inc`` its incoming ones, both with
    ``ts <= as_of``; a self-transfer appears in both. ``neighbour_*`` give, for every
    counterparty of the batch, its own out and in transfer counts up to ``as_of``. ``window`` holds,
    once each, every transfer of the longest pattern window (``as_of - PATTERN_WINDOW < ts <= as_of``)
    that touches an account which has a transfer of that window with a batch account: the 2-hop
    ball the pattern features need.
    """

    ids: np.ndarray  # str, the batch accounts in request order
    as_of: int
    out: EdgeArrays
    inc: EdgeArrays
    neighbour_ids: np.ndarray  # str
    neighbour_out_count: np.ndarray  # int64
    neighbour_in_count: np.ndarray  # int64
    window: Transfers


@dataclass(frozen=True)
class BatchFeatures:
    """The features of one batch: a row per account and a row per outgoing transfer.

    Columns follow :data:`fx_workers.engine.features.NODE_FEATURES` and ``EDGE_FEATURES``.
    """

    node_ids: np.ndarray  # str, shape (n,)
    node_values: np.ndarray  # float64, shape (n, len(NODE_FEATURES))
    tx_ids: np.ndarray  # str, shape (m,)
    edge_values: np.ndarray  # float64, shape (m, len(EDGE_FEATURES))
