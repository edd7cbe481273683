"""The arrays that travel between the graph read, the feature engine, messages and sinks."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

PATTERN_WINDOW = 30 * 86400
"""The longest window of the pattern features (30 days, in seconds): what the batch read fetches."""


def packed_ids(ids: np.ndarray) -> np.ndarray | None:
    """Each id as one uint64 that orders as the string does, when every id has at most 8 characters below
    U+0100 (as generated and AMLSim ids have); else None. Sorting and lookups then cost an integer's.

    The characters are packed big-endian, zero-padded as numpy pads its strings, so two ids get equal
    numbers exactly when they are equal, whatever their arrays' widths."""
    if ids.dtype.kind != "U" or ids.dtype.itemsize > 32:
        return None
    chars = np.ascontiguousarray(ids).view(np.uint32).reshape(len(ids), ids.dtype.itemsize // 4)
    if chars.size and int(chars.max()) > 255:
        return None
    packed = np.zeros((len(ids), 8), dtype=np.uint8)
    packed[:, :chars.shape[1]] = chars
    return packed.view(">u8").ravel().astype(np.uint64)


def lookup(keys: np.ndarray, want: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For ascending distinct ``keys``: each wanted key's position in them, and whether it is there."""
    if not len(keys):
        return np.zeros(len(want), dtype=np.int64), np.zeros(len(want), dtype=bool)
    at = np.minimum(np.searchsorted(keys, want), len(keys) - 1)
    return at, keys[at] == want


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
        """The columns' bytes, and the packed ids' (16 a transfer) where the ids pack: a run's window keeps both."""
        columns = self.payer.nbytes + self.payee.nbytes + self.ts.nbytes
        return columns if self.packed is None else columns + self.packed[0].nbytes + self.packed[1].nbytes

    @cached_property
    def packed(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The payers and payees as :func:`packed_ids`, when both pack: kept (16 bytes a transfer), as a run's
        window is asked for each batch's ball."""
        payer, payee = packed_ids(self.payer), packed_ids(self.payee)
        return None if payer is None or payee is None else (payer, payee)

    def touching(self, accounts: np.ndarray) -> Transfers:
        """The transfers whose payer or payee is one of ``accounts``."""
        wanted = packed_ids(accounts)
        if self.packed is None or wanted is None:
            keep = np.isin(self.payer, accounts) | np.isin(self.payee, accounts)
        else:
            wanted = np.unique(wanted)
            keep = lookup(wanted, self.packed[0])[1] | lookup(wanted, self.packed[1])[1]
        near = Transfers(self.payer[keep], self.payee[keep], self.ts[keep])
        if self.packed is not None:  # the pattern engine codes the ball's ids from these
            object.__setattr__(near, "packed", (self.packed[0][keep], self.packed[1][keep]))
        return near


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
