"""Both flow stores, on the real engine: embedded chDB, and a ClickHouse "server" reached by
the real clickhouse-connect client through the HTTP stand-in in front of chDB."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import clickhouse_connect
import numpy as np
import pytest
from support import sample_batch
from support.clickhouse_http import ClickHouseHTTPStandIn
from support.stores import STORE_KINDS, migrated_store

from appliance.flowenricher.batch import FlowBatch, ipv4_to_addr, str_to_addr
from appliance.flowenricher.columns import COLUMNS, Kind
from appliance.flowenricher.errors import StoreError
from appliance.flowenricher.storage.base import FlowStore
from appliance.flowenricher.storage.embedded import EmbeddedStore
from appliance.flowenricher.storage.native import encode_block
from appliance.flowenricher.storage.server import ServerStore
from appliance.flowenricher.storage.settings import StoreSettings

TABLE = "flowenricher.flows"


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FlowStore]:
    """A migrated store of each kind on a fresh data directory."""
    with migrated_store(request.param, tmp_path) as opened:
        assert isinstance(opened, EmbeddedStore if request.param == "embedded" else ServerStore)
        yield opened


def _numbered(batch: FlowBatch) -> FlowBatch:
    """Give every row a distinct observation_domain, to read rows back in order."""
    batch["observation_domain"] = np.arange(batch.n, dtype=np.uint32)
    return batch


def _read_back(store: FlowStore) -> list[list[str]]:
    """Every stored column as exact text: numbers, hex address bytes, strings, lists."""
    exprs = []
    for c in COLUMNS:
        if c.kind is Kind.ADDR:
            exprs.append(f"hex({c.name})")
        elif c.kind is Kind.UINT_LIST:
            exprs.append(f"arrayStringConcat(arrayMap(x -> toString(x), {c.name}), ',')")
        elif c.ch_type == "DateTime":
            exprs.append(f"toUInt32({c.name})")
        else:
            exprs.append(c.name)
    sql = f"SELECT {', '.join(exprs)} FROM {TABLE} ORDER BY observation_domain"
    return [line.split("\t") for line in store.query(sql, "TabSeparated").decode().splitlines()]


def _expected(batch: FlowBatch) -> list[list[str]]:
    columns = []
    for c in COLUMNS:
        data = batch[c.name]
        if c.kind is Kind.UINT:
            columns.append([str(v) for v in data.tolist()])
        elif c.kind is Kind.ADDR:
            columns.append([bytes(row).hex().upper() for row in data])
        elif c.kind is Kind.STR:
            columns.append(data.strings())
        else:
            columns.append([",".join(map(str, data.row(i))) for i in range(batch.n)])
    return [list(row) for row in zip(*columns, strict=True)]


def test_batch_round_trips_exactly(store: FlowStore) -> None:
    batch = _numbered(sample_batch(3000, seed=7))
    store.insert(batch)
    assert _read_back(store) == _expected(batch)


def test_batches_with_different_columns_in_one_insert(store: FlowStore) -> None:
    """The writer joins blocks of batches that set different columns: each keeps its own."""
    first = _numbered(sample_batch(10, seed=1))
    second = FlowBatch(5, {"observation_domain": np.arange(10, 15, dtype=np.uint32)})
    second["received_at"] = first["received_at"][:5]
    store.insert_native(encode_block(first) + encode_block(second), 15)
    rows = _read_back(store)
    assert rows == _expected(FlowBatch.concat([first, second]))


def test_original_names_render_as_before(store: FlowStore) -> None:
    now = int(time.time())
    batch = FlowBatch(
        2,
        {
            "observation_domain": np.arange(2, dtype=np.uint32),
            "timestamp_start": np.full(2, now, np.uint32),
            "received_at": np.full(2, now, np.uint32),
            "src_addr": np.vstack(
                [
                    ipv4_to_addr(np.array([0x01020304], np.uint32)),
                    np.frombuffer(str_to_addr("2001:db8::5"), np.uint8),
                ]
            ),
            "dst_addr": np.frombuffer(str_to_addr("10.0.0.1") + str_to_addr("::1"), np.uint8).reshape(2, 16),
            "proto": np.array([6, 17], np.uint8),
        },
    )
    batch["dst_as_path"] = type(batch["dst_as_path"]).from_lists([[64500, 3356], []])
    store.insert(batch)
    out = store.query(
        f"SELECT src_host, dst_host, as_path, ip_protocol, ingested_at = timestamp_start FROM {TABLE}"
        " ORDER BY observation_domain",
        "JSONCompact",
    )
    assert json.loads(out)["data"] == [
        ["1.2.3.4", "10.0.0.1", ["64500", "3356"], 6, 1],
        ["2001:db8::5", "::1", [], 17, 1],
    ]


def test_query_formats(store: FlowStore) -> None:
    store.insert(sample_batch(100))
    assert store.query(f"SELECT count() AS n FROM {TABLE}") == b"n\n100\n"
    assert int(json.loads(store.query(f"SELECT count() AS n FROM {TABLE}", "JSON"))["data"][0]["n"]) == 100
    # A FORMAT written in the statement wins over the fmt argument, as in clickhouse-client.
    assert store.query(f"SELECT count() FROM {TABLE} FORMAT CSV", "JSON") == b"100\n"
    assert store.ping()


def test_bad_sql_raises_store_error(store: FlowStore) -> None:
    with pytest.raises(StoreError, match=r"UNKNOWN_TABLE|Unknown table"):
        store.query("SELECT * FROM flowenricher.nope")


def test_large_batch(store: FlowStore, capsys: pytest.CaptureFixture[str]) -> None:
    """500k rows in one insert; the time is printed (pytest -s) for docs/performance.md."""
    batch = sample_batch(500_000, seed=3)
    block = encode_block(batch)
    started = time.perf_counter()
    store.insert_native(block, batch.n)
    elapsed = time.perf_counter() - started
    with capsys.disabled():
        print(
            f"\n{type(store).__name__}: 500000 rows, {len(block) >> 20} MiB Native,"
            f" inserted in {elapsed:.2f} s"
        )
    counts = store.query(f"SELECT count(), sum(bytes) FROM {TABLE}", "TSV").split()
    assert counts == [b"500000", str(int(batch["bytes"].sum())).encode()]


def test_clickhouse_connect_reads_what_was_stored(tmp_path: Path) -> None:
    """clickhouse-connect's own Native reader (its query path) on the stand-in's output."""
    with ClickHouseHTTPStandIn(str(tmp_path / "server")) as ch:
        store = ServerStore(StoreSettings(host="127.0.0.1", port=ch.port))
        store.migrate()
        batch = _numbered(sample_batch(50, seed=2))
        store.insert(batch)
        client = clickhouse_connect.get_client(host="127.0.0.1", port=ch.port, compress=False)
        result = client.query(
            f"SELECT src_host, input_interface_name, dst_as_path FROM {TABLE} ORDER BY observation_domain"
        )
        rows = result.result_rows
        client.close()
        store.close()
    expected = list(batch.rows())
    assert [r[0] for r in rows] == [e["src_addr"] for e in expected]
    assert [r[1] for r in rows] == [e["input_interface_name"] for e in expected]
    assert [r[2] for r in rows] == [e["dst_as_path"] for e in expected]


def test_server_down_is_a_store_error(tmp_path: Path) -> None:
    with ClickHouseHTTPStandIn(str(tmp_path / "server")) as ch:
        port = ch.port
    store = ServerStore(StoreSettings(host="127.0.0.1", port=port))
    with pytest.raises(StoreError, match=f"ClickHouse at http://127.0.0.1:{port}"):
        store.insert(sample_batch(10))
    assert not store.ping()
    store.close()


def test_second_process_on_the_data_directory_gets_a_clear_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = EmbeddedStore.open(StoreSettings(path=str(data)))
    try:
        child = textwrap.dedent(
            f"""
            from appliance.flowenricher.errors import StoreError
            from appliance.flowenricher.storage import open_store, StoreSettings
            try:
                open_store(StoreSettings(path={str(data)!r}))
            except StoreError as err:
                print(err)
            """
        )
        out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60).stdout
    finally:
        store.close()
    assert f"cannot open {data.resolve()}: the directory is in use by another process" in out
    assert "PID:" in out


def test_one_data_directory_per_process(tmp_path: Path) -> None:
    """chDB holds one directory per process: a second one is refused while the first is open."""
    first = EmbeddedStore.open(StoreSettings(path=str(tmp_path / "a")))
    try:
        with pytest.raises(StoreError, match="already has another chDB data directory open"):
            EmbeddedStore.open(StoreSettings(path=str(tmp_path / "b")))
    finally:
        first.close()
    EmbeddedStore.open(StoreSettings(path=str(tmp_path / "b"))).close()  # free again once closed
