"""Flow queries through the API against a real embedded chDB store: top N and series
(from the flows table or a rollup, same answers), exporters, detections, lookup, the
status page, and a store that is down."""

from __future__ import annotations

import html
import json
import re
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import maxminddb
import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry
from support import sample_batch
from support.api import HOUR, ApiEnv, flow_store, make_env

from appliance.flowenricher.batch import FlowBatch, addr_to_str
from appliance.flowenricher.collector_local import LocalCollector
from appliance.flowenricher.detect import (
    AlertLog,
    ClickHouseDetections,
    DeliveryMetrics,
    DetectionEngine,
    parse_rule_set,
)
from appliance.flowenricher.errors import StoreError
from appliance.flowenricher.generate.flows import Flows, text_rows
from appliance.flowenricher.service import Runtime
from appliance.flowenricher.storage.base import FlowStore
from appliance.flowenricher.storage.tables import COLLECTOR_STATS, DETECTIONS

START = int(time.time()) // HOUR * HOUR - 3 * HOUR
END = START + 2 * HOUR
PER_HOUR = 3000
GEOIP = Path(__file__).resolve().parent / "data" / "geoip"  # MaxMind's test databases (README there)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlowStore]:
    with flow_store(tmp_path_factory.mktemp("api-flows") / "data", START, hours=2, per_hour=PER_HOUR) as s:
        yield s


@pytest.fixture(scope="module")
def batch() -> FlowBatch:
    """The same flows as the store holds, for computing expected answers with numpy."""
    return FlowBatch.concat([sample_batch(PER_HOUR, seed=h, start=START + h * HOUR) for h in range(2)])


@pytest.fixture
def env(tmp_path: Path, store: FlowStore) -> ApiEnv:
    return make_env(tmp_path, store, clock=lambda: float(END))


def _texts(batch: FlowBatch, column: str) -> list[str]:
    data = batch[column]
    if isinstance(data, np.ndarray) and data.ndim == 2:
        return [addr_to_str(row) for row in data]
    if isinstance(data, np.ndarray):
        return [str(v) for v in data.tolist()]
    return [str(v) for v in data.strings()]


def expected_top(batch: FlowBatch, column: str, start: int, end: int, limit: int = 10,
                 where: Any = None) -> list[dict[str, Any]]:
    """Top N computed in Python from the flows, as the API should answer."""
    ts = batch["timestamp_start"]
    keep = (ts >= start) & (ts < end)
    if where is not None:
        keep &= where
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    keys = _texts(batch, column)
    for i in np.flatnonzero(keep).tolist():
        entry = totals[keys[i]]
        entry[0] += int(batch["bytes"][i])
        entry[1] += int(batch["packets"][i])
        entry[2] += 1
    ranked = sorted(totals.items(), key=lambda kv: (-kv[1][0], kv[0]))[:limit]
    return [{"key": k, "bytes": b, "packets": p, "flows": f} for k, (b, p, f) in ranked]


def _get(env: ApiEnv, path: str, **params: Any) -> Any:
    response = env.client.get(path, params=params, headers=env.headers(env.reader))
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize(("by", "start", "end", "source"), [
    ("src_host", START, END, "flows"),  # addresses are not in the rollups
    ("dst_port", START, END, "flows"),
    ("src_as", START, END, "1h"),
    ("src_host_country", START + 300, END - 300, "5m"),
    ("proto", START + 60, END, "1m"),
    ("proto", START + 30, END, "flows"),  # not on a minute: only the flows table is exact
])
def test_top_n_matches_the_flows(env: ApiEnv, batch: FlowBatch, by: str, start: int, end: int, source: str) -> None:
    body = _get(env, "/api/v1/flows/top", by=by, **{"from": start, "to": end})
    assert body["source"] == source
    assert body["rows"] == expected_top(batch, by.replace("_host", "_addr") if by.endswith("host") else by,
                                        start, end)


