"""The stats recorder: the collector's real metric objects on a real registry, snapshotted
into collector_stats and exporter_interfaces on chDB, read back as the health and
interfaces dashboards read them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from appliance.flowenricher.detect.outbox import DeliveryMetrics
from appliance.flowenricher.enrich.snmp import InterfaceInfo
from appliance.flowenricher.metrics import CollectorMetrics, WorkerSnapshots
from appliance.flowenricher.stats_recorder import StatsRecorder
from appliance.flowenricher.storage import StoreSettings, open_store
from appliance.flowenricher.storage.base import FlowStore
from appliance.flowenricher.storage.metrics import SpoolMetrics, WriterMetrics

T0 = 1_800_000_000


@pytest.fixture
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlowStore]:
    s = open_store(StoreSettings(path=str(tmp_path_factory.mktemp("stats") / "data")))
    try:
        s.migrate()
        yield s
    finally:
        s.close()


class Service:
    """The metric objects the service registers, driven by hand."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.snapshots = WorkerSnapshots()
        self.kernel = {2055: 0}
        self.depth = 0
        self.spool: dict[str, float] = {"size": 0, "files": 0, "rows": 0, "oldest_age_s": 0}
        self.writer = WriterMetrics(self.registry)
        spool = SpoolMetrics(self.registry)
        spool.watch(lambda name: self.spool[name])
        self.registry.register(CollectorMetrics(self.snapshots, lambda: self.kernel, lambda: self.depth))

    def decoded(self, worker: int, per_exporter: dict[str, tuple[int, int, dict[str, int]]]) -> None:
        self.snapshots.update(worker, {
            "counts": {e: {"datagrams": d, "records": r} for e, (d, r, _) in per_exporter.items()},
            "dropped": {e: drops for e, (_, _, drops) in per_exporter.items() if drops}})


def _stats(store: FlowStore) -> dict[tuple[int, str, str], float]:
    text = store.query("SELECT toUnixTimestamp(ts), replaceRegexpOne(IPv6NumToString(exporter_address), '^::ffff:', ''),"
                       " metric, value FROM flowenricher.collector_stats", "TSV").decode()
    out = {}
    for line in text.splitlines():
        ts, exporter, metric, value = line.split("\t")
        out[(int(ts) - T0, exporter, metric)] = float(value)
    return out


def test_counters_are_recorded_as_increases_and_gauges_as_values(store: FlowStore) -> None:
    svc = Service()
    recorder = StatsRecorder(svc.registry, lambda sql: store.query(sql, "TSV"), "flowenricher", interval_s=10)
    svc.decoded(0, {"10.0.0.1": (100, 3000, {}), "2001:db8::2": (10, 300, {"template_missing": 4})})
    svc.writer.rows_inserted.inc(3000)
    svc.writer.insert_seconds.observe(0.02)
    svc.writer.insert_seconds.observe(0.04)
    svc.writer.last_insert_seconds.set(0.04)
    svc.spool["size"] = 4096
    svc.depth = 3
    recorder.tick(T0)
    recorder.tick(T0 + 5)  # within the interval: nothing
    svc.decoded(0, {"10.0.0.1": (150, 4500, {}), "2001:db8::2": (10, 300, {"template_missing": 6})})
    svc.decoded(1, {"10.0.0.1": (50, 1500, {"bad_version": 1}), "2001:db8::2": (0, 0, {})})
    svc.kernel[2055] = 7
    svc.writer.rows_inserted.inc(6000)
    svc.writer.insert_seconds.observe(0.1)
    svc.spool["size"] = 0
    svc.depth = 0
    recorder.tick(T0 + 10)
    assert recorder.flush(10)
    recorder.close()
    got = _stats(store)
    assert got[(0, "10.0.0.1", "records")] == 3000 and got[(10, "10.0.0.1", "records")] == 3000  # 4500+1500-3000
    assert got[(0, "10.0.0.1", "datagrams")] == 100 and got[(10, "10.0.0.1", "datagrams")] == 100
    assert got[(0, "2001:db8::2", "dropped.template_missing")] == 4
    assert got[(10, "2001:db8::2", "dropped.template_missing")] == 2
    assert got[(10, "10.0.0.1", "dropped.bad_version")] == 1
    assert got[(0, "::", "kernel_drops")] == 0 and got[(10, "::", "kernel_drops")] == 7
    assert got[(0, "::", "rows_inserted")] == 3000 and got[(10, "::", "rows_inserted")] == 6000
    assert got[(0, "::", "insert_seconds_avg")] == pytest.approx(0.03)
    assert got[(10, "::", "insert_seconds_avg")] == pytest.approx(0.1)
    assert got[(0, "::", "insert_seconds_last")] == pytest.approx(0.04)
    assert got[(0, "::", "spool_bytes")] == 4096 and got[(10, "::", "spool_bytes")] == 0
    assert got[(0, "::", "queue_depth")] == 3 and got[(10, "::", "queue_depth")] == 0
    assert not any(ts == 5 for ts, _, _ in got)


