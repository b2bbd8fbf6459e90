"""End to end with real attack tools: nmap and hping3 against a small AS in network
namespaces, softflowd exporting what the border router sees, `flowenricher run`
detecting it, and the blackhole reaching BIRD (the router's BGP side) through gobgpd.

What runs, all of it real (support.attack_lab, support.bgp_lab):

* the attack lab: attacker, router, victims and collector namespaces; softflowd on the
  router's uplink exporting IPFIX with short timeouts to `flowenricher run` in the
  collector namespace (one worker, embedded chDB, detection and blackholing on);
* gobgpd peering with BIRD 2 in a namespace of their own; the service talks to gobgpd's
  gRPC API over its Unix socket;
* the rules: the shipped example detection.yml with its thresholds unchanged; the
  scan rules, the SYN flood rule and the single-source UDP flood rule are switched to
  ``alert,clickhouse,blackhole`` (slow_horizontal_scan with exactly the original's
  blackhole settings), the others to ``alert,clickhouse``.

The benign run comes first and must fire nothing with those same rules: curl fetching
a page and DNS queries to dnsmasq through the router, and `flowenricher generate
--scenario normal` (NetFlow v9) as a second exporter's background.  Each attack then
must produce the right detection (detections.log and the detections table), and BIRD
must hold the /32 of the right address: the scanner or flooder for rules keyed by
source, the victim for the SYN flood rule keyed by destination, and never an address of
the never-blackhole list (the DNS resolver under a SYN flood is detected, refused, and
logged as refused).

The tests share one lab (module scope: starting it takes seconds) and look only at what
their own run added, so each passes or fails on its own whatever ran before.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.attack_lab import (
    CLIENT,
    DNS,
    EXPORTER,
    FLOODER,
    INFRASTRUCTURE,
    SCANNER_H,
    SCANNER_V,
    WEB,
    AttackLab,
    Collector,
    collector_config,
)
from support.attack_lab import unavailable_reason as lab_unavailable
from support.bgp_lab import GOBGP_V4, BgpLab, wait_until
from support.bgp_lab import unavailable_reason as bgp_unavailable
from support.netns import TestNetwork, require_netns, sweep_stale

from appliance.flowenricher.generate.scenarios import AttackTruth

REPO = Path(__file__).resolve().parent.parent
SHIPPED_RULES = REPO / "appliance" / "flowenricher" / "examples" / "detection.yml"

NEXT_HOP = "192.0.2.1"
BLACKHOLING = {
    # The original flowenricher's example rule, blackhole settings and all.
    "slow_horizontal_scan": {"blackhole_count": 50, "blackhole_communities": ["65001:666"], "blackhole_time": 3600},
    "vertical_scan": {"blackhole_count": 100, "blackhole_communities": ["65535:666"], "blackhole_time": 600},
    # Keyed by destination: remotely triggered blackholing of the victim (RFC 7999).
    "syn_flood": {"blackhole_count": 500, "blackhole_communities": ["65535:666", "65001:666"],
                  "blackhole_time": 600},
    "udp_flood_to_host": {"blackhole_count": 1000, "blackhole_communities": ["65535:666"], "blackhole_time": 600},
}


def lab_rules(path: Path) -> Path:
    """The shipped rules, thresholds untouched, with the actions of the module docstring."""
    rules = yaml.safe_load(SHIPPED_RULES.read_text())
    assert set(BLACKHOLING) <= {r["name"] for r in rules}, "a rule this test relies on left the shipped file"
    for rule in rules:
        extra = BLACKHOLING.get(rule["name"])
        rule["action"] = "alert,clickhouse" + (",blackhole" if extra else "")
        if extra:
            rule.update(extra, blackhole_next_hop=NEXT_HOP)
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


@dataclass
class Setup:
    lab: AttackLab
    bgp: BgpLab
    collector: Collector
    workdir: Path

    @property
    def alerts(self) -> Path:
        return self.workdir / "detections.log"

    def detections(self) -> list[dict[str, Any]]:
        """Every detection in detections.log so far (the blackhole manager's notices,
        ``"event": "blackhole"``, share the file: see blackhole_notices)."""
        return [line for line in self._alert_lines() if line.get("event") != "blackhole"]

    def blackhole_notices(self) -> list[dict[str, Any]]:
        """The blackhole manager's notices in detections.log (announce, withdraw, ...)."""
        return [line for line in self._alert_lines() if line.get("event") == "blackhole"]

    def _alert_lines(self) -> list[dict[str, Any]]:
        if not self.alerts.exists():
            return []
        return [json.loads(line) for line in self.alerts.read_text().splitlines() if line.strip()]

    def audit(self) -> list[dict[str, Any]]:
        """Every line of blackholes.txt so far."""
        path = self.workdir / "blackholes.txt"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def bird_routes(self) -> set[str]:
        """The prefixes BIRD learned from gobgpd (IPv4 and IPv6 sessions)."""
        out = ""
        for protocol in ("gobgp4", "gobgp6"):
            out += self.bgp.birdc("show", "route", "protocol", protocol)
        return set(re.findall(r"^([0-9a-f.:]+/\d+)\s", out, re.MULTILINE))

    def wait_detection(self, rule: str, address: str, after: int, timeout: float = 15.0) -> dict[str, Any]:
        """The first detection of `rule` for `address` among the lines past `after`."""
        deadline = time.monotonic() + timeout
        while True:
            for d in self.detections()[after:]:
                if d["rule"] == rule and d["address"] == address:
                    return d
            if time.monotonic() > deadline:
                seen = [(d["rule"], d["address"]) for d in self.detections()[after:]]
                raise AssertionError(f"no {rule} detection for {address} within {timeout} s; new ones: {seen}\n"
                                     f"{self.collector.proc.describe(3000)}")
            time.sleep(0.05)

    def wait_route(self, address: str, timeout: float = 10.0) -> str:
        """BIRD's `show route all` of the /32 once it holds it."""
        prefix = f"{address}/32"
        wait_until(lambda: self.bgp.route(prefix), f"{prefix} in BIRD", timeout)
        return self.bgp.route(prefix)

    def stored_detections(self, address: str, rule: str, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Rows of the detections table for `address` under `rule` (every detection is
        inserted there in the background: polled)."""
        query = ("SELECT rule, key, address, flows, blackhole FROM flowenricher.detections "
                 f"WHERE rule = '{rule}' AND address = toIPv6('{address}')")
        deadline = time.monotonic() + timeout
        while not (rows := self.collector.sql(query)) and time.monotonic() < deadline:
            time.sleep(0.2)
        return rows


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    require_netns()
    for reason in (lab_unavailable(), bgp_unavailable()):
        if reason:
            pytest.skip(reason)
    sweep_stale()
    workdir = tmp_path_factory.mktemp("attacks")
    net = TestNetwork(workdir / "net")
    bgp = BgpLab(net)
    try:
        bgp.start()
        lab = AttackLab(net, workdir / "lab").start()
        never = [*INFRASTRUCTURE, DNS, f"{GOBGP_V4}/24"]
        config = collector_config(workdir, port=lab.collector_port, rules=lab_rules(workdir / "detection.yml"),
                                  gobgp_api=bgp.api_target, never=never)
        collector = Collector(lab, config, workdir)
        bgp.wait_established()
        yield Setup(lab, bgp, collector, workdir)
        code = collector.stop()
        log = collector.proc.stderr()
        assert code == 0, f"collector exited {code} on SIGTERM:\n{log[-6000:]}"
        assert "Traceback" not in log, log[-6000:]
    finally:
        bgp.close()  # stops every process of the network by PID, deletes the namespaces


def attack_report(truth: AttackTruth, detection: dict[str, Any]) -> None:
    """What ran and what it took, for the log of the run (`pytest -s`): the tool's own
    time, and from its end (the exporter flushed, then the engine) to the route in BIRD."""
    started, ended = float(truth.params["started"]), float(truth.params["ended"])
    print(f"{truth.kind} ({truth.params['tool']}, {ended - started:.2f} s): {detection['rule']} {detection['key']} "
          f"{detection['address']} {detection['flows']} flows; /32 in BIRD {time.time() - ended:.2f} s after")


def test_benign_traffic_fires_nothing(setup: Setup) -> None:
    """Web and DNS clients through the router plus generated normal traffic: no
    detection, no blackhole, with the same rules that catch the attacks below."""
    before_alerts, before_routes = len(setup.detections()), setup.bird_routes()
    truth = setup.lab.benign(duration=6, web_interval=0.05, dns_interval=0.05, generate_fps=2000,
                             generate_protocol="v9")
    done = {name: int(value) for name, value in truth.params.items() if not isinstance(value, str)}
    # The clients really talked to the servers (curl is slow to start on a busy machine:
    # the floors are low), and the generator sent its background.
    assert done["web"] >= 20 and done["dns"] >= 20 and done["web_failed"] == done["dns_failed"] == 0, done
    assert done["generated_flows"] >= 6000 and done["generated_send_errors"] == 0, done
    stats = setup.lab.flush()
    assert stats.export_failures == 0, stats
    # Both exporters' flows are in the store, none lost: each web request is one flow from
    # the client, each DNS query one packet (two queries may share a random source port,
    # and so a flow), and every generated flow arrived.
    want = {"web": done["web"], "dns": done["dns"], "generated": done["generated_flows"]}
    query = (f"SELECT countIf(src_host = '{CLIENT}' AND dst_host = '{WEB}') AS web, "
             f"sumIf(packets, src_host = '{CLIENT}' AND dst_host = '{DNS}') AS dns, "
             f"countIf(exporter_address != toIPv6('{EXPORTER}')) AS generated FROM flowenricher.flows")
    deadline = time.monotonic() + 15
    while (counts := {k: int(v) for k, v in setup.collector.sql(query)[0].items()}) != want:
        assert time.monotonic() < deadline, f"stored {counts}, sent {want}"
        time.sleep(0.3)
    time.sleep(1.5)  # a tick of the engine past the last flow (rules are evaluated at least once a second)
    fired = [(d["rule"], d["address"]) for d in setup.detections()[before_alerts:]]
    assert fired == [], f"the benign run fired {fired}"
    assert setup.bird_routes() == before_routes


def test_horizontal_scan_blackholes_the_scanner(setup: Setup) -> None:
    """nmap -sS, port 22 on 100 hosts: the original rule fires for the scanner, whose
    /32 BIRD then holds with the rule's next hop and community."""
    before, routes = len(setup.detections()), setup.bird_routes()
    truth = setup.lab.nmap_horizontal(port=22, hosts=100, source=SCANNER_H, scan="sS")
    assert truth.params["hosts_up"] == 100, truth.params
    setup.lab.flush()
    detection = setup.wait_detection("slow_horizontal_scan", SCANNER_H, before)
    assert detection["key"] == "src" and detection["dst_port"] == 22, detection
    assert detection["unique_dst_ips"] >= 50 and detection["flows"] >= 70 and detection["blackhole"], detection
    route = setup.wait_route(SCANNER_H)
    attack_report(truth, detection)
    assert f"BGP.next_hop: {NEXT_HOP}" in route and "(65001,666)" in route, route
    assert "(65535,65281)" in route, route  # NO_EXPORT on every announcement by default
    # Every detection and route of this run is about the scanner (no victim, no bystander).
    assert {d["address"] for d in setup.detections()[before:]} == {SCANNER_H}
    assert {"action": "announce", "prefix": f"{SCANNER_H}/32", "rule": "slow_horizontal_scan"}.items() <= next(
        n for n in setup.blackhole_notices() if n["prefix"] == f"{SCANNER_H}/32").items()  # the operator was told
    assert setup.bird_routes() - routes == {f"{SCANNER_H}/32"}
    rows = setup.stored_detections(SCANNER_H, "slow_horizontal_scan")
    assert rows and rows[0]["key"] == "src" and rows[0]["blackhole"] in (True, 1), rows
    audit = [a for a in setup.audit() if a["prefix"] == f"{SCANNER_H}/32"]
    assert audit[0]["action"] == "announce" and audit[0]["rule"] == "slow_horizontal_scan", audit


def test_vertical_scan_blackholes_the_scanner(setup: Setup) -> None:
    """nmap -sT, ports 1-1000 of one host: vertical_scan fires for the scanner (nearly all
    of its flows connection attempts) and BIRD holds its /32; the host scanned is not
    blackholed."""
    before, routes = len(setup.detections()), setup.bird_routes()
    victim = "84.54.49.7"
    truth = setup.lab.nmap_vertical(target=victim, ports=(1, 1000), source=SCANNER_V, scan="sT")
    setup.lab.flush()
    detection = setup.wait_detection("vertical_scan", SCANNER_V, before)
    assert detection["dst_addr"] == victim and detection["unique_dst_ports"] >= 100, detection
    assert detection["syn_ratio"] >= 0.8 and detection["blackhole"], detection
    route = setup.wait_route(SCANNER_V)
    attack_report(truth, detection)
    assert f"BGP.next_hop: {NEXT_HOP}" in route and "(65535,666)" in route, route
    assert {d["address"] for d in setup.detections()[before:]} == {SCANNER_V}
    assert setup.bird_routes() - routes == {f"{SCANNER_V}/32"}
    assert setup.stored_detections(SCANNER_V, "vertical_scan")


def test_syn_flood_blackholes_the_victim_never_the_resolver(setup: Setup) -> None:
    """hping3 SYN flood from random sources: syn_flood (keyed by destination) fires for
    the victim, which BIRD then holds (remotely triggered blackholing).  The same flood
    against the DNS resolver fires too, but the resolver is on the never-blackhole list:
    refused, logged as refused, and nothing reaches BIRD."""
    before, routes = len(setup.detections()), setup.bird_routes()
    victim = "84.54.49.20"
    truth = setup.lab.hping_flood(victim, 80, proto="syn", count=3000, interval_us=200)
    assert truth.params["sent"] == 3000, truth.params
    setup.lab.flush()
    detection = setup.wait_detection("syn_flood", victim, before)
    assert detection["key"] == "dst" and detection["unique_src_ips"] >= 100, detection
    assert detection["flows"] >= 500 and detection["blackhole"], detection
    route = setup.wait_route(victim)
    attack_report(truth, detection)
    assert f"BGP.next_hop: {NEXT_HOP}" in route and "(65535,666)" in route and "(65001,666)" in route, route
    assert setup.stored_detections(victim, "syn_flood")
    assert setup.bird_routes() - routes == {f"{victim}/32"}

    routes = setup.bird_routes()
    setup.lab.hping_flood(DNS, 53, proto="syn", count=3000, interval_us=200)
    setup.lab.flush()
    setup.wait_detection("syn_flood", DNS, before)
    wait_until(lambda: any(a["action"] == "refused" and a["prefix"] == f"{DNS}/32" for a in setup.audit()),
               "the resolver's blackhole refused in blackholes.txt")
    refused = next(a for a in setup.audit() if a["action"] == "refused" and a["prefix"] == f"{DNS}/32")
    assert "never-blackhole" in refused["reason"] and refused["rule"] == "syn_flood", refused
    assert setup.bird_routes() == routes and not setup.bgp.route(f"{DNS}/32")


def test_udp_flood_blackholes_the_flooder_not_the_victim(setup: Setup) -> None:
    """hping3 UDP flood from one source: udp_flood_to_host (keyed by source) fires and
    BIRD holds the flooder's /32; the victim is not blackholed, since no rule keyed by
    destination asked for it.  The exporter is left to its own timeouts, as on a router."""
    before, routes = len(setup.detections()), setup.bird_routes()
    victim = "84.54.49.21"
    truth = setup.lab.hping_flood(victim, 5353, proto="udp", count=3000, interval_us=200, source=FLOODER)
    # No flush here: softflowd's own timeouts (udp 2 s, checked every second) export the flood.
    detection = setup.wait_detection("udp_flood_to_host", FLOODER, before)
    assert detection["dst_addr"] == victim and detection["flows"] >= 1000 and detection["blackhole"], detection
    route = setup.wait_route(FLOODER)
    attack_report(truth, detection)
    assert f"BGP.next_hop: {NEXT_HOP}" in route and "(65535,666)" in route, route
    assert {d["address"] for d in setup.detections()[before:]} == {FLOODER}
    assert setup.bird_routes() - routes == {f"{FLOODER}/32"}
    assert setup.stored_detections(FLOODER, "udp_flood_to_host")