def test_top_n_filters_metric_and_limit(env: ApiEnv, batch: FlowBatch) -> None:
    inbound = batch["flow_direction"] == 1
    body = _get(env, "/api/v1/flows/top", by="dst_port", direction="inbound", limit=3, **{"from": START, "to": END})
    assert body["rows"] == expected_top(batch, "dst_port", START, END, 3, inbound)
    exporter = np.all(batch["exporter_address"][:, 12:] == [10, 0, 0, 2], axis=1)
    body = _get(env, "/api/v1/flows/top", by="proto", exporter="10.0.0.2", **{"from": START, "to": END})
    assert body["source"] == "1h" and body["rows"] == expected_top(batch, "proto", START, END, where=exporter)
    by_flows = _get(env, "/api/v1/flows/top", by="input_interface_name", metric="flows", **{"from": START, "to": END})
    counts = [row["flows"] for row in by_flows["rows"]]
    assert counts == sorted(counts, reverse=True) and sum(counts) == 2 * PER_HOUR
    directions = {r["key"] for r in _get(env, "/api/v1/flows/top", by="flow_direction",
                                         **{"from": START, "to": END})["rows"]}
    assert directions == {"unknown", "inbound", "outbound", "internal", "transit"}


def test_default_range_is_the_last_hour(env: ApiEnv, batch: FlowBatch) -> None:
    body = _get(env, "/api/v1/flows/top", by="proto")  # clock: END
    assert body["from"].startswith(time.strftime("%Y-%m-%dT%H", time.gmtime(END - HOUR)))
    assert body["rows"] == expected_top(batch, "proto", END - HOUR, END)


@pytest.mark.parametrize(("params", "source", "step"), [
    ({}, "1m", 60),
    ({"step": 300}, "5m", 300),
    ({"step": 3600}, "1h", 3600),
    ({"step": 90}, "flows", 90),
    ({"step": 600, "by": "dst_port", "limit": 2}, "flows", 600),
    ({"step": 600, "by": "proto"}, "5m", 600),
])
def test_series_totals_and_rollup_choice(env: ApiEnv, batch: FlowBatch, params: dict[str, Any], source: str,
                                         step: int) -> None:
    body = _get(env, "/api/v1/flows/series", **{"from": START, "to": END}, **params)
    assert (body["source"], body["step"]) == (source, step)
    points = body["points"]
    assert all(p["t"] % step == 0 for p in points)
    ts = batch["timestamp_start"]
    if "by" not in params:
        assert sum(p["bytes"] for p in points) == int(batch["bytes"].sum())
        assert sum(p["flows"] for p in points) == batch.n
        first = (ts >= points[0]["t"]) & (ts < points[0]["t"] + step)
        assert points[0]["packets"] == int(batch["packets"][first].sum())
    else:
        limit = params.get("limit", 10)
        top = {row["key"] for row in expected_top(batch, params["by"], START, END, limit)}
        assert {p["key"] for p in points} == top


def test_series_widens_to_whole_steps_and_limits_points(env: ApiEnv) -> None:
    body = _get(env, "/api/v1/flows/series", step=300, **{"from": START + 100, "to": END - 100})
    assert body["from"].endswith("Z") and body["points"][0]["t"] == START and body["source"] == "5m"
    response = env.client.get("/api/v1/flows/series", params={"step": 1, "from": START - 86400, "to": END},
                              headers=env.headers())
    assert response.status_code == 422 and response.json()["problems"][0]["path"] == "query.step"


@pytest.mark.parametrize(("params", "path"), [
    ({"by": "src_host; DROP TABLE flows"}, "query.by"),
    ({"by": "bytes"}, "query.by"),
    ({"by": "proto", "from": END, "to": START}, "query.from"),
    ({"by": "proto", "direction": "sideways"}, "query.direction"),
    ({"by": "proto", "exporter": "10.0.0.1' OR 1=1 --"}, "query.exporter"),
    ({"by": "proto", "limit": 0}, "query.limit"),
])
def test_bad_queries_are_422(env: ApiEnv, params: dict[str, Any], path: str) -> None:
    response = env.client.get("/api/v1/flows/top", params=params, headers=env.headers())
    assert response.status_code == 422, response.text
    assert response.json()["problems"][0]["path"] == path


