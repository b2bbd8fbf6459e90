"""Backtest speed and memory: generated traffic (normal plus every attack kind) stored,
then `run_backtest` with the shipped example rules over several range lengths, each in
a fresh process, so its peak RSS is the backtest's own.

    python bench/backtest.py --store embedded|server [--fps 30000] [--ranges 333,1000]

The rows are the project's traffic generator's (scenario ``attacks``, seed 5), one
batch of `--fps` flows per second, ``received_at`` = that second, inserted through the
store's own insert in blocks of about 1M flows: at 30000 flows/s, 333 s is 10M flows and
1000 s 30M.  Loading is timed but not part of the figures.  Printed per range: flows replayed, wall seconds, flows/s, the
multiple of real time at 30k flows/s (flows/s / 30000), detections, and the peak RSS of
the process.  With the server store the HTTP stand-in on chDB (tests/support) runs in
the parent, so the child's RSS is the appliance side only.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
T0 = 1_800_000_000
RULES = REPO / "appliance/flowenricher/examples/detection.yml"


def store_settings(directory: Path, port: int | None) -> Any:
    """The embedded store in `directory`, or the server on `port` when given."""
    from appliance.flowenricher.storage import StoreSettings

    if port:
        return StoreSettings(path=str(directory / "data"), host="127.0.0.1", port=port)
    return StoreSettings(path=str(directory / "data"))


def load(store_kind: str, directory: Path, fps: int, seconds: int, port: int | None) -> None:
    from appliance.flowenricher.generate.traffic import TrafficGenerator
    from appliance.flowenricher.storage import open_store

    settings = store_settings(directory, port)
    store = open_store(settings)
    store.migrate()
    gen = TrafficGenerator(scenario="attacks", seed=5)
    pending = []
    per_insert = max(1, 1_000_000 // fps)
    for offset in range(seconds):
        batch = gen.batch(fps, (T0 + offset) * 1000, 1000).to_flow_batch()
        batch["received_at"] = np.full(batch.n, T0 + offset, dtype=np.uint32)
        pending.append(batch)
        if len(pending) == per_insert:
            from appliance.flowenricher.batch import FlowBatch

            store.insert(FlowBatch.concat(pending))
            pending = []
    if pending:
        from appliance.flowenricher.batch import FlowBatch

        store.insert(FlowBatch.concat(pending))
    store.close()


def run(directory: Path, seconds: int, port: int | None) -> None:
    from appliance.flowenricher.backtest import ReplayWindow, run_backtest
    from appliance.flowenricher.config import Settings
    from appliance.flowenricher.detect.rules import load_rule_set
    from appliance.flowenricher.storage import open_store

    settings = store_settings(directory, port)
    store = open_store(settings)
    began = time.perf_counter()
    report = run_backtest(store.query, settings.qualified_table, Settings.default(),
                          [("detection.yml", load_rule_set(RULES))], ReplayWindow(T0, T0 + seconds))
    wall = time.perf_counter() - began
    store.close()
    detections = {name: rec.detections for name, rec in report.records[0].items() if rec.detections}
    print(json.dumps({"range_s": seconds, "flows": report.flows, "wall_s": round(wall, 2),
                      "flows_per_s": round(report.flows / wall), "x_real_time_at_30k": round(report.flows / wall / 30000, 2),
                      "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                      "detections": detections, "late": report.late, "peak_held_rows": report.peak_held,
                      "loadavg": Path("/proc/loadavg").read_text().split()[:3]}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--store", choices=("embedded", "server"), default="embedded")
    parser.add_argument("--fps", type=int, default=30000)
    parser.add_argument("--ranges", default="333,1000", help="range lengths in seconds, comma-separated")
    parser.add_argument("--phase", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    ranges = [int(v) for v in args.ranges.split(",")]
    if args.phase == "run":
        run(Path(args.dir), args.seconds, args.port)
        return
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        stand_in = None
        port = None
        if args.store == "server":
            sys.path.insert(0, str(REPO / "tests"))
            from support.clickhouse_http import ClickHouseHTTPStandIn

            stand_in = ClickHouseHTTPStandIn(str(directory / "server")).__enter__()
            port = stand_in.port
        try:
            began = time.perf_counter()
            load(args.store, directory, args.fps, max(ranges), port)
            print(f"loaded {args.fps * max(ranges)} flows ({max(ranges)} s at {args.fps}/s) in "
                  f"{time.perf_counter() - began:.0f} s; store {args.store}; "
                  f"loadavg {Path('/proc/loadavg').read_text().strip()}", flush=True)
            for seconds in ranges:
                cmd = [sys.executable, __file__, "--phase", "run", "--dir", str(directory), "--seconds", str(seconds)]
                if port:
                    cmd += ["--port", str(port)]
                subprocess.run(cmd, check=True)
        finally:
            if stand_in is not None:
                stand_in.__exit__(None, None, None)


if __name__ == "__main__":
    main()
