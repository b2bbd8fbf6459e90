"""The spool and the batch writer: outages lose nothing within the limits, and every loss
beyond them is counted."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from support import sample_batch
from support.clickhouse_http import ClickHouseHTTPStandIn

from appliance.flowenricher.batch import FlowBatch
from appliance.flowenricher.errors import StoreError
from appliance.flowenricher.storage.embedded import EmbeddedStore
from appliance.flowenricher.storage.server import ServerStore
from appliance.flowenricher.storage.settings import StoreSettings
from appliance.flowenricher.storage.spool import Dropped, Spool
from appliance.flowenricher.storage.writer import REJECT_AFTER, BatchWriter


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_spool_keeps_order_and_survives_restart(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path), max_bytes=1 << 20, max_age_s=3600)
    for i in range(3):
        spool.push(bytes([i]) * 10, rows=i + 1, token=f"t{i}")
    (tmp_path / ".tmp-000000000099-0000000000000-5.native").write_bytes(b"cut short")
    again = Spool(str(tmp_path), max_bytes=1 << 20, max_age_s=3600)
    assert [spool.read(e)[:1] for e in again.entries()] == [b"\x00", b"\x01", b"\x02"]
    assert [e.token for e in again.entries()] == ["t0", "t1", "t2"]
    assert again.stats().rows == 6 and again.stats().files == 3
    assert again.stats().size == sum(os.path.getsize(e.path) for e in again.entries())
    assert not any(name.startswith(".tmp-") for name in os.listdir(tmp_path))
    again.remove(again.entries()[0])
    again.push(b"new", rows=1, token="t3")
    assert [e.rows for e in Spool(str(tmp_path), 1 << 20, 3600).entries()] == [2, 3, 1]


def test_full_spool_drops_oldest_and_counts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    spool = Spool(str(tmp_path), max_bytes=2500, max_age_s=0, registry=registry)
    blocks = [prefix + os.urandom(999) for prefix in (b"a", b"b", b"c")]  # incompressible
    assert not spool.push(blocks[0], rows=10, token="a")
    first_size = spool.entries()[0].size
    assert not spool.push(blocks[1], rows=20, token="b")
    dropped = spool.push(blocks[2], rows=30, token="c")
    assert dropped == Dropped(files=1, rows=10, size=first_size)
    assert [spool.read(e) for e in spool.entries()] == blocks[1:]
    assert _metric(registry, "flowenricher_store_rows_dropped_total", reason="size") == 10
    assert _metric(registry, "flowenricher_store_spool_bytes") == sum(e.size for e in spool.entries())
    assert _metric(registry, "flowenricher_store_spool_rows") == 50
    assert "DROPPED 10 rows" in caplog.text


def test_old_blocks_expire_and_count(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    clock = Clock()
    spool = Spool(str(tmp_path), max_bytes=1 << 20, max_age_s=60, registry=registry, clock=clock)
    spool.push(b"x", rows=7, token="x")
    x_size = spool.entries()[0].size
    clock.now += 30
    spool.push(b"y", rows=8, token="y")
    assert _metric(registry, "flowenricher_store_spool_oldest_age_seconds") == 30
    clock.now += 31
    assert spool.expire() == Dropped(1, 7, x_size)
    assert [e.rows for e in spool.entries()] == [8]
    assert _metric(registry, "flowenricher_store_rows_dropped_total", reason="age") == 7


def test_spool_disabled_counts_every_failed_batch(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path), max_bytes=0, max_age_s=0)
    dropped = spool.push(b"block", rows=12, token="t")
    assert (dropped.files, dropped.rows) == (1, 12)
    assert len(spool) == 0 and spool.dropped_rows == 12


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[ClickHouseHTTPStandIn]:
    with ClickHouseHTTPStandIn(str(tmp_path / "server")) as ch:
        yield ch


def _numbered(first: int, n: int) -> FlowBatch:
    batch = sample_batch(n, seed=first)
    batch["observation_domain"] = np.arange(first, first + n, dtype=np.uint32)
    return batch


def _stored_ids(store: ServerStore | EmbeddedStore) -> list[int]:
    out = store.query("SELECT observation_domain FROM flowenricher.flows ORDER BY observation_domain", "TSV")
    return [int(x) for x in out.split()]


def _insert_order(store: ServerStore) -> list[tuple[int, int]]:
    """(first id, last id) of each insert, in the order the server wrote them (one part
    per insert: merges are stopped, and block numbers grow with every insert)."""
    out = store.query(
        "SELECT min(observation_domain), max(observation_domain),"
        " toUInt64(splitByChar('_', _part)[2]) AS block\n"
        "FROM flowenricher.flows GROUP BY block ORDER BY block",
        "TSV",
    )
    return [(int(a), int(b)) for a, b, _ in (line.split("\t") for line in out.decode().splitlines())]


@pytest.mark.parametrize("outage", ["connection refused", "http 500"])
def test_outage_spools_then_replays_in_order(
    tmp_path: Path, standin: ClickHouseHTTPStandIn, outage: str
) -> None:
    registry = CollectorRegistry()
    settings = StoreSettings(
        host="127.0.0.1", port=standin.port, path=str(tmp_path / "client"), batch_size=10_000
    )
    store = ServerStore(settings)
    store.migrate()
    store.query("SYSTEM STOP MERGES flowenricher.flows")
    clock = Clock()
    writer = BatchWriter(store, settings, Spool.from_settings(settings), registry=registry, clock=clock)

    writer.add(_numbered(0, 1000))
    writer.flush()
    if outage == "connection refused":
        standin.stop()
    else:
        standin.fail_with(500)
    for start in (1000, 2000, 3000):  # three flushes during the outage, each spooled
        writer.add(_numbered(start, 1000))
        clock.now += 1.5
        writer.maybe_flush()
    assert writer.spool.stats().rows == 3000
    assert _metric(registry, "flowenricher_store_rows_spooled_total") == 3000
    if outage == "connection refused":
        standin.start()
    else:
        standin.fail_with(None)

    writer.add(_numbered(4000, 1000))
    clock.now += 60  # past any back-off
    writer.maybe_flush()
    writer.close()

    assert _stored_ids(store) == list(range(5000))
    assert _insert_order(store) == [(0, 999), (1000, 1999), (2000, 2999), (3000, 3999), (4000, 4999)]
    assert len(writer.spool) == 0
    assert _metric(registry, "flowenricher_store_rows_replayed_total") == 3000
    assert _metric(registry, "flowenricher_store_rows_inserted_total") == 5000
    assert _metric(registry, "flowenricher_store_insert_errors_total") >= 1
    store.close()


def test_spool_left_by_a_previous_run_goes_first(tmp_path: Path, standin: ClickHouseHTTPStandIn) -> None:
    settings = StoreSettings(host="127.0.0.1", port=standin.port + 1, path=str(tmp_path / "client"))
    down = ServerStore(settings)  # nothing listens there
    writer = BatchWriter(down, settings, Spool.from_settings(settings))
    writer.add(_numbered(0, 100))
    writer.close()
    down.close()
    assert len(writer.spool) == 1

    settings = StoreSettings(host="127.0.0.1", port=standin.port, path=str(tmp_path / "client"))
    store = ServerStore(settings)
    store.migrate()
    store.query("SYSTEM STOP MERGES flowenricher.flows")
    writer = BatchWriter(store, settings, Spool.from_settings(settings))
    writer.add(_numbered(100, 100))
    writer.close()
    assert _insert_order(store) == [(0, 99), (100, 199)]
    store.close()


def test_batches_accumulate_until_size_or_interval(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    settings = StoreSettings(path=str(tmp_path / "data"), batch_size=2500, flush_interval_ms=1000)
    store = EmbeddedStore.open(settings)
    try:
        store.migrate()
        clock = Clock()
        writer = BatchWriter(store, settings, Spool.from_settings(settings), registry=registry, clock=clock)
        writer.add(_numbered(0, 1000))
        writer.add(_numbered(1000, 1000))
        clock.now += 0.5
        writer.maybe_flush()
        assert _metric(registry, "flowenricher_store_inserts_total") == 0
        assert _metric(registry, "flowenricher_store_pending_rows") == 2000
        writer.add(_numbered(2000, 1000))  # 3000 >= batch_size: one insert now
        assert _metric(registry, "flowenricher_store_inserts_total") == 1
        writer.add(_numbered(3000, 10))
        clock.now += 1.0
        writer.maybe_flush()  # the interval has passed
        assert _metric(registry, "flowenricher_store_inserts_total") == 2
        assert _stored_ids(store) == list(range(3010))
        assert _metric(registry, "flowenricher_store_insert_seconds_count") == 2
        assert _metric(registry, "flowenricher_store_last_insert_seconds") > 0
    finally:
        store.close()


def test_block_the_store_keeps_refusing_is_set_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    settings = StoreSettings(path=str(tmp_path / "data"))
    store = EmbeddedStore.open(settings)
    try:
        store.migrate()
        spool = Spool.from_settings(settings, registry)
        spool.push(b"\x01\x05garbage", rows=5, token="garbage")  # not a Native block
        clock = Clock()
        writer = BatchWriter(store, settings, spool, registry=registry, clock=clock)
        for i in range(REJECT_AFTER):
            writer.add(_numbered(i * 10, 10))
            clock.now += 60
            writer.maybe_flush()
        assert len(spool) == 0
        assert _stored_ids(store) == list(range(REJECT_AFTER * 10))
        assert _metric(registry, "flowenricher_store_spool_rows_rejected_total") == 5
        assert _metric(registry, "flowenricher_store_spool_blocks_rejected_total") == 1
        assert _metric(registry, "flowenricher_store_rows_dropped_total", reason="rejected") == 0
        rejected = sorted(os.listdir(tmp_path / "data" / "spool" / "rejected"))
        assert len(rejected) == 2 and rejected[1] == rejected[0] + ".reason"
        reason = (tmp_path / "data" / "spool" / "rejected" / rejected[1]).read_text()
        assert "failed 5 times while the store answered ping" in reason and "Code:" in reason
        assert "rejected by the store" in caplog.text
    finally:
        store.close()


def test_server_down_at_start_spools_then_migrates_and_replays(
    tmp_path: Path, standin: ClickHouseHTTPStandIn
) -> None:
    """The service starts while ClickHouse is away (the HTTP stand-in over chDB is
    stopped before anything migrated): batches go to the spool, and the first insert
    that reaches the server creates the schema first, then replays in order."""
    standin.stop()
    settings = StoreSettings(host="127.0.0.1", port=standin.port, path=str(tmp_path / "client"), batch_size=10_000)
    store = ServerStore(settings)
    with pytest.raises(StoreError):
        store.migrate()
    clock = Clock()
    writer = BatchWriter(store, settings, Spool.from_settings(settings), clock=clock, migrated=False)
    for start in (0, 1000):
        writer.add(_numbered(start, 1000))
        clock.now += 1.5
        writer.maybe_flush()
    assert writer.spool.stats().rows == 2000
    standin.start()
    writer.add(_numbered(2000, 1000))
    clock.now += 60
    writer.maybe_flush()
    writer.close()
    assert _stored_ids(store) == list(range(3000))
    assert len(writer.spool) == 0
    store.close()


def test_store_lag_counts_memory_then_spool_then_zero(tmp_path: Path, standin: ClickHouseHTTPStandIn) -> None:
    """flowenricher_store_lag_seconds (the status page's "store lag"): the age of the oldest
    flow the store has not acknowledged, whether it waits in memory or in the spool."""
    registry = CollectorRegistry()
    settings = StoreSettings(host="127.0.0.1", port=standin.port, path=str(tmp_path / "client"), batch_size=10_000)
    store = ServerStore(settings)
    store.migrate()
    clock = Clock()
    spool = Spool(settings.spool_path, settings.spool_max_bytes, settings.spool_max_age_s, False, registry, clock=clock)
    writer = BatchWriter(store, settings, spool, registry=registry, clock=clock)

    def lag() -> float:
        return _metric(registry, "flowenricher_store_lag_seconds")

    assert lag() == 0
    writer.add(_numbered(0, 10))
    clock.now += 0.4
    writer.add(_numbered(10, 10))  # the oldest row counts, not the newest
    clock.now += 0.4
    assert lag() == pytest.approx(0.8)
    writer.flush()
    assert lag() == 0

    standin.stop()
    writer.add(_numbered(20, 10))
    clock.now += 1.0
    writer.flush()  # refused: spooled
    assert len(spool) == 1 and lag() == 0  # just spooled
    clock.now += 45
    assert lag() == pytest.approx(45)
    writer.add(_numbered(30, 10))
    clock.now += 5
    assert lag() == pytest.approx(50)  # the spooled block is older than the one in memory
    standin.start()
    clock.now += 60  # past the back-off
    writer.flush()
    assert len(spool) == 0 and lag() == 0
    assert _stored_ids(store) == list(range(40))
    store.close()
