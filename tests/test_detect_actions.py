"""Detection actions against real destinations: detections.log lines, an HTTP server on
127.0.0.1 as webhook and Slack endpoint (failing, then answering), the detections table
in chDB, and the blackhole manager with its SQLite state."""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from support.detect import Collect
from support.recording_gobgp import RecordingGoBGP

from appliance.flowenricher.blackhole.manager import BlackholeManager, Defaults
from appliance.flowenricher.blackhole.safety import SafetyPolicy, SafetySettings, networks
from appliance.flowenricher.blackhole.state import StateDB
from appliance.flowenricher.detect import (
    AlertLog,
    BlackholeAction,
    ClickHouseDetections,
    DeliveryMetrics,
    Detection,
    DetectionEngine,
    SlackNotifier,
    WebhookNotifier,
    build_actions,
    insert_detections_sql,
    parse_rule_set,
)
from appliance.flowenricher.generate.flows import Flows, text_rows
from appliance.flowenricher.storage import open_store
from appliance.flowenricher.storage.settings import StoreSettings
from appliance.flowenricher.storage.tables import DETECTIONS

T0 = 1_800_000_000


def scan(source: str, n: int = 60, at: int = T0) -> Any:
    f = Flows.empty(n)
    f.src_addr = text_rows([source] * n)
    f.dst_addr = text_rows([f"84.54.49.{i + 1}" for i in range(n)])
    f.dst_port[:] = 22
    f.proto[:] = 6
    f.tcpflags[:] = 0x02
    f.packets[:] = 1
    f.bytes[:] = 44
    f.flow_direction[:] = 1
    f.end_ms[:] = f.start_ms[:] = at * 1000
    batch = f.to_flow_batch()
    batch["received_at"] = np.full(n, at, dtype=np.uint32)
    return batch


RULE = {"name": "scan", "proto": "tcp", "same_dst_port": True, "unique_dst_ips": 50, "min_flows": 50,
        "time_window": "60s"}



def detections(actions: Sequence[Any], action: str, sources: Sequence[str] = ("203.0.113.7",),
               **rule: Any) -> list[Detection]:
    """Run the scan rule with `action` over one scan per source, through `actions`; the
    detections made."""
    seen = Collect()
    engine = DetectionEngine(parse_rule_set([{**RULE, "action": action, **rule}]), [*actions, seen],
                             CollectorRegistry())
    for source in sources:
        engine.process(scan(source))
    assert engine.evaluate(T0) == []  # each key already reported: in its cooldown
    return seen.detections


