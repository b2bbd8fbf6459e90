"""End to end on loopback: `flowenricher generate` -> `flowenricher run` with enrichment
and detection -> the embedded store, detections.log, `lookup` and `sql` while it runs.

Real processes throughout: the collector and the exporter are the installed console
script, the GeoIP/ASN databases are MaxMind's test files (tests/data/geoip), the rules
are the shipped example detection.yml as shipped (alert only: every detection is still
a row of the detections table, which the status page shows).  The generated traffic is
a small AS whose own prefixes are the original config's (84.54.49.0/24, 194.153.116.0/24,
2a14:4280::/29), with a horizontal scan from outside injected.
"""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import FlowenricherProcess, flowenricher_argv, free_port

REPO = Path(__file__).resolve().parent.parent
GEOIP = REPO / "tests" / "data" / "geoip"
RULES = REPO / "appliance" / "flowenricher" / "examples" / "detection.yml"


class Service(FlowenricherProcess):
    """`flowenricher run` on a config with GeoIP, networks, detection and the API."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.api_port = free_port(socket.SOCK_STREAM)
        self.config = workdir / "config.yaml"
        rules = workdir / "detection.yml"  # the shipped rules as they are: alert only
        rules.write_text(RULES.read_text())
        self.config.write_text(
            "collectors:\n"
            f"  listeners: [{{address: 127.0.0.1, port: {self.port}, protocol: netflow}}]\n"
            "  workers: 1\n"
            f"storage: {{path: {json.dumps(str(workdir / 'data'))}}}\n"
            "insert: {batch_size: 5000, flush_interval_ms: 200}\n"
            f'metrics: {{listen: "127.0.0.1:{free_port(socket.SOCK_STREAM)}"}}\n'
            f'api: {{listen: "127.0.0.1:{self.api_port}"}}\n'
            "enrich: geoip\n"
            f"geoip: {{asn_db: {json.dumps(str(GEOIP / 'GeoLite2-ASN-Test.mmdb'))},"
            f" city_db: {json.dumps(str(GEOIP / 'GeoIP2-City-Test.mmdb'))}}}\n"
            "my_prefixes: [84.54.49.0/24, 194.153.116.0/24, 2a14:4280::/29]\n"
            "networks:\n"
            "  84.54.49.0/25: {name: rack-a, customer: acme}\n"
            "  194.153.116.0/24: office\n"
            "detection:\n"
            "  enable_detection_engine: true\n"
            f"  rules_config: {json.dumps(str(rules))}\n"
            f"  alerts_log: {json.dumps(str(workdir / 'detections.log'))}\n"
        )
        super().__init__(workdir, "service", "run", "--config", str(self.config))
        self.wait_for(lambda: "listening:" in self.output(), 60, "listening")

    def cli(self, *args: str) -> str:
        done = subprocess.run([*flowenricher_argv(), *args, "--config", str(self.config)], capture_output=True, text=True,
                              timeout=120, cwd=self.workdir)
        assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stderr}"
        return done.stdout

    def sql(self, query: str) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.cli("sql", query, "--format", "json").splitlines() if x.strip()]

@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    svc = Service(tmp_path)
    try:
        yield svc
    finally:
        svc.stop()


def test_enriched_flows_detections_and_lookup(service: Service) -> None:
    sent = subprocess.run([*flowenricher_argv(), "generate", "--to", f"127.0.0.1:{service.port}", "--fps", "20000",
                           "--duration", "3", "--protocol", "ipfix", "--scenario", "horizontal_scan"],
                          capture_output=True, text=True, timeout=120)
    assert sent.returncode == 0, sent.stderr
    alerts = service.workdir / "detections.log"
    service.wait_for(lambda: alerts.exists() and "slow_horizontal_scan" in alerts.read_text(), 30, "a detection")
    detection = next(json.loads(x) for x in alerts.read_text().splitlines() if "slow_horizontal_scan" in x)
    assert detection["key"] == "src"
    scanner = detection["address"]

    # lookup through the running service's control socket
    info = json.loads(service.cli("lookup", "84.54.49.10", "--format", "json"))
    assert info["mine"] is True and info["network"] == {"name": "rack-a", "customer": "acme"}
    google = json.loads(service.cli("lookup", "1.0.0.1", "--format", "json"))
    assert google["geo"]["asn"] == 15169 and google["mine"] is False

    # The control plane inside the service: the original calls with a token from the CLI.
    # No GoBGP runs here, so the blackhole is kept (and retried) rather than lost: requested,
    # not in force, so the original listing (what GoBGP took) leaves it out.
    token = service.cli("token", "create", "--scope", "admin").strip()
    api = f"http://127.0.0.1:{service.api_port}"
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{api}/blackholes", headers=headers).json() == {}
    assert httpx.get(f"{api}/blackholes").status_code == 401
    body = {"prefix": "149.202.68.236/32", "next_hop": "192.0.2.1", "communities": ["216285:666"]}
    assert httpx.post(f"{api}/announce", json=body, headers=headers).status_code == 200
    assert httpx.get(f"{api}/blackholes", headers=headers).json() == {}
    held = httpx.get(f"{api}/api/v1/blackholes", headers=headers).json()
    assert [(b["prefix"], b["next_hop"], b["state"]) for b in held] == [
        ("149.202.68.236/32", "192.0.2.1", "requested")]
    refused = httpx.post(f"{api}/announce", json={**body, "prefix": "84.54.49.0/24"}, headers=headers)
    assert 400 <= refused.status_code < 500
    assert httpx.post(f"{api}/withdraw", json={"prefix": "149.202.68.236/32"}, headers=headers).status_code == 200
    assert httpx.get(f"{api}/blackholes", headers=headers).json() == {}

    # A rules replacement with a window longer than detection.flow_cache_max_window (10m
    # by default) is refused as at start, and the running rules stay.
    running = httpx.get(f"{api}/api/v1/rules", headers=headers).json()["rules"]
    too_long = [{"name": "week_scan", "unique_dst_ips": 100, "time_window": "7d", "action": "alert"}]
    refused_rules = httpx.put(f"{api}/api/v1/rules", json=too_long, headers=headers)
    assert refused_rules.status_code == 422 and "week_scan" in refused_rules.text, refused_rules.text
    assert httpx.get(f"{api}/api/v1/rules", headers=headers).json()["rules"] == running

    # Exporters with the decoder's counters of the running service (from its registry).
    exporters = httpx.get(f"{api}/api/v1/exporters", headers=headers).json()["exporters"]
    assert exporters, "no exporter listed"
    counters = exporters[0]["counters"]
    assert counters.get("datagrams", 0) > 0 and counters.get("templates", 0) > 0, counters

    # The status page: the detection of an alert-only rule with its address, the collector
    # in this process answering, flows arriving.
    def page() -> str:
        return httpx.get(f"{api}/", headers=headers).text

    service.wait_for(lambda: f"<td>slow_horizontal_scan</td><td>src</td><td>{scanner}</td>" in page(), 30,
                     "the detection on the status page")
    assert "<b>collector</b>answers" in page() and "<b>store</b>answers" in page()

    # The service's own counters reach the store for the appliance-health dashboard.
    service.wait_for(lambda: bool(service.sql(
        "SELECT count() AS n FROM flowenricher.collector_stats WHERE metric = 'records' HAVING n > 0")), 30,
        "collector_stats rows")

    assert service.stop() == 0
    directions = {r["flow_direction"]: int(r["n"]) for r in service.sql(
        "SELECT flow_direction, count() AS n FROM flowenricher.flows GROUP BY flow_direction")}
    assert directions.get(1, 0) > 0 and directions.get(2, 0) > 0  # inbound and outbound both seen
    assert 0 not in directions  # every flow has a direction once my_prefixes is set
    names = {(r["dst_net_name"], r["dst_net_customer"]) for r in service.sql(
        "SELECT DISTINCT dst_net_name, dst_net_customer FROM flowenricher.flows WHERE flow_direction = 1")}
    assert ("rack-a", "acme") in names and ("office", "") in names
    stored = service.sql("SELECT rule, count() AS n FROM flowenricher.detections GROUP BY rule")
    assert any(r["rule"] == "slow_horizontal_scan" for r in stored)
    assert "enrichment: networks, geoip" in service.output()
