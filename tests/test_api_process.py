"""The API as its own process (`flowenricher api`) beside the collector (`flowenricher run`).

First the control socket's new requests, against a real ControlServer in this process
with a real blackhole manager and state DB (GoBGP replaced by the recording stand-in,
as in the other API tests; the gobgpd path has its own test); then the API built by
remote.py over that socket; then both commands as real subprocesses on loopback: the
original calls, a refusal, lookup, top N after generated traffic, exporter counters,
rules and config replacements applied by the collector, and 503 while it is stopped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from support import FlowenricherProcess, flowenricher_argv, free_port, sample_batch
from support.anomaly import trained
from support.api import SAFETY, make_env
from support.clickhouse_http import ClickHouseHTTPStandIn
from support.recording_gobgp import RecordingGoBGP

from appliance.api import create_app
from appliance.api.errors import Unavailable
from appliance.api.remote import RemoteApi, RemoteCollector, remote_deps
from appliance.api.tokens import create_token
from appliance.flowenricher import control
from appliance.flowenricher.blackhole.manager import BlackholeManager, Defaults
from appliance.flowenricher.blackhole.safety import Refused, SafetyPolicy
from appliance.flowenricher.blackhole.state import StateDB
from appliance.flowenricher.collector_local import LocalCollector
from appliance.flowenricher.config import load_config
from appliance.flowenricher.control import CollectorUnavailable, ControlServer
from appliance.flowenricher.detect.features import FEATURE_NAMES
from appliance.flowenricher.detect.rules import load_rule_set
from appliance.flowenricher.errors import ConfigError, StoreError
from appliance.flowenricher.service import Runtime
from appliance.flowenricher.storage import StoreSettings
from appliance.flowenricher.storage.server import ServerStore
from appliance.flowenricher.wiring import safety_settings

REPO = Path(__file__).resolve().parent.parent
GEOIP = REPO / "tests" / "data" / "geoip"

RULES = """\
- name: slow_horizontal_scan
  proto: tcp
  same_dst_port: true
  unique_dst_ips: 50
  min_flows: 70
  time_window: 60s
  action: alert
