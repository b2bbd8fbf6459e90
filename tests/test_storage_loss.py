"""No silent loss in the store: blocks spanning many days are stored whole, acknowledged rows
are the rows in the tables (rollups included), retries are deduplicated, and rejected blocks
are kept, listed and replayable, on both backends (embedded chDB, and clickhouse-connect
through the HTTP stand-in in front of chDB)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from support import FlowenricherProcess, flowenricher_argv, free_port, sample_batch
from support.stores import STORE_KINDS, migrated_store

from appliance.flowenricher.batch import FlowBatch
from appliance.flowenricher.control import query_running
from appliance.flowenricher.errors import StoreError
from appliance.flowenricher.storage import open_store
from appliance.flowenricher.storage.base import FlowStore
from appliance.flowenricher.storage.native import encode_block
from appliance.flowenricher.storage.schema import DAY_S, ROLLUPS
from appliance.flowenricher.storage.settings import StoreSettings
from appliance.flowenricher.storage.spool import REJECTED_DIR, Spool, list_files, requeue
from appliance.flowenricher.storage.writer import REJECT_AFTER, BatchWriter

DB = "flowenricher"


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FlowStore]:
    """A migrated store of each kind on a fresh data directory."""
    with migrated_store(request.param, tmp_path, batch_size=1_000_000) as opened:
        yield opened


def _spread_over_days(n: int, days: int, seed: int = 3) -> FlowBatch:
    """`n` flows, row i on day i % days counted from today (future days: inside every TTL),
    numbered by observation_domain."""
    batch = sample_batch(n, seed=seed)
    today = int(time.time()) // DAY_S * DAY_S
    batch["timestamp_start"] = (today + (np.arange(n) % days) * DAY_S + 3600).astype(np.uint32)
    batch["observation_domain"] = np.arange(n, dtype=np.uint32)
    return batch


def _count(store: FlowStore, sql: str) -> int:
    return int(store.query(sql, "TSV").strip() or 0)


def _rows_everywhere(store: FlowStore) -> list[int]:
    """Rows in the flows table, then the flows counted by each rollup."""
    out = [_count(store, f"SELECT count() FROM {DB}.flows")]
    out += [_count(store, f"SELECT sum(flows) FROM {DB}.flows_{r.suffix}") for r in ROLLUPS]
    return out


def _metric(registry: CollectorRegistry, name: str) -> float:
    return registry.get_sample_value(name) or 0.0


@pytest.mark.parametrize("days", [101, 1000])
def test_batch_over_many_days_is_stored_whole(store: FlowStore, days: int) -> None:
    """Before: chDB answered OK for a block over more than 100 partitions and kept none of it
    (0 of 3030 rows), while rows_inserted counted them all."""
    registry = CollectorRegistry()
    writer = BatchWriter(store, store.settings, Spool.from_settings(store.settings), registry=registry)
    n = days * 3 + 30
    writer.add(_spread_over_days(n, days))
    writer.close()
    assert _rows_everywhere(store) == [n] * (1 + len(ROLLUPS))
    assert _count(store, f"SELECT uniqExact(toDate(timestamp_start)) FROM {DB}.flows") == days
    assert _metric(registry, "flowenricher_store_rows_inserted_total") == n
    assert _metric(registry, "flowenricher_store_inserts_total") >= 2 * days // 100
    assert len(writer.spool) == 0


def test_direct_insert_over_many_days_is_stored_whole(store: FlowStore) -> None:
    store.insert(_spread_over_days(1010, 101))
    assert _rows_everywhere(store) == [1010] * (1 + len(ROLLUPS))


def test_partitions_of_two_columns_are_bounded_together(tmp_path: Path) -> None:
    """Flows partitioned by the receive day (an operator's choice) while the 1-minute rollup
    is by flow start day: each insert must fit both."""
    settings = StoreSettings(path=str(tmp_path / "data"), partition_by="toYYYYMMDD(received_at)")
    store = open_store(settings)
    try:
        store.migrate()
        batch = _spread_over_days(600, 150)
        today = int(time.time()) // DAY_S * DAY_S
        batch["received_at"] = (today + (np.arange(600) * 7 % 120) * DAY_S).astype(np.uint32)
        writer = BatchWriter(store, settings, Spool.from_settings(settings))
        writer.add(batch)
        writer.close()
        assert _rows_everywhere(store) == [600] * (1 + len(ROLLUPS))
        assert len(writer.spool) == 0
    finally:
        store.close()


def test_too_many_partitions_is_an_error_not_an_ok(store: FlowStore) -> None:
    """A block over the limit that reaches the store anyway is refused, loudly."""
    with pytest.raises(StoreError, match=r"TOO_MANY_PARTS|Too many partitions"):
        store.insert_native(encode_block(_spread_over_days(202, 101)), 202)
    assert _rows_everywhere(store) == [0] * (1 + len(ROLLUPS))


def test_retried_block_is_stored_once(store: FlowStore) -> None:
    block = encode_block(_spread_over_days(500, 2))
    store.insert_native(block, 500, "block-1")
    store.insert_native(block, 500, "block-1")  # a retry after a failure the store had partly taken
    assert _rows_everywhere(store) == [500] * (1 + len(ROLLUPS))
    store.insert_native(block, 500, "block-2")  # identical flows, another block: kept
    store.insert_native(block, 500)  # no token: one of its own, kept too
    assert _rows_everywhere(store) == [1500] * (1 + len(ROLLUPS))


def test_spooled_block_replayed_after_partial_insert_is_stored_once(tmp_path: Path) -> None:
    """The writer's token travels with the spooled block: a block that reached the store
    but whose answer was lost is replayed without doubling its rows."""
    settings = StoreSettings(path=str(tmp_path / "data"))
    store = open_store(settings)
    try:
        store.migrate()
        spool = Spool.from_settings(settings)
        writer = BatchWriter(store, settings, spool)
        block = encode_block(_spread_over_days(300, 1))
        store.insert_native(block, 300, "lost-answer")  # stored, the writer never heard back
        spool.push(block, 300, "lost-answer")
        writer.flush()
        assert len(spool) == 0
        assert _rows_everywhere(store) == [300] * (1 + len(ROLLUPS))
    finally:
        store.close()


def _reject_one(store: FlowStore, spool: Spool, writer: BatchWriter) -> str:
    """Make the store refuse a block REJECT_AFTER times while it answers ping (an operator's
    view on the flows table that raises), so the writer sets it aside; returns its name."""
    store.query(f"CREATE TABLE {DB}.audit (x UInt8) ENGINE = MergeTree ORDER BY x", "TSV")
    store.query(
        f"CREATE MATERIALIZED VIEW {DB}.audit_mv TO {DB}.audit AS "
        f"SELECT throwIf(observation_domain < 1000000, 'audit view is broken') AS x FROM {DB}.flows",
        "TSV",
    )
    spool.push(encode_block(_spread_over_days(40, 1)), 40, "refused")
    for _ in range(REJECT_AFTER):
        writer._retry_at = 0.0  # no back-off wait in the test
        writer.flush()
    [rejected] = [f for f in list_files(spool.directory) if f.state == "rejected"]
    return rejected.name


def _fix_cause(store: FlowStore) -> None:
    store.query(f"DROP VIEW {DB}.audit_mv", "TSV")


def test_rejected_block_is_listed_with_its_reason_and_requeued_while_running(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    settings = StoreSettings(path=str(tmp_path / "data"))
    store = open_store(settings)
    try:
        store.migrate()
        spool = Spool.from_settings(settings, registry)
        writer = BatchWriter(store, settings, spool, registry=registry)
        name = _reject_one(store, spool, writer)
        assert _metric(registry, "flowenricher_store_spool_blocks_rejected_total") == 1
        assert _metric(registry, "flowenricher_store_spool_rows_rejected_total") == 40
        [listed] = list_files(spool.directory)
        assert (listed.state, listed.rows) == ("rejected", 40)
        assert "audit view is broken" in listed.reason  # the store's own words
        # The flows table took the rows before the view raised: the replay below must not
        # store them twice (same deduplication token), yet must reach the rollups.
        assert _rows_everywhere(store)[0] == 40

        # The operator fixes the cause and requeues the block.
        _fix_cause(store)
        [requeued] = requeue(spool.directory, [name])
        assert requeued.split("-")[0] == name.split("-")[0]  # same place in the queue
        assert os.listdir(os.path.join(spool.directory, REJECTED_DIR)) == []
        time.sleep(0.01)
        writer.maybe_flush(now=time.monotonic() + 2)  # the running writer's next tick
        writer.flush()
        assert len(spool) == 0
        assert _rows_everywhere(store) == [40] * (1 + len(ROLLUPS))
    finally:
        store.close()


def test_requeued_while_stopped_is_replayed_at_next_start(tmp_path: Path) -> None:
    settings = StoreSettings(path=str(tmp_path / "data"))
    store = open_store(settings)
    try:
        store.migrate()
        spool = Spool.from_settings(settings)
        writer = BatchWriter(store, settings, spool)
        name = _reject_one(store, spool, writer)
        writer.close()
        _fix_cause(store)
        # Spooled two days ago, longer than spool_max_age_s (one day): the age limit counts
        # from the requeue (--all, with the service stopped).
        rejected = Path(spool.directory, REJECTED_DIR)
        two_days_ago = f"{name[:13]}{(int(time.time()) - 2 * DAY_S) * 1000:013d}{name[26:]}"
        (rejected / name).rename(rejected / two_days_ago)
        requeued = requeue(spool.directory, None)
        assert requeued[0].endswith(name[26:])  # same rows and token
        restarted = BatchWriter(store, settings, Spool.from_settings(settings))
        assert not restarted.spool.expire()
        assert [os.path.basename(e.path) for e in restarted.spool.entries()] == requeued
        restarted.add(_spread_over_days(10, 1, seed=9))
        restarted.close()
        assert _rows_everywhere(store) == [50] * (1 + len(ROLLUPS))
    finally:
        store.close()


def test_spool_cli_lists_and_requeues(tmp_path: Path) -> None:
    data = tmp_path / "data"
    settings = StoreSettings(path=str(data))
    spool = Spool.from_settings(settings)
    spool.push(b"queued block", 7, "q")
    spool.push(b"refused block", 9, "r")
    spool.reject(spool.entries()[1], "Code: 16. DB::Exception: No such column")
    config = tmp_path / "config.yaml"
    config.write_text(f"storage:\n  path: {data}\n")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*flowenricher_argv(), "spool", *args, "--config", str(config)],
            capture_output=True, text=True, timeout=60, check=False,
        )

    listed = cli("list")
    assert listed.returncode == 0, listed.stderr
    assert "1 queued (7 rows), 1 rejected (9 rows)" in listed.stdout
    assert "No such column" in listed.stdout
    bad = cli("requeue", "no-such-block")
    assert bad.returncode != 0 and "no-such-block" in bad.stderr
    assert cli("requeue", "--all").returncode == 0
    assert [f.state for f in list_files(spool.directory)] == ["queued", "queued"]
    assert [e.rows for e in Spool.from_settings(settings).entries()] == [7, 9]


def test_uncompressed_spool_file_of_an_earlier_version_is_replayed(tmp_path: Path) -> None:
    settings = StoreSettings(path=str(tmp_path / "data"))
    os.makedirs(settings.spool_path)
    block = encode_block(_spread_over_days(25, 1))
    Path(settings.spool_path, f"{3:012d}-{int(time.time() * 1000):013d}-25.native").write_bytes(block)
    store = open_store(settings)
    try:
        store.migrate()
        writer = BatchWriter(store, settings, Spool.from_settings(settings))
        writer.close()
        assert _rows_everywhere(store) == [25] * (1 + len(ROLLUPS))
        assert os.listdir(settings.spool_path) == []
    finally:
        store.close()


def test_compressed_spool_is_smaller(tmp_path: Path) -> None:
    batch = sample_batch(20_000, seed=4)
    block = encode_block(batch)
    spool = Spool(str(tmp_path), max_bytes=1 << 30, max_age_s=0)
    spool.push(block, batch.n, "t")
    [entry] = spool.entries()
    assert spool.read(entry) == block
    assert entry.size < len(block) / 2, (entry.size, len(block))


def test_running_service_takes_in_a_requeued_block(tmp_path: Path) -> None:
    """`flowenricher run` is up; `spool requeue --all` from another process puts a rejected
    block back, and the running writer stores it (with its rollups) without a restart."""
    data = tmp_path / "data"
    spool = Spool.from_settings(StoreSettings(path=str(data)))
    spool.push(encode_block(_spread_over_days(40, 1)), 40, "set-aside")
    spool.reject(spool.entries()[0], "test: refused earlier")
    config = tmp_path / "config.yaml"
    metrics = free_port(socket.SOCK_STREAM)
    config.write_text(
        "collectors:\n"
        f"  listeners: [{{address: 127.0.0.1, port: {free_port()}, protocol: netflow}}]\n"
        "  workers: 1\n"
        f"storage: {{path: {json.dumps(str(data))}}}\n"
        "insert: {batch_size: 5000, flush_interval_ms: 200}\n"
        f'metrics: {{listen: "127.0.0.1:{metrics}"}}\n'
        "api: {enabled: false}\n"
        "enrich: none\n"
    )
    service = FlowenricherProcess(tmp_path, "service", "run", "--config", str(config))
    try:
        service.wait_for(lambda: "listening:" in service.output(), 60, "listening")

        def stored(table: str = "flows", what: str = "count()") -> int:
            answer = query_running(str(data), f"SELECT {what} FROM {DB}.{table}", "TSV", timeout=30)
            assert answer is not None, "the service's control socket does not answer"
            return int(answer or 0)

        assert stored() == 0
        requeued = subprocess.run(
            [*flowenricher_argv(), "spool", "requeue", "--all", "--config", str(config)],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert requeued.returncode == 0, requeued.stderr
        service.wait_for(lambda: stored() == 40, 20, "the requeued block stored")
        assert [stored(f"flows_{r.suffix}", "sum(flows)") for r in ROLLUPS] == [40] * len(ROLLUPS)
        assert list_files(str(data / "spool")) == []
    finally:
        assert service.stop() == 0, service.output()[-3000:]
