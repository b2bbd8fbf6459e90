"""API latency: p50 and p99 of ``lookup`` and of top-N queries over 24 hours of flows.

Fills an embedded chDB store with `--flows` flows spread over the last 24 hours (the
generator's small-AS traffic, with AS numbers and countries drawn Zipf-like, as
enrichment would set them), serves the API with uvicorn on a loopback port and times
requests from an HTTP client in the same process (so the figures include the client's
share of the two cores).

- lookup: ``/api/v1/lookup/{ip}`` with a lookup that reads MaxMind's test ASN and City
  databases and the store's ``ptr_cache`` (what the appliance's lookup consults).
- top src_host: ``/api/v1/flows/top?by=src_host`` over 24 h, from the flows table
  (addresses are not in the rollups): the worst case, one group per address.
- top dst_as: the same by destination AS, answered from the 1h rollup.
- series: ``/api/v1/flows/series`` over 24 h (5 min buckets, from the 5m rollup).

    python bench/api.py [--flows 10000000] [--requests 1000] [--data DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import maxminddb
import numpy as np
from prometheus_client import CollectorRegistry

from appliance.api import ApiDeps, create_app
from appliance.api.server import ApiServer
from appliance.api.tokens import create_token
from appliance.flowenricher.batch import DictColumn, FlowBatch, ipv4_to_addr
from appliance.flowenricher.blackhole.manager import BlackholeManager
from appliance.flowenricher.blackhole.safety import SafetyPolicy, SafetySettings
from appliance.flowenricher.blackhole.state import StateDB
from appliance.flowenricher.common.sql import string as quote
from appliance.flowenricher.config import parse_config
from appliance.flowenricher.generate.traffic import TrafficGenerator
from appliance.flowenricher.storage import StoreSettings, open_store
from appliance.flowenricher.storage.base import FlowStore

DAY = 86400
BATCH = 250_000
GEOIP = Path(__file__).resolve().parents[1] / "tests" / "data" / "geoip"  # MaxMind's test databases
MY_ASN = 65001
COUNTRIES = ["US", "DE", "FR", "NL", "GB", "RU", "CN", "BR", "IN", "JP", "GR", "IT", "ES", "PL", "SE", ""]


class NoGoBGP:
    """The benchmark announces nothing."""

    def announce(self, prefix: str, next_hop: str, communities: Any) -> None: ...

    def withdraw(self, prefix: str, next_hop: str, communities: Any) -> None: ...

    def announced(self, prefixes: Any) -> set[str]:
        return set()

    def confirmed(self, prefixes: Any) -> set[str]:
        return set()


def fill(store: FlowStore, flows: int, end: int) -> None:
    """`flows` generated flows in [end - 24 h, end), inserted in 250k-row batches."""
    generator = TrafficGenerator(seed=7)
    rng = np.random.default_rng(7)
    ases = rng.integers(1, 400_000, 2000).astype(np.uint32)
    weights = 1.0 / np.arange(1, len(ases) + 1) ** 1.1
    weights /= weights.sum()
    batches = max(1, -(-flows // BATCH))
    span_ms = DAY * 1000 // batches
    started = time.perf_counter()
    for i in range(batches):
        n = min(BATCH, flows - i * BATCH)
        batch = generator.batch(n, (end - DAY) * 1000 + i * span_ms, span_ms).to_flow_batch().take(np.arange(n))
        enrich(batch, rng, ases, weights)
        store.insert(batch)
    elapsed = time.perf_counter() - started
    print(f"filled {flows:,} flows over 24 h in {elapsed:.0f} s ({flows / elapsed:,.0f} flows/s incl. generation)")


def enrich(batch: FlowBatch, rng: np.random.Generator, ases: Any, weights: Any) -> None:
    """What enrichment would add, per address as GeoIP does: an AS (the operator's own for
    its side of the flow, Zipf-distributed others) and a country; plus exporter and times."""
    n = batch.n
    batch["received_at"] = batch["timestamp_end"] + np.uint32(1)
    batch["exporter_address"] = ipv4_to_addr(rng.choice(np.array([0x0A000001, 0x0A000002], np.uint32), n))
    country_weights = np.linspace(2, 1, len(COUNTRIES))
    direction = batch["flow_direction"]
    for side, mine in (("src", direction == 2), ("dst", direction == 1)):
        _, inverse = np.unique(batch[f"{side}_addr"], axis=0, return_inverse=True)
        inverse = inverse.ravel()
        per_address = rng.choice(ases, inverse.max() + 1, p=weights)
        batch[f"{side}_as"] = np.where(mine, MY_ASN, per_address[inverse]).astype(np.uint32)
        countries = rng.choice(len(COUNTRIES), inverse.max() + 1, p=country_weights / country_weights.sum())
        codes = np.where(mine, COUNTRIES.index("GR"), countries[inverse]).astype(np.uint32)
        batch[f"{side}_host_country"] = DictColumn(codes, COUNTRIES)


def make_lookup(store: FlowStore) -> Callable[[str], dict[str, Any]]:
    asn = maxminddb.open_database(str(GEOIP / "GeoLite2-ASN-Test.mmdb"))
    city = maxminddb.open_database(str(GEOIP / "GeoIP2-City-Test.mmdb"))

    def lookup(ip: str) -> dict[str, Any]:
        found_asn, found_city = asn.get(ip), city.get(ip)
        a: dict[str, Any] = found_asn if isinstance(found_asn, dict) else {}
        c: dict[str, Any] = found_city if isinstance(found_city, dict) else {}
        ptr = store.query(f"SELECT ptr FROM flowenricher.ptr_cache WHERE ip = {quote(ip)} LIMIT 1", "TSV")
        return {"ip": ip, "asn": a.get("autonomous_system_number", 0),
                "as_name": a.get("autonomous_system_organization", ""),
                "country": (c.get("country") or {}).get("iso_code", ""), "ptr": ptr.decode().strip()}

    return lookup


def percentiles(samples: list[float]) -> str:
    ms = np.array(samples) * 1000
    return (f"p50 {np.percentile(ms, 50):7.1f} ms  p99 {np.percentile(ms, 99):7.1f} ms  "
            f"max {ms.max():7.1f} ms  ({len(ms)} requests)")


def timed(client: httpx2.Client, url: str, params: dict[str, Any], count: int) -> list[float]:
    client.get(url, params=params).raise_for_status()  # warm caches once
    out = []
    for _ in range(count):
        started = time.perf_counter()
        response = client.get(url, params=params)
        out.append(time.perf_counter() - started)
        response.raise_for_status()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flows", type=int, default=10_000_000)
    ap.add_argument("--requests", type=int, default=1000, help="lookups to time (top N: a tenth, at least 10)")
    ap.add_argument("--data", type=Path, default=None, help="data directory to keep (default: a temporary one)")
    args = ap.parse_args()
    root = args.data or Path(tempfile.mkdtemp(prefix="bench-api-"))
    root.mkdir(parents=True, exist_ok=True)
    end = int(time.time()) // 3600 * 3600
    store = open_store(StoreSettings(path=str(root / "data")))
    try:
        store.migrate()
        have = int(store.query("SELECT count() FROM flowenricher.flows", "TSV"))
        if have and have < args.flows:
            raise SystemExit(f"{root} holds {have:,} flows, fewer than --flows: use an empty --data directory")
        if not have:
            fill(store, args.flows, end)
        else:
            end = int(store.query("SELECT toUnixTimestamp(max(timestamp_start)) + 1 FROM flowenricher.flows", "TSV"))
        store.query("INSERT INTO flowenricher.ptr_cache (ip, ptr) VALUES ('1.0.0.1', 'one.one.example')", "TSV")
        state = StateDB(f"sqlite:///{root}/state.db")
        token = create_token(state.engine, "read", "bench").token
        registry = CollectorRegistry()
        manager = BlackholeManager(state, NoGoBGP(), SafetyPolicy(SafetySettings()), None, registry=registry)
        app = create_app(ApiDeps(settings=parse_config({}), blackholes=manager, registry=registry, query=store.query,
                                 lookup=make_lookup(store), clock=lambda: float(end)))
        server = ApiServer(app, "127.0.0.1", 0)
        server.start()
        try:
            base = f"http://127.0.0.1:{server.port}"
            span = {"from": end - DAY, "to": end}
            heavy = max(10, args.requests // 10)
            with httpx2.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=120) as client:
                rows = client.get("/api/v1/exporters", params=span).json()["exporters"]
                print(f"store: {sum(r['flows'] for r in rows):,} flows in the 24 h range")
                print(f"lookup             {percentiles(timed(client, '/api/v1/lookup/1.0.0.1', {}, args.requests))}")
                top_host = timed(client, "/api/v1/flows/top", {"by": "src_host", **span}, heavy)
                print(f"top src_host 24 h  {percentiles(top_host)}  [flows table]")
                top_as = timed(client, "/api/v1/flows/top", {"by": "dst_as", **span}, heavy)
                print(f"top dst_as 24 h    {percentiles(top_as)}  [1h rollup]")
                series = timed(client, "/api/v1/flows/series", {"step": 300, **span}, heavy)
                print(f"series 24 h / 5 m  {percentiles(series)}  [5m rollup]")
        finally:
            server.stop()
    finally:
        store.close()
    print(f"data in {root}")


if __name__ == "__main__":
    main()
