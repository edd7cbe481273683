"""bench.layout: the batches it writes and the table it prints."""

from __future__ import annotations

import struct

import numpy as np

from bench.layout import batches, encode_tagged_le, table


def saved(accounts: int = 2500, transfers: int = 10) -> dict[str, np.ndarray]:
    return {"node_ids": np.array([f"A{i}" for i in range(accounts)]), "node_values": np.ones((accounts, 3)),
            "tx_ids": np.array([f"T{i}" for i in range(transfers)]), "edge_values": np.zeros((transfers, 2))}


def test_each_part_is_written_alone_in_batches_of_a_thousand() -> None:
    nodes, edges = batches(saved(), "nodes"), batches(saved(), "edges")
    assert [len(b.node_ids) for b in nodes] == [1000, 1000, 500] and {len(b.tx_ids) for b in nodes} == {0}
    assert [len(b.tx_ids) for b in edges] == [10] and len(edges[0].node_ids) == 0
    assert nodes[0].edge_values.shape == (0, 2) and edges[0].node_values.shape == (0, 3)


def test_the_table_gives_every_layout_and_the_ratios_of_the_older_ones() -> None:
    def row(layout: str, node: float, edge: float, cpu: float) -> dict:
        return {"layout": layout, "nodes": {"bytes_per_record": node}, "edges": {"bytes_per_record": edge},
                "bytes_per_account": node + 2 * edge, "client_cpu_us_per_record": cpu}

    results = {"graphs": [{"name": None, "transactions": 100_000, "accounts": 10, "transfers": 20,
                           "layouts": [row("hash", 2000, 450, 40.0), row("float64", 600, 200, 2.0),
                                       row("tagged", 400, 130, 2.5), row("varint", 300, 115, 2.0)]}]}
    lines = table(results).splitlines()
    graph = "| 100,000 generated (2.0 transfers/account)"
    assert lines[2] == f"{graph} | hash | 2,000 | 450 | 2,900 | 40.0 |  |  |  |"
    assert lines[3] == f"{graph} | float64 | 600 | 200 | 1,000 | 2.0 | 2.90x, 20.00x |  |  |"
    assert lines[4] == f"{graph} | tagged | 400 | 130 | 660 | 2.5 | 4.39x, 16.00x | 1.52x, 0.80x |  |"
    assert lines[5] == f"{graph} | varint | 300 | 115 | 530 | 2.0 | 5.47x, 20.00x | 1.89x, 1.00x | 1.25x, 1.25x |"


def test_the_tagged_row_writes_the_third_layouts_tagged_le_records() -> None:
    values = np.array([[0.0, 7.0, 300.0, 0.5, -0.0, 2.0**32, 0.0]])
    codes = [0, 1, 2, 3, 3, 3, 0]  # +0.0, uint8, uint32, then float64 for 0.5, -0.0 and 2**32
    header = bytes(sum(code << 2 * j for j, code in enumerate(codes[i : i + 4])) for i in (0, 4))
    assert encode_tagged_le(values).rows() == [header + struct.pack("<BIddd", 7, 300, 0.5, -0.0, 2.0**32)]
