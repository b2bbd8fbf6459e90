"""Dashboards at the design rate: every panel's query, at its dashboard's default range,
timed on an embedded store (chDB) holding `--flows` generated flows.
`--block-seconds 1` inserts as the writer does at its default 1 s flush (slow to load).

    python bench/dashboards.py [--flows 100000000] [--rate 5000] [--dir /tmp/fe-dash] [--keep]
    python bench/dashboards.py --reuse /tmp/fe-dash      # time the queries again, no load
    python bench/dashboards.py ... --dashboards DIR      # time other dashboard files (before/after)

Load: one insert per minute of traffic by default (`--rate` x 60 flows, the generator's "attacks"
scenario enriched with AS, country, exporter and upstream as tests/test_dashboards.py
does, vectorised), ending now, through FlowStore.insert (the writer's insert path, with
every rollup view on).  To keep the load short, `--templates` distinct minutes
are generated and repeated with their times shifted: within a minute the addresses and
ports are the generator's; over hours the same hosts recur more than in real traffic,
which makes the hourly buckets smaller than real ones (say so with the figures).
Loading ran at 200k rows/s for 1.8M flows on a quiet machine (so about 9 minutes for
100M, by arithmetic), 40-55k rows/s under a load average of 8-10.  Disk: the data
directory took 3.7 GB for 63.4M flows (about 60 bytes a flow, all tables), so about
6 GB for 100M under /tmp; it is deleted at the end unless `--keep`.

Queries: each dashboard's variables resolved from their own queries (everything on
"All", `host` the top destination), then every panel target rendered the way Grafana and
the ClickHouse plugin would (tests/support/grafana_macros.py) and run once to warm up and
`--repeat` times; the best time is printed with the table the query reads and its rows.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.grafana_macros import ALL, Selection, TimeRange, interval_s, render  # noqa: E402

from appliance.flowenricher.batch import DictColumn, FlowBatch, ipv4_to_addr  # noqa: E402
from appliance.flowenricher.generate.traffic import TrafficGenerator  # noqa: E402
from appliance.flowenricher.storage import StoreSettings, open_store, schema  # noqa: E402
from appliance.flowenricher.storage.base import FlowStore  # noqa: E402

DASHBOARDS = ROOT / "roles" / "grafana" / "files" / "dashboards"
DATABASE = "flowenricher"
MY_ASN = 64500
EXPORTERS = (0x0A000001, 0x0A000002)
COUNTRIES = ["US", "DE", "FR", "NL", "GB", "RU", "CN", "BR", "GR"]
UPLINK_AS = np.array([0, 174, 6939, 8866], np.uint32)  # by ifIndex 1..3, 0 elsewhere
UPLINK_NAMES = ["", "COGENT-174", "HURRICANE", "GRIX"]


def _address_key(addr: np.ndarray) -> np.ndarray:
    """A well-mixed 32-bit number per address (its last 4 bytes, multiplied)."""
    tail = np.ascontiguousarray(addr[:, 12:16]).view(">u4").ravel().astype(np.uint64)
    return (tail * np.uint64(2654435761) % np.uint64(1 << 32)).astype(np.uint32)


def enrich(batch: FlowBatch, rng: np.random.Generator, ases: np.ndarray, cdf: np.ndarray) -> None:
    """What the enrichment stages add, drawn per address so it stays consistent."""
    n = batch.n
    batch["received_at"] = batch["timestamp_end"] + np.uint32(1)
    batch["exporter_address"] = ipv4_to_addr(np.array(EXPORTERS, np.uint32)[rng.integers(0, 2, n)])
    direction = batch["flow_direction"]
    names = [f"ORG-{int(a)}" for a in ases] + ["MY-HOSTING"]
    for side, mine in (("src", direction == 2), ("dst", direction == 1)):
        key = _address_key(batch[f"{side}_addr"])
        drawn = np.minimum(np.searchsorted(cdf, key.astype(np.float64) / 2**32), len(ases) - 1)  # Zipf over the pool
        index = np.where(mine, len(ases), drawn).astype(np.uint32)
        batch[f"{side}_as"] = np.append(ases, MY_ASN).astype(np.uint32)[index]
        batch[f"{side}_as_name"] = DictColumn(index, names)
        country = np.where(mine, COUNTRIES.index("GR"), key % len(COUNTRIES)).astype(np.uint32)
        batch[f"{side}_host_country"] = DictColumn(country, COUNTRIES)
    for column, ifindex in (("peer_src_as", batch["input_interface"]), ("peer_dst_as", batch["output_interface"])):
        uplink = np.where(ifindex <= 3, ifindex, 0).astype(np.intp)
        batch[column] = UPLINK_AS[uplink]
        if column == "peer_dst_as":
            batch["peer_dst_as_name"] = DictColumn(uplink.astype(np.uint32), UPLINK_NAMES)


def load(store: FlowStore, flows: int, rate: int, templates: int, end_s: int, block_s: int = 60) -> tuple[int, float]:
    """Insert `flows` flows at `rate` per second ending at `end_s`, one insert per `block_s`
    seconds of traffic (the writer sends one per flush interval, 1 s by default, or per
    `insert.batch_size` flows); (rows, seconds)."""
    per_minute = rate * 60
    minutes = max(1, flows // per_minute)
    start_s = end_s - minutes * 60
    generator = TrafficGenerator(scenario="attacks", seed=17)
    rng = np.random.default_rng(17)
    ases = rng.integers(1000, 400_000, 300).astype(np.uint32)
    weights = 1.0 / np.arange(1, len(ases) + 1) ** 1.1
    cdf = np.cumsum(weights / weights.sum())
    pool = []
    for k in range(min(templates, minutes)):
        batch = generator.batch(per_minute, (start_s + k * 60) * 1000, 60_000).to_flow_batch()
        enrich(batch, rng, ases, cdf)
        pool.append(batch)
    print(f"generated {len(pool)} distinct minutes of {per_minute} flows", flush=True)
    rows, started = 0, time.perf_counter()
    for minute in range(minutes):
        template = pool[minute % len(pool)]
        shift = np.uint32((minute - minute % len(pool)) * 60)
        batch = template.take(np.arange(template.n))
        for column in ("timestamp_start", "timestamp_end", "received_at"):
            batch[column] = template[column] + shift
        for block in np.array_split(np.arange(batch.n), max(1, 60 // block_s)):  # sorted by end time
            store.insert(batch.take(block))
        rows += batch.n
        if minute % 30 == 29:
            elapsed = time.perf_counter() - started
            print(f"  {rows:>12,} rows in {elapsed:6.0f} s ({rows / elapsed:,.0f} rows/s)", flush=True)
    return rows, time.perf_counter() - started


# --------------------------------------------------------------------------- queries


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def _rows(store: FlowStore, sql: str) -> list[list[str]]:
    return [line.split("\t") for line in store.query(sql, "TSV").decode().splitlines()]


def _selections(store: FlowStore, dashboard: dict[str, Any], time_range: TimeRange) -> dict[str, Selection]:
    chosen: dict[str, Selection] = {}
    for var in dashboard.get("templating", {}).get("list", []):
        name = var["name"]
        if var["type"] == "constant":
            chosen[name] = Selection((DATABASE,), (DATABASE,), multi=False)
        elif var["type"] == "textbox":
            dst_hosts = next(w for w in schema.WHO_ROLLUPS if w.name == "dst_hosts")
            table = schema.who_description("flows", schema.WHO_STEPS[0], dst_hosts).name
            top = _rows(store, f"SELECT dst_addr FROM {DATABASE}.{table} GROUP BY dst_addr ORDER BY sum(bytes) DESC LIMIT 1")
            host = re.sub(r"^::ffff:", "", top[0][0]) if (name == "host" and top) else ""
            chosen[name] = Selection((host,), (host,), multi=False)
        elif var["type"] == "custom":
            values = [item.partition(" : ")[2].strip() or item.strip() for item in var["query"].split(",")]
            current = (ALL,) if var.get("includeAll") else (values[0],)
            chosen[name] = Selection(tuple(values), current, multi=bool(var.get("multi")),
                                     all_value=var.get("allValue"))
        else:
            sql = render(var["query"], time_range, interval_s(time_range), chosen, name)
            options = [r[0] for r in _rows(store, sql)] or [""]
            current = (ALL,) if var.get("includeAll") else (options[0],)
            chosen[name] = Selection(tuple(options), current, multi=bool(var.get("multi")),
                                     all_value=var.get("allValue"))
    return chosen


def _source(store: FlowStore, sql: str) -> str:
    """What the query reads by the engine's index analysis (EXPLAIN ESTIMATE): "raw" when
    the flows table, "rollup" when only rollups; a branch whose condition is constant
    false (a who panel's flows branch without an AS chosen) reads nothing and counts not."""
    read = {row[1] for row in _rows(store, f"EXPLAIN ESTIMATE {sql}") if int(row[3]) > 0 and row[1].startswith("flows")}
    return "raw" if "flows" in read else ("rollup" if read else "-")


def time_queries(store: FlowStore, now_s: int, repeat: int,
                 dashboards: Path = DASHBOARDS) -> list[tuple[str, str, str, float, int]]:
    out = []
    for path in sorted(dashboards.glob("*.json")):
        dashboard = json.loads(path.read_text(encoding="utf-8"))
        span = dashboard["time"]["from"]  # now-6h on every dashboard
        m = re.fullmatch(r"now-(\d+)([mhd])", span)
        assert m, f"{path.name}: default range {span}"
        seconds = int(m.group(1)) * {"m": 60, "h": 3600, "d": 86400}[m.group(2)]
        time_range = TimeRange.last(seconds, now_s)
        chosen = _selections(store, dashboard, time_range)
        for panel in _panels(dashboard):
            for target in panel.get("targets", []):
                interval = interval_s(time_range, panel.get("maxDataPoints", 1000), panel.get("interval"))
                sql = render(target["rawSql"], time_range, interval, chosen, panel["title"])
                store.query(sql, "TSV")  # warm-up: file cache and marks, as a refreshed dashboard has
                best, rows = float("inf"), 0
                for _ in range(repeat):
                    started = time.perf_counter()
                    answer = store.query(sql, "TSV")
                    best = min(best, time.perf_counter() - started)
                    rows = len(answer.splitlines())
                source = _source(store, sql)
                out.append((path.stem, panel["title"], source, best, rows))
                print(f"{path.stem:<11} {panel['title'][:52]:<52} {source:<6} {best:7.3f} {rows:6d}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flows", type=int, default=100_000_000)
    ap.add_argument("--rate", type=int, default=5000, help="flows per second of the generated traffic")
    ap.add_argument("--templates", type=int, default=20, help="distinct generated minutes, repeated")
    ap.add_argument("--block-seconds", type=int, default=60, help="seconds of traffic per insert (1 to 60)")
    ap.add_argument("--dir", default="/tmp/fe-dashboards-bench")
    ap.add_argument("--reuse", help="an existing data directory from --keep: time the queries only")
    ap.add_argument("--keep", action="store_true", help="keep the data directory")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dashboards", type=Path, default=DASHBOARDS, help="the dashboard files to time (default: shipped)")
    args = ap.parse_args()
    where = Path(args.reuse or args.dir)
    if not args.reuse:
        shutil.rmtree(where, ignore_errors=True)
    store = open_store(StoreSettings(path=str(where), database=DATABASE, ttl_days=0))
    try:
        if args.reuse:
            now_s = int(_rows(store, f"SELECT toUnixTimestamp(max(timestamp_start)) FROM {DATABASE}.flows")[0][0])
        else:
            store.migrate()
            now_s = int(time.time()) // 60 * 60
            rows, seconds = load(store, args.flows, args.rate, args.templates, now_s, args.block_seconds)
            print(f"loaded {rows:,} flows in {seconds:.0f} s ({rows / seconds:,.0f} rows/s)")
        for table, count, size in _rows(store, "SELECT table, sum(rows), sum(bytes_on_disk) FROM system.parts "
                                               f"WHERE database = '{DATABASE}' AND active GROUP BY table ORDER BY table"):
            print(f"  {table:<24} {int(count):>12,} rows {int(size) / 1e6:10.1f} MB")
        print(f"{'dashboard':<11} {'panel':<52} {'source':<6} {'seconds':>7} {'rows':>6}")
        results = time_queries(store, now_s, args.repeat, args.dashboards)
        slow = [r for r in results if r[3] > 1.0]
        print(f"{len(results)} queries, {len(slow)} over 1 s, slowest {max(r[3] for r in results):.3f} s")
    finally:
        store.close()
        if not args.keep and not args.reuse:
            shutil.rmtree(where, ignore_errors=True)


if __name__ == "__main__":
    main()