"""

LONG_WINDOW_RULE = RULES.replace("time_window: 60s", "time_window: 10m")
"""Valid for the schema, refused by a collector whose detection.flow_cache_max_window is 5m."""


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A data directory with a short path: a Unix socket's path is limited to 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="fe-api-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- the control requests


@dataclass
class CollectorSide:
    """What `flowenricher run` holds, in this process: manager, state, control socket."""

    data: Path
    manager: BlackholeManager
    gobgp: RecordingGoBGP
    runtime: Runtime
    server: ControlServer

    def call(self, op: str, **fields: Any) -> Any:
        return control.call(str(self.data), op, 10.0, **fields)


def _config(data: Path, extra: str = "") -> Path:
    path = data / "config.yaml"
    path.write_text(f"storage: {{path: {json.dumps(str(data))}}}\nmy_prefixes: [84.54.49.0/24]\n"
                    "detection: {flow_cache_max_window: 5m}\n" + extra)
    return path


@pytest.fixture
def collector_side(short_dir: Path) -> Iterator[CollectorSide]:
    config_path, rules_path = _config(short_dir), short_dir / "detection.yml"
    rules_path.write_text(RULES)
    cfg = load_config(config_path)
    state = StateDB(cfg.storage.state_db)
    gobgp = RecordingGoBGP()
    registry = CollectorRegistry()
    manager = BlackholeManager(state, gobgp, SafetyPolicy(SAFETY), short_dir / "blackholes.txt", Defaults(),
                               registry)

    def reload_rules() -> int:  # the collector's part: the file it reads, with its window limit
        return len(load_rule_set(rules_path, max_window_s=300))

    def reload_config() -> list[str]:
        new = load_config(config_path)
        manager.policy = SafetyPolicy(safety_settings(new))
        return []

    runtime = Runtime(blackholes=manager, config_path=config_path, rules_path=rules_path,
                      exporter_counters=lambda: {"10.0.0.1": {"datagrams": 7, "templates": 2}},
                      interfaces=lambda: {"10.0.0.1": {3: "ether1", 12: "sfp-sfpplus1"}},
                      reload_rules=reload_rules, reload_config=reload_config)

    def query(_sql: str, _fmt: str) -> bytes:
        raise StoreError("this test runs no flow store")

    def lookup(ip: str) -> dict[str, Any]:
        if ip == "nonsense":
            raise ValueError(f"{ip!r} is not an IP address")
        return {"ip": ip, "mine": ip.startswith("84.54.49.")}

    server = ControlServer(str(short_dir), query, lookup, LocalCollector(runtime, registry))
    server.start()
    try:
        yield CollectorSide(short_dir, manager, gobgp, runtime, server)
    finally:
        server.stop()
        state.close()


def test_announce_withdraw_active_history(collector_side: CollectorSide) -> None:
    answer = collector_side.call("blackhole-announce", prefix="149.202.68.236", next_hop="192.0.2.1",
                                 communities=["216285:666"], evidence={"requested_by": "ops"})
    assert answer["dry_run"] is False
    assert answer["blackhole"]["prefix"] == "149.202.68.236/32" and answer["blackhole"]["announced"] is True
    assert collector_side.gobgp.held == {"149.202.68.236/32": ("192.0.2.1", ("216285:666",))}
    active = collector_side.call("blackhole-active")["blackholes"]
    assert [b["prefix"] for b in active] == ["149.202.68.236/32"]

    withdrawn = collector_side.call("blackhole-withdraw", prefix="149.202.68.236/32", reason="api:ops")
    assert withdrawn["blackhole"]["withdrawn_at"] is not None  # the row as withdrawn
    assert collector_side.gobgp.held == {}
    assert collector_side.call("blackhole-withdraw", prefix="149.202.68.236/32") == {"blackhole": None}
    assert collector_side.call("blackhole-active") == {"blackholes": []}
    history = collector_side.call("blackhole-history", limit=10)["blackholes"]
    assert [(b["prefix"], b["evidence"]) for b in history] == [("149.202.68.236/32", {"requested_by": "ops"})]


def test_refusal_comes_back_as_refused_with_the_policy_sentence(collector_side: CollectorSide) -> None:
    with pytest.raises(Refused) as direct:
        collector_side.manager.announce("84.54.49.1")
    with pytest.raises(Refused) as remote:
        collector_side.call("blackhole-announce", prefix="84.54.49.1")
    assert str(remote.value) == str(direct.value)
    assert "never-blackhole list" in str(remote.value)
    assert collector_side.gobgp.ever == []


def test_counters_interfaces_and_status(collector_side: CollectorSide) -> None:
    assert collector_side.call("exporter-counters") == {"10.0.0.1": {"datagrams": 7, "templates": 2}}
    assert collector_side.call("interface-names") == {"interfaces": {"10.0.0.1": {"3": "ether1", "12": "sfp-sfpplus1"}}}
    status = collector_side.call("status")
    assert status["rules"] == str(collector_side.runtime.rules_path)
    collector_side.runtime.interfaces = None  # no SNMP in this collector
    assert collector_side.call("interface-names") == {"interfaces": None}


def test_reload_rules_answers_whether_accepted(collector_side: CollectorSide) -> None:
    rules_path = collector_side.runtime.rules_path
    assert rules_path is not None
    assert collector_side.call("reload-rules", path=str(rules_path)) == {"accepted": True, "rules": 1}
    rules_path.write_text(LONG_WINDOW_RULE)
    with pytest.raises(ConfigError) as refused:
        collector_side.call("reload-rules", path=str(rules_path))
    assert any("time_window" in line and "flow_cache_max_window" in line for line in refused.value.problems), \
        refused.value.problems
    other = collector_side.data / "other.yml"
    other.write_text(RULES)
    with pytest.raises(StoreError, match=re.escape(f"reads its rules from {rules_path}, not {other}")):
        collector_side.call("reload-rules", path=str(other))


def test_apply_config_re_reads_the_file(collector_side: CollectorSide) -> None:
    config_path = collector_side.runtime.config_path
    assert config_path is not None
    _config(collector_side.data, "blackhole: {never: [149.202.68.0/24]}\n")
    assert collector_side.call("apply-config", path=str(config_path)) == {"applied": True, "at_next_start": []}
    with pytest.raises(Refused, match=re.escape("149.202.68.0/24 in the never-blackhole list")):
        collector_side.call("blackhole-announce", prefix="149.202.68.236")


def test_bad_requests_and_failures_are_answered(collector_side: CollectorSide, caplog: Any) -> None:
    with pytest.raises(ValueError, match=r"does not answer 'nonsense' .*blackhole-announce"):
        collector_side.call("nonsense")
    with pytest.raises(ValueError, match="communities: expected a list"):
        collector_side.call("blackhole-announce", prefix="149.202.68.236", communities="65535:666")
    with pytest.raises(ValueError, match="limit 0: must be at least 1"):
        collector_side.call("blackhole-history", limit=0)
    with pytest.raises(ValueError, match="'nonsense' is not an IP address"):
        control.lookup_running(str(collector_side.data), "nonsense")
    # A failure the handler did not expect is an answer naming it, and the socket keeps serving.
    def broken() -> dict[str, dict[str, int]]:
        return {"10.0.0.1": {"datagrams": 1 // len("")}}

    collector_side.runtime.exporter_counters = broken
    with caplog.at_level(logging.ERROR), pytest.raises(StoreError, match="ZeroDivisionError"):
        collector_side.call("exporter-counters")
    assert "control socket: request failed" in caplog.text
    assert collector_side.call("blackhole-active") == {"blackholes": []}


def test_no_collector_is_unavailable_and_logged_once(short_dir: Path, caplog: Any) -> None:
    with pytest.raises(CollectorUnavailable, match=r"no collector answers on .*flowenricher\.sock"):
        control.call(str(short_dir), "status")
    collector = RemoteCollector(str(short_dir))
    with caplog.at_level(logging.INFO, logger="appliance.api.remote"):
        for _ in range(3):
            with pytest.raises(Unavailable):
                collector.operations().blackhole_active()
    assert caplog.text.count("no collector answers") == 1


# --------------------------------------------------------------------------- the API over the socket


@dataclass
class RemoteClient:
    client: TestClient
    token: str
    remote: RemoteApi


@pytest.fixture
def api_client(collector_side: CollectorSide) -> Iterator[RemoteClient]:
    """The app `flowenricher api` serves, over collector_side's socket."""
    side = collector_side
    assert side.runtime.config_path is not None
    cfg = load_config(side.runtime.config_path)
    remote = remote_deps(cfg, side.runtime.config_path, side.runtime.rules_path)
    try:
        token = create_token(remote.deps.blackholes.state.engine, "admin", "ops").token
        yield RemoteClient(TestClient(create_app(remote.deps)), token, remote)
    finally:
        remote.close()


