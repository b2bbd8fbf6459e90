"""The Native encoder: the bytes ClickHouse expects, checked against the real engine."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from appliance.flowenricher.batch import DictColumn, FlowBatch, ListColumn
from appliance.flowenricher.columns import COLUMNS, NAMES
from appliance.flowenricher.storage.embedded import EmbeddedStore
from appliance.flowenricher.storage.native import encode_block, varint
from appliance.flowenricher.storage.settings import StoreSettings


def test_varint_is_leb128() -> None:
    assert varint(0) == b"\x00"
    assert varint(127) == b"\x7f"
    assert varint(128) == b"\x80\x01"
    assert varint(300) == b"\xac\x02"


def test_block_header_names_set_columns_with_their_types() -> None:
    batch = FlowBatch(2, {"bytes": np.array([1, 2], np.uint64), "proto": np.array([6, 17], np.uint8)})
    block = encode_block(batch)
    # columns, rows, then "proto" before "bytes" (COLUMNS order), each name + type + data
    assert block[:2] == b"\x02\x02"
    proto = b"\x05proto\x05UInt8\x06\x11"
    assert block[2 : 2 + len(proto)] == proto
    assert block[2 + len(proto) :] == b"\x05bytes\x06UInt64" + np.array([1, 2], "<u8").tobytes()


def test_all_columns_on_request() -> None:
    block = encode_block(FlowBatch(1), NAMES)
    assert block[:1] == varint(len(COLUMNS))


def test_low_cardinality_index_width_follows_dictionary_size() -> None:
    values = [f"if{i}" for i in range(300)]  # > 256 keys: UInt16 indexes
    batch = FlowBatch(3, {"input_interface_name": DictColumn(np.array([0, 299, 5], np.uint32), values)})
    block = encode_block(batch)
    header = b"\x01\x03\x14input_interface_name\x16LowCardinality(String)"
    assert block.startswith(header)
    version, flags, keys = np.frombuffer(block[len(header) : len(header) + 24], "<u8")
    assert (version, flags & 0xFF, flags >> 8, keys) == (1, 1, 0b110, 300)
    assert block.endswith(np.array([3], "<u8").tobytes() + np.array([0, 299, 5], "<u2").tobytes())


def test_encoded_block_reads_back_through_chdb(tmp_path: Path) -> None:
    """Edge cases the sample batches do not hit: 65536+ dictionary keys (UInt32
    indexes), empty strings, a ListColumn cut out of a bigger one (offsets not from 0)."""
    n = 4
    big = [f"name-{i}" for i in range(70_000)]
    paths = ListColumn(np.array([0, 2, 5, 5, 7, 9], np.uint64), np.arange(10, 19, dtype=np.uint32))
    sliced = ListColumn(paths.offsets[1:], paths.values)  # rows 1..4, offsets start at 2
    batch = FlowBatch(
        n,
        {
            "observation_domain": np.arange(n, dtype=np.uint32),
            "received_at": np.full(n, int(time.time()), np.uint32),
            "src_net_name": DictColumn(np.array([69_999, 0, 1, 69_999], np.uint32), big),
            "dst_net_name": DictColumn(np.array([0, 1, 0, 1], np.uint32), ["", "é"]),
            "dst_communities": sliced,
        },
    )
    store = EmbeddedStore.open(StoreSettings(path=str(tmp_path)))
    try:
        store.migrate()
        store.insert(batch)
        out = store.query(
            "SELECT src_net_name, dst_net_name,"
            " arrayStringConcat(arrayMap(x -> toString(x), dst_communities), ',')\n"
            "FROM flowenricher.flows ORDER BY observation_domain",
            "TSV",
        )
    finally:
        store.close()
    assert out.decode().splitlines() == [
        "name-69999\t\t12,13,14",
        "name-0\té\t",
        "name-1\t\t15,16",
        "name-69999\té\t17,18",
    ]