def test_exporters(tmp_path: Path, store: FlowStore, batch: FlowBatch) -> None:
    parts = Runtime(interfaces=lambda: {"10.0.0.1": {1: "uplink-cogent"}},
                    exporter_counters=lambda: {"10.0.0.1": {"datagrams": 42, "templates": 3}})
    env = make_env(tmp_path, store, clock=lambda: float(END), collector=LocalCollector(parts))
    body = _get(env, "/api/v1/exporters", **{"from": START, "to": END})
    rows = {e["exporter"]: e for e in body["exporters"]}
    assert set(rows) == {"10.0.0.1", "10.0.0.2"}
    first = np.all(batch["exporter_address"][:, 12:] == [10, 0, 0, 1], axis=1)
    assert rows["10.0.0.1"]["flows"] == int(first.sum())
    assert rows["10.0.0.1"]["bytes"] == int(batch["bytes"][first].sum())
    assert rows["10.0.0.1"]["protocols"] == ["ipfix", "netflow9"]
    assert rows["10.0.0.1"]["interfaces"]["1"] == "uplink-cogent"  # SNMP name wins
    assert rows["10.0.0.2"]["interfaces"]["1"] in {"ether1", "ether2", "sfp1"}  # named in flows
    assert rows["10.0.0.1"]["counters"] == {"datagrams": 42, "templates": 3}
    assert rows["10.0.0.2"]["counters"] == {}


def test_detections_filters_and_missing_table(env: ApiEnv, store: FlowStore) -> None:
    assert _get(env, "/api/v1/detections") == {"detections": []}  # no table yet
    store.query(DETECTIONS.create_sql("flowenricher"), "TSV")  # the detection engine's own table
    try:
        rows = [(END - 600, "syn_flood", "dst", "84.54.49.7", 5000), (END - 300, "it's a scan", "src", "2001:db8::1", 80),
                (END - 60, "syn_flood", "dst", "84.54.49.8", 7000), (START - 7200, "syn_flood", "dst", "84.54.49.7", 1)]
        store.query(DETECTIONS.insert_sql("flowenricher", [_detection(*row) for row in rows]), "TSV")
        latest = _get(env, "/api/v1/detections")["detections"]
        assert [d["address"] for d in latest] == ["84.54.49.8", "2001:db8::1", "84.54.49.7"]
        assert latest[0]["detected_at"].endswith("Z") and latest[0]["samples"] == [{"dst_port": 443}]
        assert [d["flows"] for d in _get(env, "/api/v1/detections", rule="syn_flood")["detections"]] == [7000, 5000]
        assert [d["address"] for d in _get(env, "/api/v1/detections", rule="it's a scan")["detections"]] == [
            "2001:db8::1"]
        old = _get(env, "/api/v1/detections", key="84.54.49.7", **{"from": START - 86400, "to": END})["detections"]
        assert [d["flows"] for d in old] == [5000, 1]
        assert [d["rule"] for d in _get(env, "/api/v1/detections", key="src")["detections"]] == ["it's a scan"]
        assert _get(env, "/api/v1/detections", limit=1)["detections"][0]["address"] == "84.54.49.8"
    finally:
        store.query("DROP TABLE flowenricher.detections", "TSV")


def _detection(at: int, rule: str, key: str, address: str, flows: int) -> dict[str, Any]:
    """A detections row as the description takes it: every column given, so a renamed one fails here."""
    return {"detected_at": at, "rule": rule, "key": key, "address": address, "dst_addr": None, "dst_port": None,
            "window_s": 10.0, "flows": flows, "packets": 0, "bytes": 0, "pps": 0.0, "bps": 0.0, "syn_ratio": 0.0,
            "unique_dst_ips": None, "unique_dst_ports": None, "unique_src_ips": None, "first_seen": at - 10,
            "last_seen": at, "anomaly_score": None, "actions": ["alert"], "blackhole": False,
            "samples": json.dumps([{"dst_port": 443}])}


def test_lookup(tmp_path: Path) -> None:
    reader = maxminddb.open_database(str(GEOIP / "GeoLite2-ASN-Test.mmdb"))

    def lookup(ip: str) -> dict[str, Any]:
        record = reader.get(ip)
        asn = record if isinstance(record, dict) else {}
        return {"ip": ip, "asn": asn.get("autonomous_system_number", 0),
                "as_name": asn.get("autonomous_system_organization", "")}

    try:
        env = make_env(tmp_path, lookup=lookup)
        body = _get(env, "/api/v1/lookup/1.0.0.1")
        assert body == {"ip": "1.0.0.1", "asn": 15169, "as_name": "Google Inc."}
        bad = env.client.get("/api/v1/lookup/1.0.0.256", headers=env.headers())
        assert bad.status_code == 422 and bad.json()["problems"][0]["path"] == "path.ip"
    finally:
        reader.close()
    (tmp_path / "bare").mkdir()
    without = make_env(tmp_path / "bare")
    assert without.client.get("/api/v1/lookup/1.0.0.1", headers=without.headers()).status_code == 503