def test_api_over_the_socket_answers_as_in_process(collector_side: CollectorSide, api_client: RemoteClient,
                                                   tmp_path: Path) -> None:
    client, token = api_client.client, api_client.token
    headers = {"Authorization": f"Bearer {token}"}
    body = {"prefix": "84.54.49.1/32", "next_hop": "192.0.2.1", "communities": ["65535:666"]}
    refused = client.post("/announce", json=body, headers=headers)
    in_process = make_env(tmp_path)
    local = in_process.client.post("/announce", json=body, headers=in_process.headers())
    assert (refused.status_code, refused.json()) == (local.status_code, local.json())
    assert refused.status_code == 409 and "never-blackhole list" in refused.json()["detail"]

    ok = client.post("/announce", json={**body, "prefix": "149.202.68.236/32"}, headers=headers)
    assert ok.status_code == 200, ok.text
    assert list(client.get("/blackholes", headers=headers).json()) == ["149.202.68.236/32"]
    history = client.get("/api/v1/blackholes/history", headers=headers).json()
    assert history[0]["evidence"]["requested_by"] == "ops"
    assert client.post("/withdraw", json={"prefix": "149.202.68.236/32"}, headers=headers).status_code == 200
    assert collector_side.gobgp.held == {}
    assert client.get("/api/v1/lookup/84.54.49.7", headers=headers).json() == {"ip": "84.54.49.7", "mine": True}
    audit = client.get("/api/v1/audit", headers=headers).json()  # written by the API process, same state DB
    assert [a["path"] for a in audit][:2] == ["/withdraw", "/announce"]
    # The collector's metrics beside the API's own on /metrics; the status page reads the
    # collector over the socket (the raw counters are left to /metrics).
    metrics = client.get("/metrics", headers=headers).text
    assert 'flowenricher_blackhole_actions_total{action="announce",source="api"} 1.0' in metrics
    assert "flowenricher_api_store_errors_total" in metrics  # the API process's own
    page = client.get("/", headers=headers).text
    assert "<b>collector</b>answers" in page and "<b>blackholes</b>none active" in page
    assert "<b>store</b>DOWN" in page  # this collector runs no flow store


