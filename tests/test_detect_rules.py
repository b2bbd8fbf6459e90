"""Detection rules: the original file means what it documents, the extensions type
correctly, and a rule that contradicts itself is refused with its name and path."""

from __future__ import annotations

import ipaddress
import textwrap
from pathlib import Path
from typing import Any

import pytest

from appliance.flowenricher.config import load_rules, parse_rules
from appliance.flowenricher.detect.rules import Rule, load_rule_set, parse_rule_set
from appliance.flowenricher.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
ORIGINAL = REPO / "tests" / "data" / "examples" / "detection.original.yml"
SHIPPED = REPO / "appliance" / "flowenricher" / "examples" / "detection.yml"


def problems(rules: list[dict[str, Any]], max_window_s: float | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse_rules(rules, "d.yml", max_window_s=max_window_s)
    return caught.value.problems


def test_the_original_rule_means_what_it_documents() -> None:
    [rule] = load_rule_set(ORIGINAL, max_window_s=60)

    assert rule == Rule(
        name="slow_horizontal_scan", key="src", window_s=60.0, actions=("alert", "blackhole"), proto=6,
        directions=frozenset({1, 3}), same_dst_port=True, unique_dst_ips=50, min_flows=70, blackhole_count=50,
        blackhole_next_hop="192.0.2.1", blackhole_communities=("65001:666",), blackhole_time_s=3600.0,
    )
    # Counted per source and port; reported again after a window's quiet; needs 70 flows.
    assert rule.cooldown == 60.0 and rule.least_flows == 70 and rule.distinct == {"dst_ip": 50}


def test_the_shipped_examples_type_and_fit_a_ten_minute_cache() -> None:
    rules = load_rule_set(SHIPPED, max_window_s=600)
    by_name = {rule.name: rule for rule in rules}
    assert set(by_name) == {"slow_horizontal_scan", "vertical_scan", "slow_scan", "ssh_bruteforce",
                            "rdp_bruteforce", "syn_flood", "udp_flood", "udp_flood_to_host"}
    assert by_name["syn_flood"].key == "dst" and by_name["syn_flood"].syn_only
    assert by_name["ssh_bruteforce"].dst_ports == (22,)
    assert by_name["udp_flood"].min_bps == 100e6 and by_name["udp_flood"].cooldown == 60.0
    assert all(rule.actions == ("alert",) for rule in rules)


def test_extensions_are_typed() -> None:
    [rule] = parse_rule_set([{
        "name": "x", "key": "dst", "proto": "UDP", "direction": "any", "dst_ports": [53, 123, 53 + 1],
        "include_prefixes": ["84.54.49.0/24", "2a14:4280::/29"], "exclude_prefixes": ["84.54.49.53/32"],
        "min_pps": 1000, "unique_src_ips": 20, "time_window": "1m30s", "cooldown": "5m", "action": ["alert", "webhook"],
        "min_anomaly_score": 0.7,
    }])
    assert (rule.key, rule.proto, rule.directions, rule.dst_ports) == ("dst", 17, None, (53, 54, 123))
    assert rule.include_prefixes == (ipaddress.ip_network("84.54.49.0/24"), ipaddress.ip_network("2a14:4280::/29"))
    assert (rule.window_s, rule.cooldown, rule.actions) == (90.0, 300.0, ("alert", "webhook"))
    assert rule.min_anomaly_score == 0.7 and rule.distinct == {"src_ip": 20}
    [outbound] = parse_rule_set([{"name": "o", "direction": ["outbound", "transit"], "proto": 6, "min_flows": 5,
                                  "time_window": 10, "action": "alert"}])
    assert outbound.directions == frozenset({2, 4}) and outbound.proto == 6


def test_state_signature_ignores_what_only_evaluation_reads() -> None:
    base = {"name": "r", "proto": "tcp", "unique_dst_ips": 50, "min_flows": 70, "time_window": "60s",
            "action": "alert"}
    [a] = parse_rule_set([base])
    [b] = parse_rule_set([{**base, "min_flows": 90, "cooldown": "5m", "action": "alert,slack"}])
    [c] = parse_rule_set([{**base, "time_window": "30s"}])
    [d] = parse_rule_set([{**base, "unique_dst_ips": 60}])
    assert a.state_signature() == b.state_signature()
    assert a.state_signature() != c.state_signature() and a.state_signature() != d.state_signature()


@pytest.mark.parametrize(("rule", "expected"), [
    ({"action": "alert,blackhole", "min_flows": 10},
     ["d.yml: $[0].blackhole_count: rule 'r': the blackhole action needs blackhole_count of at least 1 "
      "(the flows a key must hold to be blackholed)",
      "d.yml: $[0].blackhole_time: rule 'r': the blackhole action needs blackhole_time (for instance 3600): "
      "an automatic blackhole must expire"]),
    ({"min_flows": 10, "blackhole_count": 5},
     ["d.yml: $[0].blackhole_count: rule 'r': is set, but action has no blackhole (add blackhole to action, "
      "or remove it)"]),
    ({"unique_src_ips": 10},
     ["d.yml: $[0].unique_src_ips: rule 'r': with key: src each key is one source; use key: dst to count the "
      "sources of a flood"]),
    ({"key": "dst", "unique_dst_ips": 10},
     ["d.yml: $[0].unique_dst_ips: rule 'r': with key: dst each key is one destination; use key: src to count "
      "the hosts a source reaches"]),
    ({"key": "dst", "same_dst_ip": True, "min_flows": 5},
     ["d.yml: $[0].same_dst_ip: rule 'r': key: dst already counts per destination address"]),
    ({"same_dst_ip": True, "unique_dst_ips": 10},
     ["d.yml: $[0].unique_dst_ips: rule 'r': same_dst_ip counts one destination address per key, so more than 1 "
      "is never reached"]),
    ({"dst_ports": [22, 2222], "unique_dst_ports": 3},
     ["d.yml: $[0].unique_dst_ports: rule 'r': dst_ports lists 2 port(s), so 3 distinct ports are never reached"]),
    ({"proto": "udp", "min_syn_ratio": 0.5},
     ["d.yml: $[0].min_syn_ratio: rule 'r': only TCP flows carry flags, and proto is 'udp'"]),
    ({"min_flows": 3, "include_prefixes": ["10.1.0.0/24"], "exclude_prefixes": ["10.0.0.0/8"]},
     ["d.yml: $[0].include_prefixes[0]: rule 'r': 10.1.0.0/24 lies inside exclude_prefixes[0] (10.0.0.0/8): "
      "never matched"]),
    ({}, ["d.yml: $[0]: rule 'r': sets no threshold (a min_* or unique_* key): every key would match"]),
    ({"min_flows": 3, "directon": "inbound"},
     ["d.yml: $[0].directon: rule 'r': unknown key (did you mean 'direction'?)"]),
    ({"min_flows": 3, "direction": ["inbound", "sideways"]},
     ["d.yml: $[0].direction[1]: rule 'r': 'sideways' is not one of ['inbound', 'outbound', 'internal', "
      "'transit', 'unknown', 'any']"]),
    ({"min_flows": 3, "action": "alert,page"},
     ["d.yml: $[0].action: rule 'r': 'alert,page' is not a comma-separated list of alert, blackhole, clickhouse, "
      "slack, webhook"]),
])
def test_contradictions_are_refused_with_rule_name_and_path(rule: dict[str, Any], expected: list[str]) -> None:
    assert problems([{"name": "r", "time_window": "60s", "action": "alert", **rule}]) == expected


def test_a_window_longer_than_the_flow_cache_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "detection.yml"
    path.write_text(ORIGINAL.read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_rules(path, max_window_s=10)
    assert caught.value.problems == [
        f"{path}: $[0].time_window: rule 'slow_horizontal_scan': '60s' is longer than "
        "detection.flow_cache_max_window (10s): the engine keeps no state that old"
    ]
    assert load_rules(path) and load_rules(path, max_window_s=60)


def test_problems_of_several_rules_name_each_rule(tmp_path: Path) -> None:
    path = tmp_path / "detection.yml"
    path.write_text(textwrap.dedent("""\
        rules:
          - {name: scan, proto: tcp, unique_dst_ip: 5, min_flows: 5, time_window: 60s, action: alert}
          - {name: flood, key: dst, unique_src_ips: 100, time_window: 10s, action: alert, blackhole_time: 60}
        """), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_rules(path)
    assert caught.value.problems == [
        f"{path}: $.rules[0].unique_dst_ip: rule 'scan': unknown key (did you mean 'unique_dst_ips'?)",
        f"{path}: $.rules[1].blackhole_time: rule 'flood': is set, but action has no blackhole "
        "(add blackhole to action, or remove it)",
    ]