def count(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


# ----------------------------------------------------------------- detections.log


def test_alert_lines_are_json_with_the_evidence(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    path = tmp_path / "detections.log"
    alert = AlertLog(path, DeliveryMetrics(registry))
    assert len(detections([alert], "alert", ("203.0.113.7", "2001:db8::66"))) == 2

    lines = path.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    assert [(r["rule"], r["key"], r["address"], r["dst_port"]) for r in records] == [
        ("scan", "src", "203.0.113.7", 22), ("scan", "src", "2001:db8::66", 22)]
    first = records[0]
    # Distinct counts are exact up to the rule's threshold (50), a lower bound above it.
    assert first["flows"] == 60 and first["unique_dst_ips"] == 50 and first["syn_ratio"] == 1.0
    assert first["time"] == "2027-01-15T08:00:00.000Z" and first["first_seen"] == first["last_seen"]
    assert first["actions"] == ["alert"] and first["blackhole"] is False
    assert 1 <= len(first["samples"]) <= 5
    sample = first["samples"][0]
    assert (sample["src_addr"], sample["dst_port"], sample["tcpflags"]) == ("203.0.113.7", 22, 2)
    assert count(registry, "flowenricher_detection_deliveries_total", action="alert") == 2


def test_alert_write_failure_is_counted_not_raised(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    alert = AlertLog(tmp_path / "missing" / "detections.log", DeliveryMetrics(registry))
    detections([alert], "alert")
    assert count(registry, "flowenricher_detection_delivery_failures_total", action="alert") == 1


# ----------------------------------------------------------------- HTTP


class Endpoint:
    """An HTTP server on 127.0.0.1 that fails the first `failures` POSTs with `status`."""

    def __init__(self, failures: int = 0, status: int = 503) -> None:
        self.bodies: list[Any] = []
        self.answers: list[int] = []
        self.failures, self.status = failures, status
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                code = outer.status if len(outer.answers) < outer.failures else 200
                outer.answers.append(code)
                if code == 200:
                    outer.bodies.append(json.loads(body))
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    server = Endpoint(failures=2)
    yield server
    server.close()


def test_webhook_is_retried_with_backoff_until_it_answers(endpoint: Endpoint) -> None:
    registry = CollectorRegistry()
    hook = WebhookNotifier(endpoint.url, DeliveryMetrics(registry), backoff_s=0.05, headers={"X-Token": "t"})
    detections([hook], "alert,webhook")
    assert hook.flush(10)
    hook.close()
    assert endpoint.answers == [503, 503, 200]
    [body] = endpoint.bodies
    assert (body["rule"], body["address"], body["unique_dst_ips"]) == ("scan", "203.0.113.7", 50)
    assert count(registry, "flowenricher_detection_delivery_failures_total", action="webhook") == 2
    assert count(registry, "flowenricher_detection_deliveries_total", action="webhook") == 1


def test_slack_gets_one_line_of_text() -> None:
    server = Endpoint()
    try:
        slack = SlackNotifier(server.url, DeliveryMetrics(CollectorRegistry()))
        detections([slack], "slack")
        assert slack.flush(10)
        slack.close()
    finally:
        server.close()
    [body] = server.bodies
    assert set(body) == {"text"}
    assert "rule scan: src 203.0.113.7 port 22: 60 flows" in body["text"] and "50 destinations" in body["text"]


def test_a_refusing_endpoint_is_not_retried_and_a_full_queue_drops() -> None:
    server = Endpoint(failures=100, status=400)
    registry = CollectorRegistry()
    try:
        hook = WebhookNotifier(server.url, DeliveryMetrics(registry), backoff_s=0.05)
        detections([hook], "webhook")
        assert hook.flush(10)
        assert server.answers == [400]
        assert count(registry, "flowenricher_detection_deliveries_dropped_total", action="webhook",
                     reason="refused") == 1
        hook.close()
        # Nobody listens: each attempt fails, the queue (one place) overflows, nothing blocks.
        metrics_registry = CollectorRegistry()
        dead = WebhookNotifier("http://127.0.0.1:9/", DeliveryMetrics(metrics_registry), capacity=1, attempts=2,
                               backoff_s=0.05)
        detections([dead], "webhook", [f"203.0.113.{i}" for i in range(1, 6)])
        assert dead.flush(10)
        dead.close()
        dropped = count(metrics_registry, "flowenricher_detection_deliveries_dropped_total", action="webhook",
                        reason="queue_full")
        given_up = count(metrics_registry, "flowenricher_detection_deliveries_dropped_total", action="webhook",
                         reason="retries")
        # How many overflow depends on how fast the delivery thread empties its one place
        # while the five are queued (3 or more on a quiet machine, 2 seen under load).
        assert dropped >= 1 and dropped + given_up == 5
    finally:
        server.close()


# ----------------------------------------------------------------- ClickHouse


def test_detections_table_in_the_embedded_store(tmp_path: Path) -> None:
    """The DDL and the inserts through the store's own statement call (chDB here)."""
    store = open_store(StoreSettings(path=str(tmp_path / "data")))
    try:
        store.migrate()
        store.query(DETECTIONS.create_sql("flowenricher", ttl_days=90), "TSV")
        store.query(DETECTIONS.create_sql("flowenricher"), "TSV")  # idempotent, as a migration must be
        registry = CollectorRegistry()
        table = ClickHouseDetections(lambda sql: store.query(sql, "TSV"), "flowenricher", DeliveryMetrics(registry))
        detections([table], "alert,clickhouse", ("203.0.113.7", "2001:db8::66"))
        assert table.flush(10)
        table.close()
        rows = [json.loads(line) for line in store.query(
            "SELECT rule, key, replaceRegexpOne(IPv6NumToString(address), '^::ffff:', '') AS address, dst_port, "
            "flows, unique_dst_ips, unique_src_ips, blackhole, actions, samples, "
            "toUnixTimestamp64Milli(detected_at) AS at FROM flowenricher.detections ORDER BY address",
            "JSONEachRow").decode().splitlines()]
    finally:
        store.close()
    assert [(r["address"], r["dst_port"], r["flows"], r["unique_dst_ips"], r["unique_src_ips"]) for r in rows] == [
        ("2001:db8::66", 22, 60, 50, None), ("203.0.113.7", 22, 60, 50, None)]
    assert rows[0]["at"] == T0 * 1000 and rows[0]["actions"] == ["alert", "clickhouse"]
    assert json.loads(rows[0]["samples"])[0]["src_addr"] == "2001:db8::66"
    assert count(registry, "flowenricher_detection_deliveries_total", action="clickhouse") == 2


def test_every_detection_is_written_to_the_table_whatever_the_rule_s_actions(tmp_path: Path) -> None:
    """An alert-only rule (every shipped example) still leaves its rows: the status page and
    /api/v1/detections read the table; ``clickhouse`` named too writes them once, not twice."""
    store = open_store(StoreSettings(path=str(tmp_path / "data")))
    try:
        store.migrate()
        store.query(DETECTIONS.create_sql("flowenricher"), "TSV")
        table = ClickHouseDetections(lambda sql: store.query(sql, "TSV"), "flowenricher",
                                     DeliveryMetrics(CollectorRegistry()))
        detections([table], "alert", ("203.0.113.7",))
        detections([table], "alert,clickhouse", ("203.0.113.8",), name="named")
        assert table.flush(10)
        table.close()
        rows = store.query("SELECT rule, replaceRegexpOne(IPv6NumToString(address), '^::ffff:', '') AS address, "
                           "actions FROM flowenricher.detections ORDER BY address", "JSONEachRow").decode()
    finally:
        store.close()
    assert [json.loads(line) for line in rows.splitlines()] == [
        {"rule": "scan", "address": "203.0.113.7", "actions": ["alert"]},
        {"rule": "named", "address": "203.0.113.8", "actions": ["alert", "clickhouse"]}]


def test_insert_sql_escapes_strings() -> None:
    [d] = detections([], "alert")
    sql = insert_detections_sql("db", [dataclasses.replace(d, rule="it's \\ odd")])
    assert "'it\\'s \\\\ odd'" in sql and sql.startswith("INSERT INTO db.detections (detected_at, rule, key,")


# ----------------------------------------------------------------- blackhole


def test_blackhole_requests_reach_the_manager(tmp_path: Path) -> None:
    routes = RecordingGoBGP()
    safety = SafetySettings(own=networks(["84.54.49.0/24"]), never=networks(["198.51.100.1"]))
    manager = BlackholeManager(StateDB(f"sqlite:///{tmp_path}/state.db"), routes, SafetyPolicy(safety),
                               tmp_path / "blackholes.txt", Defaults(), CollectorRegistry())
    registry = CollectorRegistry()
    [action] = build_actions(registry, blackhole_sink=manager)
    assert isinstance(action, BlackholeAction)
    # The first source has 60 flows (blackholed), the never-blackhole one is refused by the
    # manager, the own one too (as a source).
    detections([action], "alert,blackhole", ("203.0.113.7", "198.51.100.1", "84.54.49.77"),
               blackhole_count=60, blackhole_next_hop="192.0.2.1", blackhole_communities=["65001:666"],
               blackhole_time=3600)
    assert action.flush(10)
    action.close()
    assert routes.held == {"203.0.113.7/32": ("192.0.2.1", ("65001:666",))}
    [active] = manager.active()
    assert active.rule == "scan" and active.evidence["key"] == "src" and active.evidence["flows"] == 60
    assert active.expires_at is not None and active.expires_at - active.created_at == pytest.approx(3600)
    log = [json.loads(line) for line in (tmp_path / "blackholes.txt").read_text().splitlines()]
    assert [(x["action"], x["prefix"]) for x in log] == [
        ("announce", "203.0.113.7/32"), ("refused", "198.51.100.1/32"), ("refused", "84.54.49.77/32")]


def test_below_blackhole_count_only_alerts(tmp_path: Path) -> None:
    routes = RecordingGoBGP()
    manager = BlackholeManager(StateDB(f"sqlite:///{tmp_path}/state.db"), routes, SafetyPolicy(SafetySettings()),
                               None, Defaults(), CollectorRegistry())
    alert = AlertLog(tmp_path / "detections.log", DeliveryMetrics(CollectorRegistry()))
    actions = build_actions(CollectorRegistry(), blackhole_sink=manager)
    detections([alert, *actions], "alert,blackhole", blackhole_count=61, blackhole_time=60)
    for action in actions:
        action.close()
    assert routes.held == {}
    [line] = (tmp_path / "detections.log").read_text().splitlines()
    assert json.loads(line)["blackhole"] is False