def test_anomaly_scoring_is_served_from_the_collectors_model(collector_side: CollectorSide, api_client: RemoteClient,
                                                              tmp_path: Path) -> None:
    """The model lives in the collector (it trains it from the flows): the API process's
    scoring endpoints answer with its scores, and 503 while it has no scoring."""
    headers = {"Authorization": f"Bearer {api_client.token}"}
    client = api_client.client
    off = client.post("/api/v1/anomaly/score", json={"vectors": []}, headers=headers)
    assert off.status_code == 503 and "not enabled" in off.json()["detail"], off.text
    assert client.get("/api/v1/anomaly/model", headers=headers).status_code == 503

    scoring = trained(tmp_path / "model", seconds=120)
    collector_side.runtime.anomaly = scoring
    assert scoring.model is not None
    vectors = [[0.0] * len(FEATURE_NAMES), [50.0] * len(FEATURE_NAMES)]
    for path in ("/api/v1/anomaly/score", "/score"):
        answer = client.post(path, json={"vectors": vectors}, headers=headers)
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["scores"] == pytest.approx(scoring.model.score(vectors).tolist())
        assert body["threshold"] == pytest.approx(scoring.model.threshold)
        assert body["feature_names"] == list(FEATURE_NAMES)
    bad = client.post("/score", json={"vectors": [[1.0, 2.0]]}, headers=headers)
    assert bad.status_code == 422 and "$.vectors[0]" in bad.text  # checked in the API process
    assert client.get("/api/v1/anomaly/model", headers=headers).json() == json.loads(json.dumps(scoring.status()))


