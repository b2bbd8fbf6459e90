"""The detection engine on generated traffic: each attack of the generator fires its rule
with the right key, normal traffic fires nothing, and the windows, cooldowns and key cap
behave as documented.  Time is driven explicitly (received_at and tick)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from support.detect import Collect

from appliance.flowenricher.batch import FlowBatch
from appliance.flowenricher.detect import DetectionEngine, Rule, load_rule_set, parse_rule_set
from appliance.flowenricher.generate.flows import Flows, text_rows
from appliance.flowenricher.generate.traffic import TrafficGenerator

REPO = Path(__file__).resolve().parents[1]
ORIGINAL = REPO / "tests" / "data" / "examples" / "detection.original.yml"
SHIPPED = REPO / "appliance" / "flowenricher" / "examples" / "detection.yml"
T0 = 1_800_000_000  # unix seconds



def all_rules() -> list[Rule]:
    """The original rule plus the shipped examples (whose first rule is the original's)."""
    original = load_rule_set(ORIGINAL)
    return original + [r for r in load_rule_set(SHIPPED) if r.name != original[0].name]


def engine_with(rules: Sequence[Rule], **kwargs: Any) -> tuple[DetectionEngine, Collect, CollectorRegistry]:
    sink, registry = Collect(), CollectorRegistry()
    return DetectionEngine(rules, [sink], registry, **kwargs), sink, registry


def feed(engine: DetectionEngine, gen: TrafficGenerator, fps: int, seconds: int, step: int = 1,
         start: int = T0) -> None:
    """`seconds` of generated traffic at `fps`, in batches of `step` seconds, each
    received at the end of its span, with a tick after each."""
    for offset in range(0, seconds, step):
        at = start + offset
        batch = gen.batch(fps * step, at * 1000, step * 1000).to_flow_batch()
        batch["received_at"] = np.full(batch.n, at + step, dtype=np.uint32)
        engine.process(batch)
        engine.tick(at + step)


def flows(n: int, src: Sequence[str] | str, dst: Sequence[str] | str, dst_port: Sequence[int] | int = 22,
          at: int = T0, proto: int = 6, flags: int = 0x02, packets: int = 1, octets: int = 44,
          duration: int = 0, direction: int = 1) -> FlowBatch:
    """`n` hand-made flows received at `at` (addresses and ports cycle through the lists)."""
    f = Flows.empty(n)

    def cycle(values: Sequence[str] | str) -> list[str]:
        items = [values] if isinstance(values, str) else list(values)
        return [items[i % len(items)] for i in range(n)]

    f.src_addr, f.dst_addr = text_rows(cycle(src)), text_rows(cycle(dst))
    ports = [dst_port] if isinstance(dst_port, int) else list(dst_port)
    f.dst_port = np.array([ports[i % len(ports)] for i in range(n)], dtype=np.uint16)
    f.src_port[:] = 40000
    f.proto[:] = proto
    f.tcpflags[:] = flags
    f.packets[:] = packets
    f.bytes[:] = octets
    f.flow_direction[:] = direction
    f.end_ms[:] = at * 1000
    f.start_ms[:] = (at - duration) * 1000
    batch = f.to_flow_batch()
    batch["received_at"] = np.full(n, at, dtype=np.uint32)
    return batch


def hosts(n: int, net: str = "84.54.49") -> list[str]:
    return [f"{net}.{i}" for i in range(1, n + 1)]


# ----------------------------------------------------------------- attacks and normal traffic

# scenario -> (rule expected, key, fps, seconds, batch span)
ATTACKS = {
    "horizontal_scan": ("slow_horizontal_scan", "src", 2000, 40, 1),
    "vertical_scan": ("vertical_scan", "src", 2000, 40, 1),
    "slow_scan": ("slow_scan", "src", 200, 480, 5),
    "ssh_bruteforce": ("ssh_bruteforce", "src", 200, 60, 1),
    "rdp_bruteforce": ("rdp_bruteforce", "src", 200, 60, 1),
    "syn_flood": ("syn_flood", "dst", 4000, 5, 1),
    "udp_flood": ("udp_flood", "dst", 4000, 5, 1),
}


@pytest.mark.parametrize("scenario", sorted(ATTACKS))
def test_each_attack_fires_its_rule_with_its_key(scenario: str) -> None:
    rule, key, fps, seconds, step = ATTACKS[scenario]
    engine, sink, _ = engine_with(all_rules())
    gen = TrafficGenerator(scenario=scenario, seed=11)
    [truth] = gen.truths
    feed(engine, gen, fps, seconds, step)

    subject = truth.attackers[0] if key == "src" else truth.victims[0]
    mine = [d for d in sink.detections if d.rule == rule and d.address == subject]
    assert mine and all(d.key == key for d in mine)
    first = mine[0]
    if key == "src" and len(truth.victims) == 1:
        expected_dst = truth.victims[0] if rule in ("vertical_scan", "ssh_bruteforce", "rdp_bruteforce") else None
        assert first.dst_addr == expected_dst
    # Nothing else is said about the attack's addresses: the rule, the key and only them.
    involved = set(truth.attackers) | set(truth.victims)
    others = {(d.rule, d.key) for d in sink.detections if d.address in involved} - {(rule, key)}
    if scenario == "horizontal_scan":
        others.discard(("slow_scan", "src"))  # a fast sweep is a slow one too
    assert others == set()
    if scenario == "slow_scan":  # 0.25 probes a second: under the one-minute rule, not ten minutes
        assert first.unique_dst_ips is not None and first.unique_dst_ips >= 100 and first.syn_ratio == 1.0
    # The evidence is the attack's own flows.
    assert first.samples and all(sample["src_addr"] in truth.attackers for sample in first.samples)
    assert first.first_seen <= first.last_seen <= first.detected_at


def test_normal_traffic_fires_nothing() -> None:
    """Every example rule, the original included, stays quiet on normal traffic: five
    minutes at 100 flows/s, and two at 3000 flows/s (the generator's busy clients each use
    a few of the operator's servers, as real ones do)."""
    engine, sink, _ = engine_with(all_rules())
    feed(engine, TrafficGenerator(scenario="normal", seed=5), 100, 300, 5)
    assert sink.detections == []
    engine, sink, _ = engine_with(all_rules())
    feed(engine, TrafficGenerator(scenario="normal", seed=6), 3000, 130)
    assert sink.detections == []


# ----------------------------------------------------------------- windows

SCAN = {"name": "scan", "proto": "tcp", "unique_dst_ips": 50, "time_window": "60s", "action": "alert"}


def test_flows_leave_the_window() -> None:
    engine, sink, _ = engine_with(parse_rule_set([SCAN]))
    engine.process(flows(40, "203.0.113.7", hosts(40), at=T0))
    engine.tick(T0 + 30)
    engine.process(flows(9, "203.0.113.7", hosts(49)[40:], at=T0 + 30))
    assert sink.detections == []  # 49 hosts within the minute

    engine.tick(T0 + 70)  # the first 40 are older than the window now
    engine.process(flows(5, "203.0.113.7", hosts(54)[49:], at=T0 + 70))
    assert sink.detections == []  # 14 hosts in the window
    engine.tick(T0 + 200)
    assert engine.stats()["scan"]["keys"] == 0  # nothing left in the window: the key is freed

    engine.process(flows(50, "203.0.113.7", hosts(50), at=T0 + 201))
    [hit] = sink.detections
    assert (hit.address, hit.unique_dst_ips, hit.flows) == ("203.0.113.7", 50, 50)


def test_distinct_counts_are_exact_up_to_the_threshold() -> None:
    """49 hosts seen again and again over many batches and buckets are 49, not more;
    the 50th matches.  IPv6 destinations count as well."""
    engine, sink, _ = engine_with(parse_rule_set([SCAN]))
    v6 = [f"2a14:4280::{i:x}" for i in range(1, 26)]
    targets = hosts(24) + v6
    for second in range(0, 50, 2):
        engine.process(flows(200, "2001:db8:5::9", targets, at=T0 + second))
        engine.tick(T0 + second)
    assert sink.detections == []
    engine.process(flows(1, "2001:db8:5::9", "84.54.49.200", at=T0 + 50))
    [hit] = sink.detections
    assert hit.unique_dst_ips == 50 and hit.flows == 25 * 200 + 1


def test_cooldown_holds_repeats_back() -> None:
    engine, sink, _ = engine_with(parse_rule_set([{**SCAN, "cooldown": "5m"}]))
    for second in range(0, 400, 10):
        engine.process(flows(60, "203.0.113.7", hosts(60), at=T0 + second))
        engine.tick(T0 + second)
    assert [d.detected_at - T0 for d in sink.detections] == [0, 300]


def test_key_cap_evicts_the_least_active_and_counts_it() -> None:
    engine, sink, registry = engine_with(parse_rule_set([SCAN]), max_keys_per_rule=100)
    for second in range(30):
        # 300 new one-flow sources a second, and one scanner two hosts a second.
        noise = [f"198.51.{second}.{i}" for i in range(1, 201)] + [f"192.0.{second}.{i}" for i in range(1, 101)]
        engine.process(flows(300, noise, "84.54.49.1", at=T0 + second))
        engine.process(flows(2, "203.0.113.7", hosts(60)[2 * second:2 * second + 2], at=T0 + second))
        engine.tick(T0 + second)
    assert [d.address for d in sink.detections] == ["203.0.113.7"]
    evicted = registry.get_sample_value("flowenricher_detection_keys_evicted_total", {"rule": "scan"})
    assert evicted is not None and evicted >= 30 * 300 - 100
    assert engine.stats()["scan"]["keys"] <= 100


def test_rates_use_the_time_the_flows_span() -> None:
    """A long flow exported once is not a flood; the same packets in one second are."""
    rule = {"name": "pps", "key": "dst", "proto": "udp", "min_pps": 10000, "time_window": "10s", "action": "alert"}
    engine, sink, _ = engine_with(parse_rule_set([rule]))
    engine.process(flows(1, "198.51.100.1", "84.54.49.9", 53, at=T0, proto=17, flags=0, packets=1_800_000,
                         octets=10**9, duration=1800))
    engine.tick(T0 + 1)
    assert sink.detections == []
    engine.process(flows(10, "198.51.100.1", "84.54.49.10", 53, at=T0 + 2, proto=17, flags=0, packets=2_000,
                         octets=2_000_000, duration=1))
    [hit] = sink.detections
    assert hit.address == "84.54.49.10" and hit.pps == pytest.approx(20_000) and hit.bps == pytest.approx(160e6)


def test_late_flows_are_counted_apart() -> None:
    engine, sink, registry = engine_with(parse_rule_set([SCAN]))
    engine.tick(T0 + 1000)
    engine.process(flows(60, "203.0.113.7", hosts(60), at=T0))
    assert sink.detections == []
    assert registry.get_sample_value("flowenricher_detection_late_flows_total", {"rule": "scan"}) == 60


# ----------------------------------------------------------------- rule conditions


def test_filters_prefixes_and_direction() -> None:
    rules = parse_rule_set([
        {**SCAN, "name": "mine", "exclude_prefixes": ["203.0.113.0/28"]},
        {**SCAN, "name": "out", "direction": "outbound"},
        {**SCAN, "name": "only_b", "include_prefixes": ["198.51.100.0/24"]},
    ])
    engine, sink, _ = engine_with(rules)
    engine.process(flows(60, "203.0.113.7", hosts(60), at=T0))  # excluded source
    engine.process(flows(60, "198.51.100.7", hosts(60), at=T0))
    engine.process(flows(60, "84.54.49.3", hosts(60, "198.18.0"), at=T0, direction=2))  # my host scanning out
    assert sink.keys() == {("mine", "src", "198.51.100.7"), ("only_b", "src", "198.51.100.7"),
                           ("out", "src", "84.54.49.3")}


def test_syn_ratio_and_syn_only() -> None:
    rules = parse_rule_set([{**SCAN, "name": "ratio", "min_syn_ratio": 0.8},
                            {**SCAN, "name": "syn", "tcp_flags": "syn_only"}])
    engine, sink, _ = engine_with(rules)
    engine.process(flows(60, "203.0.113.7", hosts(60), at=T0, flags=0x1B))  # complete connections
    engine.process(flows(60, "203.0.113.8", hosts(60), at=T0, flags=0x06))  # SYN+RST probes
    assert sink.keys() == {("ratio", "src", "203.0.113.8"), ("syn", "src", "203.0.113.8")}


def test_anomaly_score_gates_a_rule_when_a_scorer_is_given() -> None:
    rule = parse_rule_set([{**SCAN, "min_anomaly_score": 0.8}])
    asked: list[tuple[str, list[str]]] = []

    def scorer(key: str, addresses: Sequence[str]) -> list[float | None]:
        asked.append((key, list(addresses)))
        return [{"203.0.113.7": 0.9, "203.0.113.8": 0.1}.get(a) for a in addresses]

    for with_scorer, expected in ((True, {"203.0.113.7"}), (False, {"203.0.113.7", "203.0.113.8", "203.0.113.9"})):
        engine, sink, _ = engine_with(rule, scorer=scorer if with_scorer else None)
        for source in ("203.0.113.7", "203.0.113.8", "203.0.113.9"):
            engine.process(flows(60, source, hosts(60), at=T0))
        assert {d.address for d in sink.detections} == expected
    assert asked and all(key == "src" for key, _ in asked)
    [hit] = [d for d in sink.detections if d.address == "203.0.113.7"]
    assert hit.anomaly_score is None  # no scorer: the condition was ignored


def test_blackhole_follows_blackhole_count() -> None:
    rule = parse_rule_set([{**SCAN, "action": "alert,blackhole", "blackhole_count": 80, "blackhole_time": 600}])
    engine, sink, _ = engine_with(rule)
    engine.process(flows(60, "203.0.113.7", hosts(60), at=T0))
    engine.process(flows(100, "203.0.113.8", hosts(60), at=T0))
    assert {(d.address, d.blackhole) for d in sink.detections} == {("203.0.113.7", False), ("203.0.113.8", True)}
    assert {d.prefix for d in sink.detections} == {"203.0.113.7/32", "203.0.113.8/32"}


def test_reload_keeps_the_windows_of_unchanged_rules() -> None:
    engine, sink, _ = engine_with(parse_rule_set([SCAN, {**SCAN, "name": "other"}]))
    engine.process(flows(45, "203.0.113.7", hosts(45), at=T0))
    # Same window and grouping, another action: the 45 hosts are remembered.
    engine.reload(parse_rule_set([{**SCAN, "action": "alert,webhook"}, {**SCAN, "name": "other",
                                                                       "time_window": "30s"}]))
    engine.process(flows(5, "203.0.113.7", hosts(50)[45:], at=T0 + 1))
    assert sink.keys() == {("scan", "src", "203.0.113.7")}
    assert [r.name for r in engine.rules] == ["scan", "other"]
    engine.reload(parse_rule_set([{**SCAN, "enabled": False}]))
    assert engine.rules == []


def test_keys_restrict_a_batch_to_the_rules_of_that_key() -> None:
    """process(batch, keys=...) counts the batch only into rules keyed by one of `keys`
    (what the detection exchange does with rows partitioned by source or destination)."""
    by_dst = {"name": "many_sources", "key": "dst", "unique_src_ips": 50, "time_window": "60s", "action": "alert"}
    engine, sink, _ = engine_with(parse_rule_set([SCAN, by_dst]))
    scan = flows(60, "203.0.113.7", hosts(60), at=T0)
    engine.process(scan, keys=("dst",))
    assert sink.detections == []
    engine.process(scan, keys=("src",))
    assert sink.keys() == {(SCAN["name"], "src", "203.0.113.7")}
    engine.process(flows(60, hosts(60, "198.51.100"), "84.54.49.1", at=T0), keys=("src",))
    assert {d.rule for d in sink.detections} == {SCAN["name"]}
    engine.process(flows(60, hosts(60, "198.51.100"), "84.54.49.1", at=T0), keys=("dst",))
    found = sink.keys()
    assert ("many_sources", "dst", "84.54.49.1") in found
