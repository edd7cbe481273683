"""Neo4j access: the driver, and bulk reads that return columns as numpy arrays.

Labels, types and property names come from :class:`~fx_workers.config.GraphModel` (validated as
identifiers); every value reaches Neo4j as a query parameter. Every read is a managed read
transaction (``execute_read``): with a ``neo4j://`` URI the driver routes it to a follower or read
replica of a cluster and retries it on a transient error; a batch's queries run in one transaction.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from fx_workers.engine.batch import PATTERN_WINDOW, BatchInput, Counts, EdgeArrays, Transfers

if TYPE_CHECKING:
    from collections.abc import Callable

    from neo4j import Driver, ManagedTransaction, Record

    from fx_workers.config import GraphModel, Neo4jConfig


def open_driver(config: Neo4jConfig, **options: object) -> Driver:
    """A connected driver; the caller closes it (use it as a context manager).

    :param options: more ``GraphDatabase.driver`` settings, such as ``max_transaction_retry_time``
    """
    from neo4j import GraphDatabase

    return GraphDatabase.driver(config.uri, auth=(config.user, config.secret()), **options)


@dataclass(frozen=True)
class Cypher:
    """The queries fx runs, rendered for one graph model."""

    model: GraphModel

    @property
    def _names(self) -> dict[str, str]:
        m = self.model
        return {
            "A": m.account_label,
            "T": m.transfer_type,
            "id": m.id_property,
            "tx": m.tx_id_property,
            "amount": m.amount_property,
            "ts": m.ts_property,
        }

    def render(self, template: str) -> str:
        return template.format(**self._names)

    @property
    def accounts(self) -> str:
        """Every account id with its number of transfers (all of them: a cost estimate for batching,
        read from the degree store without touching a relationship)."""
        return self.render("MATCH (a:{A}) WHERE a.{id} IS NOT NULL "  # collect() skips nulls: keep lists aligned
                           "RETURN collect(a.{id}) AS ids, collect(COUNT {{ (a)-[:{T}]-() }}) AS costs")

    @property
    def transfers_after(self) -> str:
        """One transfer with ``ts > $as_of``, if any (an index seek with the loader's range index)."""
        return self.render("MATCH ()-[t:{T}]->() WHERE t.{ts} > $as_of RETURN t.{tx} AS tx LIMIT 1")

    @property
    def edges(self) -> str:
        """The batch's transfers up to ``$as_of``, as columns, each once: from its payer's side when both ends
        are batch accounts (``outgoing`` tells the side; ``owner`` is the batch account's index in ``$ids``;
        ``broken`` names the accounts of a transfer without tx id, amount or counterparty id)."""
        return self.render(
            "UNWIND range(0, size($ids) - 1) AS i MATCH (a:{A} {{{id}: $ids[i]}})-[t:{T}]-(o:{A}) "
            "WHERE (startNode(t) = a OR NOT coalesce(o.{id} IN $ids, false)) AND t.{ts} <= $as_of "
            "RETURN collect(i) AS owner, collect(startNode(t) = a) AS outgoing, collect(t.{tx}) AS tx, "
            "collect(o.{id}) AS other, collect(t.{amount}) AS amount, collect(t.{ts}) AS ts, "
            "collect(CASE WHEN t.{tx} IS NULL OR t.{amount} IS NULL OR o.{id} IS NULL THEN $ids[i] END) AS broken"
        )

    @property
    def window_size(self) -> str:
        """How many transfers the pattern window holds in the whole graph (a range index count)."""
        return self.render("MATCH ()-[x:{T}]->() WHERE $since < x.{ts} <= $as_of RETURN count(x) AS n")

    @property
    def window_all(self) -> str:
        """Every transfer of the pattern window (a range index seek): cheaper than the ball when the window
        holds fewer transfers than the ball's accounts have in all."""
        return self.render("MATCH (p:{A})-[x:{T}]->(q:{A}) WHERE $since < x.{ts} <= $as_of "
                           "RETURN collect(p.{id}) AS payer, collect(q.{id}) AS payee, collect(x.{ts}) AS ts")

    @property
    def window_ball(self) -> str:
        """Every transfer of the pattern window that touches an account of ``$near``, each once."""
        return self.render(
            "UNWIND $near AS near MATCH (u:{A} {{{id}: near}})-[x:{T}]-(:{A}) WHERE $since < x.{ts} <= $as_of "
            "WITH DISTINCT x "
            "RETURN collect(startNode(x).{id}) AS payer, collect(endNode(x).{id}) AS payee, collect(x.{ts}) AS ts"
        )

    @property
    def account_count(self) -> str:
        """How many accounts the graph holds (the count store)."""
        return self.render("MATCH (a:{A}) RETURN count(a) AS n")

    @property
    def transfer_count(self) -> str:
        """How many transfers the graph holds (the count store)."""
        return self.render("MATCH ()-[t:{T}]->() RETURN count(t) AS n")

    def neighbour_counts(self, *, every_transfer_counts: bool) -> str:
        """The accounts ``$others`` (a batch's counterparties) with their out and in transfer counts up to
        ``$as_of``; when the counts filter on ts, also ``degrees``: the sum of the accounts' degrees (the
        degree store), the relationships the filter went through.

        :param every_transfer_counts: no transfer is after ``$as_of``, so the counts are plain
            degrees, read from the degree store (3.5x faster than filtering each relationship on ts)
        """
        degrees = "" if every_transfer_counts else ", sum(COUNT {{ (u)-[:{T}]-() }}) AS degrees"
        return self._counts("UNWIND $others AS other MATCH (u:{A} {{{id}: other}})", every_transfer_counts, degrees)

    def account_counts(self, *, every_transfer_counts: bool) -> str:
        """Every account with its out and in transfer counts up to ``$as_of`` (as :meth:`neighbour_counts`)."""
        return self._counts("MATCH (u:{A}) WHERE u.{id} IS NOT NULL", every_transfer_counts)

    def _counts(self, match: str, every_transfer_counts: bool, more: str = "") -> str:
        where = "" if every_transfer_counts else " WHERE x.{ts} <= $as_of"
        return self.render(
            f"{match} RETURN collect(u.{{id}}) AS ids, "
            f"collect(COUNT {{{{ (u)-[x:{{T}}]->(){where} }}}}) AS out_count, "
            f"collect(COUNT {{{{ (u)<-[x:{{T}}]-(){where} }}}}) AS in_count{more}"
        )


def as_array(values: list, dtype: type) -> np.ndarray:
    """A driver list as a numpy array (``str`` becomes a unicode array)."""
    if dtype is str:
        return np.array(values, dtype=np.str_) if values else np.array([], dtype="<U1")
    return np.asarray(values, dtype=dtype)


class GraphDataError(ValueError):
    """The graph holds something the model forbids (a missing property); names the account."""


def _edges(row: Record, ids: np.ndarray) -> tuple[EdgeArrays, EdgeArrays]:
    """The batch's transfers, each read once, as its OUT and IN rows: a transfer between two batch accounts
    (a self-transfer too) is an OUT row of its payer and an IN row of its payee."""
    if row["broken"]:
        raise GraphDataError(f"account {row['broken'][0]!r} has a transfer without tx_id, amount or counterparty id")
    owner, outgoing = as_array(row["owner"], np.int64), np.asarray(row["outgoing"], dtype=bool)
    tx, other = as_array(row["tx"], str), as_array(row["other"], str)
    amount, ts = as_array(row["amount"], np.float64), as_array(row["ts"], np.int64)
    order = np.argsort(ids)
    payee = order[np.searchsorted(ids, other, sorter=order).clip(max=max(len(ids) - 1, 0))]
    both = outgoing & (ids[payee] == other)
    incoming = ~outgoing
    out = EdgeArrays(owner[outgoing], tx[outgoing], other[outgoing], amount[outgoing], ts[outgoing])
    inc = EdgeArrays(owner=np.concatenate([owner[incoming], payee[both]]),
                     tx=np.concatenate([tx[incoming], tx[both]]),
                     other=np.concatenate([other[incoming], ids[owner[both]]]),
                     amount=np.concatenate([amount[incoming], amount[both]]),
                     ts=np.concatenate([ts[incoming], ts[both]]))
    return out, inc


@dataclass
class WindowCache:
    """One run's reads, kept between that run's batches in one process (a worker, a local run, a
    verification): its whole pattern window (the ts index read once per run instead of a ball per batch)
    and every account's out and in counts (read once instead of each batch's counterparties' again, which
    count a popular account in nearly every batch), and that a transfer is after its ``as_of`` (once
    known, instead of asked per batch). It holds one run at most (:meth:`bind` drops another run's), and neither a
    window nor counts over ``max_rows`` rows or ``max_bytes``.

    Whether to read every account's counts is a rent-or-buy rule on what each read touches, in accounts
    plus relationships: a batch's counterparties' counts cost their accounts, plus, when the counts filter
    on ts, all their relationships (their degrees, which that read returns); every account's cost the
    graph's accounts, plus, filtered, every relationship from both ends (twice its transfers)."""

    max_rows: int = 2_000_000
    max_bytes: int = 512 * 1024 * 1024
    run: str | None = None
    window: Transfers | None = None
    counts: Counts | None = None
    graph: tuple[int, int] | None = None
    """The graph's accounts and transfers (read once per run): what reading every account's counts costs."""
    spent: int = 0
    """What this run's batches have touched so far reading their counterparties' counts."""
    rented: tuple[int, int] = (0, 0)
    """Counterparties whose counts were read by filtering on ts so far, and their degrees summed."""
    after: tuple[int, bool] | None = None
    """An ``as_of`` of the run and whether some transfer is after it (then the counts filter on ts)."""

    def bind(self, run: str) -> WindowCache:
        """This cache for ``run``'s batches."""
        if run != self.run:
            self.run, self.window, self.counts, self.graph, self.spent = run, None, None, None, 0
            self.rented, self.after = (0, 0), None
        return self

    def transfers_after(self, as_of: int, ask: Callable[[], bool]) -> bool:
        """Whether some transfer is after ``as_of``. A yes is kept for the run (its ``as_of`` is fixed, and
        adding transfers cannot undo it); a no is asked again by each batch, since transfers may still be
        arriving, and a batch that took it on trust would count one after ``as_of`` in its degrees.

        :param ask: asks the graph (an index seek)
        """
        if self.after != (as_of, True):
            self.after = as_of, ask()
        return self.after[1]

    def keep(self, window: Transfers) -> None:
        if window.nbytes <= self.max_bytes:
            self.window = window

    def counts_whole(self, others: int, graph: Callable[[], tuple[int, int]], *, filtered: bool) -> bool:
        """Whether to read every account's counts now, rather than a batch's ``others`` counterparties': once
        what the batches' reads touched, this one's included, is as much as that one would (rent or buy: at
        most about twice the cheaper of the two, however many batches the run brings here). This batch's
        counterparties, when filtered, are taken to have the mean degree of those read so far (the plan
        balances batches by degree).

        :param graph: reads how many accounts and transfers the graph holds (called once per run)
        :param filtered: the counts filter on ts (some transfer is after ``as_of``)
        """
        if self.graph is None:
            self.graph = graph()
        accounts, transfers = self.graph
        read, degrees = self.rented
        this = others * (1 + (degrees / read if filtered and read else 0))
        return accounts <= self.max_rows and self.spent + this >= accounts + (2 * transfers if filtered else 0)

    def rent(self, others: int, degrees: int | None) -> None:
        """Count a batch's read of its ``others`` counterparties' counts, ``degrees`` their degrees summed when
        the read filtered on ts (it went through all their relationships), else None."""
        self.spent += others + (degrees or 0)
        if degrees is not None:
            self.rented = self.rented[0] + others, self.rented[1] + degrees

    def keep_counts(self, counts: Counts) -> None:
        if counts.nbytes <= self.max_bytes:
            self.counts = counts
        else:  # too big to keep: this run's batches read their counterparties'
            self.graph = self.max_rows + 1, 0


def read_batch(driver: Driver, cypher: Cypher, ids: list[str], as_of: int, database: str, *,
               window: bool = True, cache: WindowCache | None = None) -> BatchInput:
    """Everything the features of ``ids`` (distinct account ids) need: a few bulk queries, as columns.

    The batch's transfers are read once each. Its counterparties' counts come from ``cache``'s counts of
    every account when it holds them (read once the batches' reads would have cost as much), else from a
    read of those accounts. The pattern window's ball (every windowed transfer of an account that has one
    with the batch) is read whichever way touches fewer relationships: through those accounts (their
    transfers of all time, filtered), or as the whole window by the ts index, filtered here; with a
    ``cache``, the whole window once for the run, if it fits.

    :param window: read the pattern window (else ``BatchInput.window`` is empty)
    :param cache: the run's :class:`WindowCache`, bound to the run by the caller
    :raises GraphDataError: when a transfer lacks a property of the model
    """
    params = {"ids": ids, "as_of": as_of, "since": as_of - PATTERN_WINDOW}

    def read(tx: ManagedTransaction) -> tuple[EdgeArrays, EdgeArrays, Counts, Transfers]:
        out, inc = _edges(tx.run(cypher.edges, params).single(strict=True), as_array(ids, str))
        nb = _neighbour_counts(tx, cypher, np.unique(np.concatenate([out.other, inc.other])), params, cache)
        if not window:
            return out, inc, nb, Transfers(as_array([], str), as_array([], str), as_array([], np.int64))
        near = np.unique(np.concatenate([e.other[e.ts > params["since"]] for e in (out, inc)]))
        if cache is not None and cache.window is not None:
            return out, inc, nb, cache.window.touching(near)
        at = np.isin(nb.ids, near)
        ball = int(nb.out[at].sum() + nb.inc[at].sum())
        size = tx.run(cypher.window_size, params).single(strict=True)["n"]
        if size <= ball or (cache is not None and size <= cache.max_rows):
            whole = _transfers(tx.run(cypher.window_all, params).single(strict=True))
            if cache is not None:
                cache.keep(whole)
            return out, inc, nb, whole.touching(near)
        return out, inc, nb, _transfers(tx.run(cypher.window_ball, {**params, "near": near.tolist()}).single())

    with driver.session(database=database) as session:
        out, inc, nb, window = session.execute_read(read)
    return BatchInput(ids=as_array(ids, str), as_of=as_of, out=out, inc=inc, neighbour_ids=nb.ids,
                      neighbour_out_count=nb.out, neighbour_in_count=nb.inc, window=window)


def _neighbour_counts(tx: ManagedTransaction, cypher: Cypher, others: np.ndarray, params: dict[str, Any],
                      cache: WindowCache | None) -> Counts:
    """The out and in counts of ``others`` (sorted, distinct), from the run's counts of every account when
    ``cache`` holds them or they are now worth reading, else read for ``others`` alone."""

    def after() -> bool:
        return tx.run(cypher.transfers_after, params).single() is not None

    def graph() -> tuple[int, int]:
        accounts, transfers = (tx.run(query).single(strict=True)["n"] for query in (cypher.account_count,
                                                                                      cypher.transfer_count))
        return accounts, transfers

    every = not (cache.transfers_after(params["as_of"], after) if cache is not None else after())
    if cache is not None and cache.counts is None and cache.counts_whole(len(others), graph, filtered=not every):
        whole = tx.run(cypher.account_counts(every_transfer_counts=every), params).single(strict=True)
        cache.keep_counts(_counts(whole))
    if cache is not None and cache.counts is not None and (kept := cache.counts.select(others)) is not None:
        return kept
    result = tx.run(cypher.neighbour_counts(every_transfer_counts=every), {**params, "others": others.tolist()})
    row = result.single(strict=True)
    if cache is not None:
        cache.rent(len(others), None if every else row["degrees"])
    return _counts(row)


def _counts(row: Record) -> Counts:
    return Counts.of(as_array(row["ids"], str), as_array(row["out_count"], np.int64),
                     as_array(row["in_count"], np.int64))


def _transfers(record: Record) -> Transfers:
    if not len(record["payer"]) == len(record["payee"]) == len(record["ts"]):
        raise GraphDataError("a transfer near the batch has no ts, or an account without an id")
    return Transfers(payer=as_array(record["payer"], str), payee=as_array(record["payee"], str),
                     ts=as_array(record["ts"], np.int64))


def read_accounts(driver: Driver, cypher: Cypher, database: str) -> tuple[np.ndarray, np.ndarray]:
    """Every account id, sorted, with its transfer count (the cost of its batch)."""
    with driver.session(database=database) as session:
        row = session.execute_read(lambda tx: tx.run(cypher.accounts).single(strict=True))
    ids, costs = as_array(row["ids"], str), as_array(row["costs"], np.int64)
    order = np.argsort(ids, kind="stable")
    return ids[order], costs[order]