def test_store_down_is_503_counted_and_the_status_page_still_renders(tmp_path: Path) -> None:
    def down(_sql: str, _fmt: str) -> bytes:
        raise StoreError("embedded store: query failed: connection closed")

    env = make_env(tmp_path, query=down)
    response = env.client.get("/api/v1/flows/top", params={"by": "proto"}, headers=env.headers())
    assert response.status_code == 503 and "connection closed" not in response.text
    for path in ("/health", "/health/ready"):  # a probe reads the status code, not the body
        health = env.client.get(path)
        assert health.status_code == 503 and health.json()["status"] == "degraded" and health.json()["store"] is False
    assert env.client.get("/health/live").status_code == 200  # the process itself is alive
    env.manager.announce("198.51.100.9", communities=["65535:666"])  # blackholes do not need the store
    page = env.client.get("/", headers=env.headers())
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    health_line = _health(page.text)
    assert health_line["store"] == ("bad", "DOWN: does not answer a query")
    for item in ("last flow", "flows/s", "bits/s", "drops"):
        assert health_line[item] == ("unknown", "unknown: the flow store does not answer"), item
    assert health_line["blackholes"] == ("ok", f"1 {env.manager.active()[0].state}")
    assert "198.51.100.9/32" in page.text
    assert page.text.count("<svg") == 4 and page.text.count("unknown: the flow store does not answer</text>") == 4
    assert "detections and top talkers: the flow store does not answer" in page.text
    # the page asks the store once (its readiness check), not once per section
    assert env.registry.get_sample_value("flowenricher_api_store_errors_total") == 4.0


def _health(page: str, which: str = "health") -> dict[str, tuple[str, str]]:
    """The page's health line (or the per-exporter list): label -> (level, text)."""
    start = page.index('<ul class="health" id="health">' if which == "health" else '<ul class="health exporters">')
    items = re.findall(r'<li class="(\w+)"><b>([^<]*)</b>([^<]*)</li>', page[start:page.index("</ul>", start)])
    return {html.unescape(label): (level, html.unescape(text)) for level, label, text in items}


def _svgs(page: str) -> dict[str, str]:
    """Each chart's SVG by its caption."""
    return {m.group(1): m.group(2) for m in re.finditer(r"<figcaption>([^<]*)</figcaption>(<svg.*?</svg>)", page)}


def test_status_page(env: ApiEnv, batch: FlowBatch, store: FlowStore) -> None:
    env.manager.request("198.51.100.66", None, ["65001:666"], 3600, "<script>alert(1)</script>",
                        {"key": "src", "flows": 1234})
    store.query(DETECTIONS.create_sql("flowenricher"), "TSV")
    try:
        rows = [(END - 600, "syn_flood", "dst", "84.54.49.7", 5000), (END - 300, "scan", "src", "2001:db8::1", 80)]
        store.query(DETECTIONS.insert_sql("flowenricher", [_detection(*row) for row in rows]), "TSV")
        stats = [(END - 100, "::", "kernel_drops", 0.0), (END - 100, "10.0.0.1", "dropped.no_template", 7.0),
                 (END - 90, "::", "rows_inserted", 500.0), (END - 4000, "::", "kernel_drops", 30.0)]
        store.query(COLLECTOR_STATS.insert_sql("flowenricher", [
            {"ts": ts, "exporter_address": exporter, "metric": metric, "value": value}
            for ts, exporter, metric, value in stats]), "TSV")
        page = env.client.get("/", headers=env.headers(env.reader))
    finally:
        store.query("DROP TABLE flowenricher.detections", "TSV")
        store.query("TRUNCATE TABLE flowenricher.collector_stats", "TSV")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    text = page.text
    assert "198.51.100.66/32" in text and "rule &lt;script&gt;alert(1)&lt;/script&gt;, as src, 1,234 flows" in text
    assert "<script>" not in text
    top_source = expected_top(batch, "src_addr", END - HOUR, END, 1)[0]["key"]
    assert top_source in text
    # detections: time, rule, key, the address, flows
    assert re.search(r"<td>syn_flood</td><td>dst</td><td>84\.54\.49\.7</td><td></td><td>5,000</td>", text)
    assert re.search(r"<td>scan</td><td>src</td><td>2001:db8::1</td><td></td><td>80</td>", text)
    # the health line, from the store and the blackhole manager
    health = _health(text)
    assert health["store"] == ("ok", "answers")
    assert health["collector"] == ("unknown", "unknown: this API has no collector to ask")
    minute = END - END % 60
    in_minute = (batch["timestamp_start"] >= minute - 60) & (batch["timestamp_start"] < minute)
    assert health["flows/s"][1] == f"{int(in_minute.sum()) / 60:.1f}"
    assert health["drops, last 5 min"] == ("bad", "kernel 0, decoder 7, store 0")
    assert health["blackholes"][1] == f"1 {env.manager.active()[0].state}"
    assert health["spool"][0] == "unknown" and health["BGP RIB"][0] == "unknown"
    assert set(_health(text, "exporters")) == {"10.0.0.1", "10.0.0.2"}
    # the charts: traffic, the drops of collector_stats, the two detections
    charts = _svgs(text)
    assert set(charts) == {"flows/s", "bits/s", "drops per 5 min", "detections per 5 min"}
    assert "<polyline" in charts["flows/s"] and "<polyline" in charts["bits/s"]
    assert "<polyline" in charts["drops per 5 min"] and "max 30" in charts["drops per 5 min"]
    assert "<polyline" in charts["detections per 5 min"] and "max 1" in charts["detections per 5 min"]
    # the raw counters moved to /metrics
    assert "flowenricher_blackhole_actions_total" not in text
    assert "http://" not in text and "https://" not in text