def test_dry_run_of_the_collector_is_reported(collector_side: CollectorSide, api_client: RemoteClient) -> None:
    collector_side.manager.policy = SafetyPolicy(dataclasses.replace(SAFETY, dry_run=True))
    answer = api_client.client.post("/api/v1/blackholes", json={"prefix": "149.202.68.236/32"},
                                    headers={"Authorization": f"Bearer {api_client.token}"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["dry_run"] is True
    assert collector_side.gobgp.ever == []


def test_rules_refused_by_the_collector_leave_the_file(collector_side: CollectorSide, api_client: RemoteClient) -> None:
    client, token = api_client.client, api_client.token
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/yaml"}
    rules_path = collector_side.runtime.rules_path
    assert rules_path is not None
    answer = client.put("/api/v1/rules", content=LONG_WINDOW_RULE, headers=headers)
    assert answer.status_code == 422, answer.text
    assert any("flow_cache_max_window" in p["reason"] for p in answer.json()["problems"]), answer.json()
    assert rules_path.read_text() == RULES  # put back
    accepted = client.put("/api/v1/rules", content=RULES.replace("min_flows: 70", "min_flows: 90"), headers=headers)
    assert accepted.status_code == 200, accepted.text
    assert "min_flows: 90" in rules_path.read_text()


def test_without_collector_503_and_files_unchanged(collector_side: CollectorSide, api_client: RemoteClient) -> None:
    client, token = api_client.client, api_client.token
    headers = {"Authorization": f"Bearer {token}"}
    assert client.get("/health/ready").json()["collector"] is True
    collector_side.server.stop()
    for path in ("/blackholes", "/api/v1/blackholes", "/api/v1/blackholes/history", "/api/v1/lookup/1.1.1.1",
                 "/api/v1/flows/top?by=src_host", "/api/v1/exporters"):
        assert client.get(path, headers=headers).status_code == 503, path
    # the status page is the operator's view of exactly this: HTML (200) saying what is down
    page = client.get("/", headers=headers)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), page.text
    assert "<b>collector</b>DOWN: flowenricher run does not answer" in page.text
    assert "<b>store</b>DOWN: does not answer a query" in page.text  # embedded: queried through the collector
    assert "<b>blackholes</b>unknown: the collector (flowenricher run) is not answering" in page.text
    assert "<b>spool</b>unknown: the collector does not answer" in page.text
    assert client.post("/announce", json={"prefix": "149.202.68.236/32"}, headers=headers).status_code == 503
    rules_path = collector_side.runtime.rules_path
    assert rules_path is not None
    replaced = client.put("/api/v1/rules", content=RULES.replace("min_flows: 70", "min_flows: 90"),
                          headers={**headers, "Content-Type": "application/yaml"})
    assert replaced.status_code == 503
    assert rules_path.read_text() == RULES
    health = client.get("/health/ready")
    assert health.status_code == 503 and health.json()["collector"] is False, health.text
    assert client.get("/health/live").status_code == 200


def test_server_mode_queries_the_server_without_the_collector(short_dir: Path) -> None:
    """With clickhouse.host the API reads flows from the server itself (clickhouse-connect
    against the HTTP stand-in over chDB): top N answers while no collector runs."""
    with ClickHouseHTTPStandIn(str(short_dir / "server")) as ch:
        store = ServerStore(StoreSettings(host="127.0.0.1", port=ch.port))
        store.migrate()
        start = int(time.time()) // 3600 * 3600 - 3600
        store.insert(sample_batch(2000, seed=3, start=start))
        cfg = load_config(_config(short_dir, f"clickhouse: {{host: 127.0.0.1, port: {ch.port}}}\n"))
        remote = remote_deps(cfg, None, None)
        try:
            token = create_token(remote.deps.blackholes.state.engine, "read", "grafana").token
            client = TestClient(create_app(remote.deps))
            headers = {"Authorization": f"Bearer {token}"}
            span = {"from": start, "to": start + 3600}
            top = client.get("/api/v1/flows/top", params={"by": "proto", "limit": 50, **span}, headers=headers)
            assert top.status_code == 200, top.text
            assert sum(row["flows"] for row in top.json()["rows"]) == 2000
            assert client.get("/blackholes", headers=headers).status_code == 503  # that needs the collector
        finally:
            remote.close()
            store.close()


def test_api_command_refuses_when_the_collector_serves_the_api(short_dir: Path, capsys: Any) -> None:
    from appliance.cli import main

    config = _config(short_dir)  # api.enabled defaults to true
    assert main(["api", "--config", str(config)]) == 2
    assert "$.api.enabled: true" in capsys.readouterr().err
    missing = _config(short_dir, "api: {enabled: false}\n")
    assert main(["api", "--config", str(missing), "--rules", str(short_dir / "nope.yml")]) == 2
    assert "nope.yml does not exist" in capsys.readouterr().err


# --------------------------------------------------------------------------- two processes, one state DB


WRITE_TOKENS = """
import sys
from appliance.api.tokens import create_token
from appliance.flowenricher.blackhole.state import StateDB
state = StateDB(sys.argv[1])
for i in range(int(sys.argv[2])):
    create_token(state.engine, "read", f"writer-{i}")
state.close()
"""


def test_two_processes_write_one_state_db(short_dir: Path) -> None:
    """The API process writes tokens and audit rows while the collector's manager writes
    blackholes, on one SQLite file: neither sees "database is locked"."""
    url = f"sqlite:///{short_dir}/state.db"
    manager = BlackholeManager(StateDB(url), RecordingGoBGP(), SafetyPolicy(SAFETY), None, Defaults(),
                               CollectorRegistry())
    writer = subprocess.Popen([sys.executable, "-c", WRITE_TOKENS, url, "300"], stderr=subprocess.PIPE, text=True)
    try:
        for i in range(150):  # announcements and withdrawals while the other process writes
            manager.announce(f"149.202.{i // 200}.{i % 200 + 1}")
            manager.withdraw(f"149.202.{i // 200}.{i % 200 + 1}")
    finally:
        _, errors = writer.communicate(timeout=120)
    assert writer.returncode == 0, errors
    assert len(manager.state.history(1000)) == 150
    with manager.state.engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM api_tokens").scalar() == 300
    manager.state.close()


# --------------------------------------------------------------------------- real processes


@pytest.fixture
def appliance(short_dir: Path) -> Iterator[dict[str, Any]]:
    port, api_port = free_port(), free_port(socket.SOCK_STREAM)
    rules = short_dir / "detection.yml"
    rules.write_text(RULES)
    config = short_dir / "config.yaml"
    config.write_text(
        "collectors:\n"
        f"  listeners: [{{address: 127.0.0.1, port: {port}, protocol: netflow}}]\n"
        "  workers: 1\n"
        f"storage: {{path: {json.dumps(str(short_dir / 'data'))}}}\n"
        "insert: {batch_size: 5000, flush_interval_ms: 200}\n"
        f'metrics: {{listen: "127.0.0.1:{free_port(socket.SOCK_STREAM)}"}}\n'
        f'api: {{listen: "127.0.0.1:{api_port}", enabled: false}}\n'
        "enrich: geoip\n"
        f"geoip: {{asn_db: {json.dumps(str(GEOIP / 'GeoLite2-ASN-Test.mmdb'))},"
        f" city_db: {json.dumps(str(GEOIP / 'GeoIP2-City-Test.mmdb'))}}}\n"
        "my_prefixes: [84.54.49.0/24, 194.153.116.0/24, 2a14:4280::/29]\n"
        "networks:\n"
        "  84.54.49.0/25: {name: rack-a, customer: acme}\n"
        "detection:\n"
        "  enable_detection_engine: true\n"
        "  flow_cache_max_window: 5m\n"
        f"  rules_config: {json.dumps(str(rules))}\n"
        f"  alerts_log: {json.dumps(str(short_dir / 'detections.log'))}\n"
    )
    started: list[FlowenricherProcess] = []

    def start(name: str, *args: str) -> FlowenricherProcess:
        proc = FlowenricherProcess(short_dir, name, *args, "--config", str(config))
        started.append(proc)
        return proc

    try:
        yield {"dir": short_dir, "config": config, "rules": rules, "port": port,
               "api": f"http://127.0.0.1:{api_port}", "start": start}
    finally:
        for proc in started:
            proc.stop()


def test_api_process_beside_the_collector(appliance: dict[str, Any]) -> None:
    start, api = appliance["start"], appliance["api"]
    token = subprocess.run([*flowenricher_argv(), "token", "create", "--scope", "admin", "--config",
                            str(appliance["config"])],
                           capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    headers = {"Authorization": f"Bearer {token}"}

    # The API starts before the collector: what needs the collector is a 503 meanwhile.
    server = start("api", "api")
    server.wait_for(lambda: "API on http://" in server.output(), 60, "the API listening")
    assert httpx.get(f"{api}/blackholes", headers=headers).status_code == 503
    assert httpx.get(f"{api}/health").status_code == 503  # not ready: no collector answers
    assert httpx.get(f"{api}/health/live").status_code == 200
    collector = start("run", "run")
    collector.wait_for(lambda: "listening:" in collector.output(), 90, "the collector listening")
    server.wait_for(lambda: httpx.get(f"{api}/blackholes", headers=headers).status_code == 200, 30,
                    "the API reaching the collector")
    assert "collector: answering again" in server.output()
    ready = httpx.get(f"{api}/health/ready")
    assert ready.status_code == 200 and ready.json() == {"status": "ok", "store": True, "collector": True}

    # The original calls; no GoBGP runs here, so the announcement is kept and retried:
    # requested, not in force (the original listing shows only what GoBGP took).
    assert httpx.get(f"{api}/blackholes", headers=headers).json() == {}
    body = {"prefix": "149.202.68.236/32", "next_hop": "192.0.2.1", "communities": ["216285:666"]}
    assert httpx.post(f"{api}/announce", json=body, headers=headers).status_code == 200
    assert httpx.get(f"{api}/blackholes", headers=headers).json() == {}
    held = httpx.get(f"{api}/api/v1/blackholes", headers=headers).json()
    assert [(b["prefix"], b["next_hop"], b["state"]) for b in held] == [
        ("149.202.68.236/32", "192.0.2.1", "requested")]
    assert "GoBGP did not take it" in collector.output()  # the collector's manager did the work
    refused = httpx.post(f"{api}/announce", json={**body, "prefix": "84.54.49.0/24"}, headers=headers)
    assert refused.status_code == 409 and "shorter than /32" in refused.json()["detail"], refused.text
    assert httpx.post(f"{api}/withdraw", json={"prefix": "149.202.68.236/32"}, headers=headers).status_code == 200
    assert httpx.get(f"{api}/blackholes", headers=headers).json() == {}
    history = httpx.get(f"{api}/api/v1/blackholes/history", headers=headers).json()
    assert history[0]["withdrawn_at"] is not None, history

    # Lookup through the collector's enrichment sources.
    info = httpx.get(f"{api}/api/v1/lookup/84.54.49.10", headers=headers).json()
    assert info["mine"] is True and info["network"] == {"name": "rack-a", "customer": "acme"}
    assert httpx.get(f"{api}/api/v1/lookup/1.0.0.1", headers=headers).json()["geo"]["asn"] == 15169

    # Flows: top N from the embedded store (owned by the collector) after generated traffic.
    sent = subprocess.run([*flowenricher_argv(), "generate", "--to", f"127.0.0.1:{appliance['port']}", "--fps", "5000",
                           "--duration", "2", "--protocol", "ipfix"], capture_output=True, text=True, timeout=120)
    assert sent.returncode == 0, sent.stderr

    def top() -> list[dict[str, Any]]:
        answer = httpx.get(f"{api}/api/v1/flows/top", params={"by": "dst_port", "limit": 5}, headers=headers)
        assert answer.status_code == 200, answer.text
        rows: list[dict[str, Any]] = answer.json()["rows"]
        return rows

    server.wait_for(lambda: sum(r["flows"] for r in top()) > 0, 30, "flows in the top N")
    exporters = httpx.get(f"{api}/api/v1/exporters", headers=headers).json()["exporters"]
    assert exporters and exporters[0]["counters"].get("datagrams", 0) > 0, exporters
    assert 'flowenricher_decoder_datagrams_total{exporter="127.0.0.1"' in httpx.get(f"{api}/metrics",
                                                                                  headers=headers).text

    # Rules: a replacement the collector refuses (window beyond its flow cache) changes
    # nothing; one it accepts is applied by the collector's engine.
    yaml_headers = {**headers, "Content-Type": "application/yaml"}
    refused_rules = httpx.put(f"{api}/api/v1/rules", content=LONG_WINDOW_RULE, headers=yaml_headers)
    assert refused_rules.status_code == 422 and "flow_cache_max_window" in refused_rules.text, refused_rules.text
    assert appliance["rules"].read_text() == RULES
    new_rules = RULES.replace("slow_horizontal_scan", "scan_via_api")
    assert httpx.put(f"{api}/api/v1/rules", content=new_rules, headers=yaml_headers).status_code == 200
    assert f"reloaded 1 rule(s) from {appliance['rules']} on request" in collector.output()
    assert [r["name"] for r in httpx.get(f"{api}/api/v1/rules", headers=headers).json()["rules"]] == ["scan_via_api"]

    # Config: a replacement the collector applies live (its safety policy now refuses the prefix).
    config = httpx.get(f"{api}/api/v1/config", headers=headers).json()["config"]
    config["blackhole"] = {"never": ["149.202.68.0/24"]}
    assert httpx.put(f"{api}/api/v1/config", json=config, headers=headers).status_code == 200
    never = httpx.post(f"{api}/announce", json=body, headers=headers)
    assert never.status_code == 409 and "never-blackhole list" in never.json()["detail"], never.text

    # The collector stops: 503, not 500, and one log line for the outage.
    assert collector.stop() == 0
    for path in ("/blackholes", "/api/v1/lookup/1.0.0.1", "/api/v1/flows/top?by=dst_port", "/api/v1/exporters"):
        assert httpx.get(f"{api}{path}", headers=headers).status_code == 503, path
    assert httpx.post(f"{api}/announce", json=body, headers=headers).status_code == 503
    assert server.output().count("what needs it answers 503") == 2  # before the collector started, and now
    assert server.stop() == 0
