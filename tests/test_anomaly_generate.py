"""The labelled traffic the anomaly evaluation runs on: benign mixes with their own
sources and shapes, and a low-and-slow scan that no shipped rule catches (checked with
the real engine over ten minutes) while the scan rules do catch the faster slow scan."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry
from support.anomaly import T0
from support.detect import Collect

from appliance.flowenricher.detect import DetectionEngine, load_rule_set
from appliance.flowenricher.generate.benign import HARD_CASES, MIXES
from appliance.flowenricher.generate.flows import INBOUND, OUTBOUND, Flows, rows_to_text
from appliance.flowenricher.generate.scenarios import SCENARIOS
from appliance.flowenricher.generate.traffic import TrafficGenerator, TrafficProfile

SHIPPED = Path(__file__).resolve().parents[1] / "appliance" / "flowenricher" / "examples" / "detection.yml"



def test_benign_mixes_are_labelled_and_shaped_as_described() -> None:
    assert {"benign", "low_and_slow_scan", "evaluation", *MIXES} <= set(SCENARIOS)
    gen = TrafficGenerator(scenario="benign", seed=3)
    truths = gen.truths
    assert [t.kind for t in truths] == list(MIXES) and all(t.benign for t in truths)
    assert truths[0].summary()["benign"] is True
    flows = [gen.batch(200, (T0 + s) * 1000, 1000) for s in range(120)]
    label = np.concatenate([f.label for f in flows])
    by_kind = {t.kind: t for t in truths}
    for truth in truths:
        rows = [f.take(f.label == truth.label) for f in flows]
        src = {a for r in rows for a in rows_to_text(r.src_addr)}
        assert src and src <= set(truth.attackers), truth.kind
    assert (label == 0).sum() > 0.8 * len(label)  # the normal model stays the background

    def rows_of(kind: str) -> Flows:
        return Flows.concat([f.take(f.label == by_kind[kind].label) for f in flows])

    dns = rows_of("benign_dns")
    assert set(dns.proto.tolist()) == {17} and set(dns.dst_port.tolist()) == {53}
    assert set(dns.flow_direction.tolist()) == {OUTBOUND}
    assert len(set(rows_to_text(dns.dst_addr))) > 100  # many authoritative servers
    video = rows_of("benign_video")
    assert set(video.flow_direction.tolist()) == {INBOUND} and set(video.src_port.tolist()) == {443}
    assert (video.bytes / video.packets).min() >= 1200
    backup = rows_of("benign_backup")
    assert backup.packets.min() >= 50_000
    # The speed test bursts: 15 s of every 300, from the period's start.
    speed = rows_of("benign_speedtest")
    seconds = set(((speed.end_ms // 1000) % 300).tolist())
    assert seconds and max(seconds) < 16


def test_low_and_slow_scan_stays_under_every_shipped_rule() -> None:
    sink = Collect()
    engine = DetectionEngine(load_rule_set(SHIPPED, max_window_s=600), [sink], CollectorRegistry())
    gen = TrafficGenerator(scenario="low_and_slow_scan", seed=2)
    [truth] = gen.truths
    assert truth.params["rate_per_s"] == 0.1 and truth.dst_ports == (5900,)
    probes = 0
    for second in range(660):
        batch = gen.batch(100, (T0 + second) * 1000, 1000)
        probes += int((batch.label == 1).sum())
        flow_batch = batch.to_flow_batch()
        flow_batch["received_at"] = np.full(flow_batch.n, T0 + second, dtype=np.uint32)
        engine.process(flow_batch)
        engine.tick(T0 + second + 1)
    assert 40 < probes < 100  # about 66 in 11 minutes
    assert not [d for d in sink.detections if d.address in truth.attackers]
    # The faster slow scan of the generator does trip the ten-minute rule.
    faster = TrafficGenerator(scenario="slow_scan", seed=2)
    for second in range(660):
        flow_batch = faster.batch(100, (T0 + second) * 1000, 1000).to_flow_batch()
        flow_batch["received_at"] = np.full(flow_batch.n, T0 + second, dtype=np.uint32)
        engine.process(flow_batch)
        engine.tick(T0 + second + 1)
    assert {d.rule for d in sink.detections if d.address in faster.truths[0].attackers} == {"slow_scan"}


def test_hard_benign_cases_are_labelled_and_shaped_as_described() -> None:
    assert {"hard_benign", *HARD_CASES} <= set(SCENARIOS)
    gen = TrafficGenerator(scenario="hard_benign", seed=5)
    truths = {t.kind: t for t in gen.truths}
    assert list(truths) == list(HARD_CASES) and all(t.benign for t in truths.values())
    flows = Flows.concat([gen.batch(100, (T0 + s) * 1000, 1000) for s in range(60)])
    inside = [ipaddress.ip_network(p) for p in TrafficProfile().my_prefixes]

    def own(addresses: list[str]) -> bool:
        return all(any(ipaddress.ip_address(a) in net for net in inside) for a in addresses)

    def rows_of(kind: str) -> Flows:
        return flows.take(flows.label == truths[kind].label)

    def per_source(rows: Flows, mask: np.ndarray | None = None) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {}
        pick = rows if mask is None else rows.take(mask)
        for src, dst in zip(rows_to_text(pick.src_addr), rows_to_text(pick.dst_addr), strict=True):
            out.setdefault(src, set()).add(dst)
        return out

    # Firewalled clients: nothing but SYNs, a few fixed servers each, from own hosts.
    retry = rows_of("benign_syn_retry")
    assert len(retry) > 20 and set(retry.tcpflags.tolist()) == {0x02} and set(retry.proto.tolist()) == {6}
    assert own(rows_to_text(retry.src_addr)) and set(retry.flow_direction.tolist()) == {OUTBOUND}
    assert max(len(d) for d in per_source(retry).values()) <= HARD_CASES["benign_syn_retry"].dsts_per_source
    assert retry.packets.min() >= 1 and retry.packets.max() <= 3
    # NAT and CGNAT: own addresses reaching hundreds of servers; a few unanswered
    # attempts, always to the same few servers of each address.
    for kind, many in (("benign_nat", 150), ("benign_cgnat", 60)):
        rows = rows_of(kind)
        spec = HARD_CASES[kind]
        assert own(rows_to_text(rows.src_addr)) and not own(rows_to_text(rows.dst_addr)), kind
        assert min(len(d) for d in per_source(rows).values()) > many, kind
        syn = rows.tcpflags == 0x02
        assert 0 < syn.mean() < 3 * spec.syn_only_share, kind
        assert max(len(d) for d in per_source(rows, syn).values()) <= spec.unanswered, kind
    # Monitoring: own hosts polling own hosts on three ports, mostly complete connections.
    monitoring = rows_of("benign_monitoring")
    assert own(rows_to_text(monitoring.src_addr)) and own(rows_to_text(monitoring.dst_addr))
    assert set(monitoring.dst_port.tolist()) <= {22, 80, 443}
    assert len(truths["benign_monitoring"].attackers) == 2
    assert (monitoring.tcpflags == 0x1B).mean() > 0.8
    # Crawlers: outside sources fetching own web servers.
    crawler = rows_of("benign_crawler")
    assert not own(rows_to_text(crawler.src_addr)) and own(rows_to_text(crawler.dst_addr))
    assert set(crawler.dst_port.tolist()) <= {80, 443} and set(crawler.flow_direction.tolist()) == {INBOUND}
    # The evaluation runs every hard case next to the other mixes and the attacks.
    evaluation = {t.kind for t in TrafficGenerator(scenario="evaluation", seed=5).truths}
    assert set(HARD_CASES) | set(MIXES) | {"low_and_slow_scan", "syn_flood"} <= evaluation