def test_status_page_without_traffic(tmp_path: Path, store: FlowStore) -> None:
    """A day after the last flow: every chart says "no data" and the health line that no
    data flows (one chDB store per process, so the same store, later)."""
    env = make_env(tmp_path, store, clock=lambda: float(END + 86400))
    page = env.client.get("/", headers=env.headers(env.reader))
    assert page.status_code == 200
    health = _health(page.text)
    assert health["last flow"] == ("bad", "none in the last hour: no data is flowing")
    assert health["flows/s"] == ("warn", "0") and health["bits/s"] == ("warn", "0 b/s")
    assert health["drops"] == ("unknown", "unknown: nothing recorded in collector_stats in the last 5 min")
    charts = _svgs(page.text)
    assert len(charts) == 4 and all("no data" in svg and "<polyline" not in svg for svg in charts.values())
    assert "none in the last 24 hours" in page.text and "no active blackholes" in page.text


def _scan(source: str, at: int, n: int = 80) -> FlowBatch:
    """A horizontal scan of port 22 by `source`: what RULES_TEXT's rule (alert only) detects."""
    f = Flows.empty(n)
    f.src_addr = text_rows([source] * n)
    f.dst_addr = text_rows([f"84.54.49.{i + 1}" for i in range(n)])
    f.dst_port[:] = 22
    f.proto[:] = 6
    f.packets[:] = 1
    f.bytes[:] = 44
    f.flow_direction[:] = 1
    f.end_ms[:] = f.start_ms[:] = at * 1000
    out = f.to_flow_batch()
    out["received_at"] = np.full(n, at, dtype=np.uint32)
    return out


def test_alert_only_detections_reach_the_api_and_the_page(env: ApiEnv, store: FlowStore) -> None:
    """The shipped rules only alert; their detections are still rows of the detections
    table, so /api/v1/detections and the status page show them."""
    rules = parse_rule_set(yaml.safe_load(env.rules_path.read_text()))
    assert [r.actions for r in rules] == [("alert",)]
    store.query(DETECTIONS.create_sql("flowenricher"), "TSV")
    try:
        table = ClickHouseDetections(lambda sql: store.query(sql, "TSV"), "flowenricher",
                                     DeliveryMetrics(CollectorRegistry()))
        alerts = AlertLog(env.rules_path.parent / "detections.log", DeliveryMetrics(CollectorRegistry()))
        engine = DetectionEngine(rules, [alerts, table], CollectorRegistry())
        engine.process(_scan("203.0.113.77", END - 120))
        engine.evaluate(END - 119)
        assert table.flush(10)
        engine.close()
        found = _get(env, "/api/v1/detections")["detections"]
        page = env.client.get("/", headers=env.headers(env.reader)).text
    finally:
        store.query("DROP TABLE flowenricher.detections", "TSV")
    assert [(d["rule"], d["key"], d["address"], d["actions"]) for d in found] == [
        ("slow_horizontal_scan", "src", "203.0.113.77", ["alert"])]
    assert "<td>slow_horizontal_scan</td><td>src</td><td>203.0.113.77</td><td>port 22</td>" in page
    assert "203.0.113.77" in (env.rules_path.parent / "detections.log").read_text()
