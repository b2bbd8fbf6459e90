"""Shared parts of the backtest tests (no tests here): generated traffic with known
attacks, stored and detected live second by second as the service does, the rules the
backtests replay it through, and a config around them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml
from prometheus_client import CollectorRegistry

from appliance.flowenricher.batch import FlowBatch
from appliance.flowenricher.config import Settings, load_config
from appliance.flowenricher.detect.detection import Detection
from appliance.flowenricher.detect.engine import RECORDED, DetectionEngine
from appliance.flowenricher.detect.rules import Rule
from appliance.flowenricher.generate.traffic import TrafficGenerator
from appliance.flowenricher.storage import FlowStore

T0 = 1_800_000_000
SECONDS = 150
FPS = 400

RULES = [
    {"name": "horizontal_scan", "proto": "tcp", "same_dst_port": True, "unique_dst_ips": 50, "min_flows": 70,
     "time_window": "60s", "action": "alert,blackhole", "blackhole_count": 50, "blackhole_time": 3600},
    {"name": "vertical_scan", "proto": "tcp", "same_dst_ip": True, "unique_dst_ports": 100, "min_flows": 100,
     "time_window": "60s", "action": "alert"},
    {"name": "syn_flood", "key": "dst", "proto": "tcp", "tcp_flags": "syn_only", "min_flows": 500,
     "unique_src_ips": 100, "time_window": "10s", "action": "alert,blackhole", "blackhole_count": 100,
     "blackhole_time": 600},
    {"name": "ssh_bruteforce", "proto": "tcp", "dst_ports": [22], "same_dst_ip": True, "min_flows": 100,
     "time_window": "2m", "action": "alert"},
]


class _Seen:
    name = RECORDED

    def __init__(self) -> None:
        self.keys: set[tuple[str, tuple[str, str | None, int | None]]] = set()

    def handle(self, rule: Rule, detection: Detection) -> None:
        self.keys.add((rule.name, (detection.address, detection.dst_addr, detection.dst_port)))

    def close(self) -> None:
        pass


def write_rules(path: Path, rules: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump(rules))
    return path


INSERT_EVERY_S = 30
"""Seconds of traffic stored per insert.  The service inserts about once a second; a
backtest reads the flows table only (backtest.rollup_fit), which holds the same rows
however they were grouped, and one insert a second made these tests pay the rollup
views' per-insert cost 150 times a store (most of their time)."""


def store_and_detect(store: FlowStore, rules: list[Rule], scenario: str, seed: int = 3,
                     seconds: int = SECONDS) -> set[tuple[str, tuple[str, str | None, int | None]]]:
    """Generated traffic stored, and detected live as the service does (each second's
    batch processed, then tick(second + 1)); the live engine's (rule, key) set.  The
    seconds are stored INSERT_EVERY_S at a time."""
    seen = _Seen()
    engine = DetectionEngine(rules, [seen], CollectorRegistry())
    gen = TrafficGenerator(scenario=scenario, seed=seed)
    waiting: list[FlowBatch] = []
    for offset in range(seconds):
        at = T0 + offset
        batch = gen.batch(FPS, at * 1000, 1000).to_flow_batch()
        batch["received_at"] = np.full(batch.n, at, dtype=np.uint32)
        engine.process(batch)
        engine.tick(at + 1)
        waiting.append(batch)
        if len(waiting) == INSERT_EVERY_S or offset == seconds - 1:
            store.insert(FlowBatch.concat(waiting))
            waiting = []
    return seen.keys


def config(tmp_path: Path, **extra: Any) -> Settings:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"my_prefixes": ["84.54.49.0/24", "194.153.116.0/24", "2a14:4280::/29"],
                                    **extra}))
    return load_config(path)