def test_a_restart_resets_counters_without_negative_rows(store: FlowStore) -> None:
    svc = Service()
    recorder = StatsRecorder(svc.registry, lambda sql: store.query(sql, "TSV"), "flowenricher")
    svc.decoded(0, {"10.0.0.1": (500, 9000, {})})
    recorder.record(T0)
    svc.decoded(0, {"10.0.0.1": (20, 400, {})})  # the worker restarted: its counters start again
    recorder.record(T0 + 10)
    recorder.close()
    got = _stats(store)
    assert got[(10, "10.0.0.1", "records")] == 400
    assert min(got.values()) >= 0


def test_interfaces_are_written_when_they_change(store: FlowStore) -> None:
    svc = Service()
    tables: dict[str, dict[int, Any]] = {
        "10.0.0.1": {1: InterfaceInfo("sfp-sfpplus1", alias="Cogent", speed_mbps=10_000), 2: InterfaceInfo("ether1")}}
    written: list[str] = []

    def execute(sql: str) -> None:
        if "exporter_interfaces" in sql:
            written.append(sql)
        store.query(sql, "TSV")

    recorder = StatsRecorder(svc.registry, execute, "flowenricher", interfaces=lambda: tables, interfaces_every_s=3600)
    recorder.record(T0)
    assert recorder.flush(10)
    first = _interfaces(store)
    recorder.record(T0 + 10)  # unchanged: not written again
    tables["10.0.0.1"][2] = InterfaceInfo("ether1", speed_mbps=1000)
    recorder.record(T0 + 20)
    recorder.close()
    assert first == [["1", "sfp-sfpplus1", "Cogent", "10000000000"], ["2", "ether1", "", "0"]]
    assert len(written) == 2
    assert _interfaces(store) == [["1", "sfp-sfpplus1", "Cogent", "10000000000"], ["2", "ether1", "", "1000000000"]]


def _interfaces(store: FlowStore) -> list[list[str]]:
    """The current table, as the dashboards read it (the latest row of each interface)."""
    text = store.query("SELECT ifindex, argMax(name, ts), argMax(alias, ts), argMax(speed_bps, ts) "
                       "FROM flowenricher.exporter_interfaces WHERE exporter_address = toIPv6('10.0.0.1') "
                       "GROUP BY ifindex ORDER BY ifindex", "TSV").decode()
    return [line.split("\t") for line in text.splitlines()]


def test_a_store_that_is_away_costs_rows_not_the_service(store: FlowStore) -> None:
    svc = Service()
    calls: list[str] = []

    def away(sql: str) -> None:
        calls.append(sql)
        raise ConnectionError("ClickHouse is away")

    registry = CollectorRegistry()
    recorder = StatsRecorder(svc.registry, away, "flowenricher", metrics=DeliveryMetrics(registry), backoff_s=0.01)
    svc.decoded(0, {"10.0.0.1": (1, 1, {})})
    recorder.tick(T0)  # returns at once: the insert is tried in the background
    assert recorder.flush(10)
    assert len(calls) == 3 and all(sql.startswith("INSERT INTO flowenricher.collector_stats") for sql in calls)
    assert registry.get_sample_value("flowenricher_detection_deliveries_dropped_total",
                                     {"action": "collector_stats", "reason": "retries"}) == 1
    recorder.close()
    with pytest.raises(ValueError, match="interval_s"):
        StatsRecorder(svc.registry, away, "flowenricher", interval_s=0)
