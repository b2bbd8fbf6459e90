"""Detection engine throughput, one core: flows/s through `DetectionEngine.process`
with the original rule plus ten more, on generated traffic (normal plus every attack
kind) timed as if it arrived at `--rate` flows per second.

    python bench/detect.py [--rate 300000] [--seconds 20] [--batch 50000]

Generation is outside the timer; `tick` runs once per simulated second, as the
service calls it, and is timed with `process`.  The rate printed is flows over the CPU
time of the engine's thread (the wall-clock rate is printed too: on a shared machine it
also counts time the process waited for a core).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from appliance.flowenricher.detect import Detection, DetectionEngine, Rule, load_rule_set, parse_rule_set
from appliance.flowenricher.generate.traffic import TrafficGenerator

REPO = Path(__file__).resolve().parents[1]

# Three more rules besides the shipped examples: an infected customer scanning out, an
# ICMP sweep, a flood on one service port of a victim.
EXTRA_RULES = [
    {"name": "outbound_scan", "direction": "outbound", "proto": "tcp", "unique_dst_ips": 100,
     "min_syn_ratio": 0.8, "time_window": "60s", "action": "alert"},
    {"name": "icmp_sweep", "proto": "icmp", "unique_dst_ips": 50, "time_window": "60s", "action": "alert"},
    {"name": "port_flood", "key": "dst", "same_dst_port": True, "min_pps": 50000, "unique_src_ips": 20,
     "time_window": "10s", "action": "alert"},
]


class Count:
    """An action that only counts detections."""

    name = "alert"

    def __init__(self) -> None:
        self.detections: list[Detection] = []

    def handle(self, rule: Rule, detection: Detection) -> None:
        self.detections.append(detection)

    def close(self) -> None:
        return None


def rules() -> list[Rule]:
    original = load_rule_set(REPO / "tests" / "data" / "examples" / "detection.original.yml")
    shipped = [r for r in load_rule_set(REPO / "appliance" / "flowenricher" / "examples" / "detection.yml")
               if r.name != original[0].name]
    return original + shipped + parse_rule_set(EXTRA_RULES, "bench")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=300_000, help="simulated flows per second")
    ap.add_argument("--seconds", type=int, default=20, help="simulated seconds")
    ap.add_argument("--batch", type=int, default=50_000, help="flows per process() call")
    ap.add_argument("--max-keys", type=int, default=100_000, help="keys tracked per rule")
    ap.add_argument("--scenario", default="attacks")
    args = ap.parse_args()

    active = rules()
    counter = Count()
    engine = DetectionEngine(active, [counter], CollectorRegistry(), max_keys_per_rule=args.max_keys)
    gen = TrafficGenerator(scenario=args.scenario, seed=1)
    t0 = 1_800_000_000
    per_second = max(1, args.rate // args.batch)
    flows, busy, cpu, worst, worst_cpu = 0, 0.0, 0.0, 0.0, 0.0
    for second in range(args.seconds):
        for part in range(per_second):
            start_ms = (t0 + second) * 1000 + part * 1000 // per_second
            batch = gen.batch(args.batch, start_ms, 1000 // per_second).to_flow_batch()
            batch["received_at"] = np.full(batch.n, t0 + second, dtype=np.uint32)
            began, cpu_began = time.perf_counter(), time.thread_time()
            engine.process(batch)
            spent, cpu_spent = time.perf_counter() - began, time.thread_time() - cpu_began
            busy += spent
            cpu += cpu_spent
            worst, worst_cpu = max(worst, spent), max(worst_cpu, cpu_spent)
            flows += batch.n
        began, cpu_began = time.perf_counter(), time.thread_time()
        engine.tick(t0 + second + 1)
        busy += time.perf_counter() - began
        cpu += time.thread_time() - cpu_began
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"command: python bench/detect.py --rate {args.rate} --seconds {args.seconds} --batch {args.batch} "
          f"--max-keys {args.max_keys} --scenario {args.scenario}")
    print(f"rules: {len(active)} ({', '.join(r.name for r in active)})")
    print(f"engine: {flows / cpu / 1e3:8.1f} k flows/s per core of CPU time ({flows} flows in {cpu:.2f} s CPU, "
          f"{busy:.2f} s wall: {flows / busy / 1e3:.1f} k flows/s)")
    print(f"slowest process() of {args.batch} flows: {worst_cpu * 1e3:.1f} ms CPU, {worst * 1e3:.1f} ms wall; "
          f"max RSS {rss_mb:.0f} MB")
    for state in engine._states:
        window = state.window
        print(f"  rule {window.rule.name:22s} keys {window.tracked:7d}  state {window.memory_bytes() / 1e6:7.1f} MB")
    fired = sorted({(d.rule, d.key, d.address) for d in counter.detections})
    print(f"detections: {len(counter.detections)} ({len(fired)} distinct rule/key pairs)")
    for name, key, address in fired[:20]:
        print(f"  {name:22s} {key} {address}")
    if len(fired) > 20:
        print(f"  ... and {len(fired) - 20} more")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
