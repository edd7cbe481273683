"""Test support: random transfer graphs, and the batch arrays the Cypher reads would return."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from fx_workers.engine.batch import PATTERN_WINDOW, BatchInput, EdgeArrays, Transfers
from tests.reference import Transfer

AS_OF = 1_700_000_000
ACCOUNTS = [f"a{i}" for i in range(7)]
AMOUNTS = st.one_of(
    st.sampled_from([0.0, 100.0, 200.0, 9000.0, 9999.99, 10000.0, 0.01]),
    st.integers(0, 2_000_000).map(lambda cents: cents / 100),
)
TIMESTAMPS = st.one_of(
    st.sampled_from([AS_OF, AS_OF - 3600, AS_OF - 86400, AS_OF - 86401, AS_OF + 1, AS_OF - 604800,
                     AS_OF - 604799, AS_OF - PATTERN_WINDOW, AS_OF - PATTERN_WINDOW + 1]),
    st.integers(AS_OF - 35 * 86400, AS_OF + 86400),
)


@st.composite
def transfer_graphs(draw: st.DrawFn, max_transfers: int = 40) -> list[Transfer]:
    """Graphs with self-transfers, parallel transfers, zero amounts, equal timestamps and
    transfers after ``AS_OF`` (so some accounts have activity only in the future)."""
    rows = draw(st.lists(st.tuples(st.sampled_from(ACCOUNTS), st.sampled_from(ACCOUNTS), AMOUNTS,
                                   TIMESTAMPS), max_size=max_transfers))
    return [Transfer(f"t{i:03d}", p, q, a, ts) for i, (p, q, a, ts) in enumerate(rows)]


def _edges(rows: list[tuple[int, Transfer, str]]) -> EdgeArrays:
    return EdgeArrays(
        owner=np.array([i for i, _, _ in rows], dtype=np.int64),
        tx=np.array([t.tx_id for _, t, _ in rows], dtype=np.str_),
        other=np.array([o for _, _, o in rows], dtype=np.str_),
        amount=np.array([t.amount for _, t, _ in rows], dtype=np.float64),
        ts=np.array([t.ts for _, t, _ in rows], dtype=np.int64),
    )


def batch_input(transfers: list[Transfer], ids: list[str], as_of: int) -> BatchInput:
    """What :mod:`fx_workers.engine.graph`'s bulk reads return for ``ids``, built in memory."""
    visible = [t for t in transfers if t.ts <= as_of]
    out = [(i, t, t.payee) for i, v in enumerate(ids) for t in visible if t.payer == v]
    inc = [(i, t, t.payer) for i, v in enumerate(ids) for t in visible if t.payee == v]
    neighbours = sorted({o for _, _, o in out + inc})
    since = as_of - PATTERN_WINDOW
    recent = [t for t in visible if t.ts > since]
    near = {t.payee for t in recent if t.payer in ids} | {t.payer for t in recent if t.payee in ids}
    window = [t for t in recent if t.payer in near or t.payee in near]
    return BatchInput(
        ids=np.array(ids, dtype=np.str_),
        as_of=as_of,
        out=_edges(out),
        inc=_edges(inc),
        neighbour_ids=np.array(neighbours, dtype=np.str_),
        neighbour_out_count=np.array([sum(t.payer == u for t in visible) for u in neighbours], dtype=np.int64),
        neighbour_in_count=np.array([sum(t.payee == u for t in visible) for u in neighbours], dtype=np.int64),
        window=Transfers(payer=np.array([t.payer for t in window], dtype=np.str_),
                         payee=np.array([t.payee for t in window], dtype=np.str_),
                         ts=np.array([t.ts for t in window], dtype=np.int64)),
    )
