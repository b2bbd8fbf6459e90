"""GeoIP/ASN stage throughput, one core: unique-address lookups per second (cache cold),
and whole batches with the cache warm, on MaxMind's test databases or real ones.

    python bench/enrich_geo.py [--asn-db F] [--city-db F] [--addresses 50000] [--flows 250000]

Addresses are drawn inside the databases' own networks, so every lookup decodes a
record (the expensive part: a City record holds names in eight languages).
"""

from __future__ import annotations

import argparse
import ipaddress
import resource
import time
from pathlib import Path

import maxminddb
import numpy as np
from prometheus_client import CollectorRegistry

from appliance.flowenricher.batch import FlowBatch
from appliance.flowenricher.enrich.base import AddressSet, public_mask
from appliance.flowenricher.enrich.geo import GeoStage

DATA = Path(__file__).resolve().parent.parent / "tests" / "data" / "geoip"


def addresses_in(paths: list[Path], count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` distinct public addresses (n, 16) drawn inside the databases' networks."""
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for path in paths:
        with maxminddb.open_database(str(path)) as reader:
            nets.extend(net for net, _ in reader)
    rows = []
    for i in rng.integers(0, len(nets), count * 2):
        net = nets[int(i)]
        offset = int(rng.integers(0, min(net.num_addresses, 2**62)))
        addr = net.network_address + offset
        raw = (bytes(10) + b"\xff\xff" + addr.packed) if addr.version == 4 else addr.packed
        rows.append(raw)
    arr = np.unique(np.frombuffer(b"".join(rows), np.uint8).reshape(-1, 16), axis=0)
    arr = arr[public_mask(arr)]
    rng.shuffle(arr)
    return arr[:count]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--asn-db", type=Path, default=DATA / "GeoLite2-ASN-Test.mmdb")
    ap.add_argument("--city-db", type=Path, default=DATA / "GeoIP2-City-Test.mmdb")
    ap.add_argument("--addresses", type=int, default=50000)
    ap.add_argument("--flows", type=int, default=250000)
    args = ap.parse_args()
    rng = np.random.default_rng(1)
    pool = addresses_in([args.asn_db, args.city_db], args.addresses, rng)
    m = len(pool)

    stage = GeoStage(args.asn_db, args.city_db, cache_size=max(m, 1), registry=CollectorRegistry())
    print(f"databases: {', '.join(db.describe() for db in stage.databases.values())}")
    print(f"C extension: {stage.uses_c_extension}")
    # Cold: every unique address is a database lookup in both databases.
    cold = FlowBatch(m, {"src_addr": pool, "dst_addr": pool})
    addrs = AddressSet.of(cold)
    start = time.perf_counter()
    stage.enrich(cold, addrs)
    elapsed = time.perf_counter() - start
    print(f"cold: {m} unique addresses in {elapsed * 1e3:.0f} ms = {m / elapsed:,.0f} addresses/s (ASN + City)")

    # Warm: a batch of flows over the same addresses, all answered from the cache.
    pick = rng.integers(0, m, (args.flows, 2))
    batch = FlowBatch(args.flows, {"src_addr": pool[pick[:, 0]], "dst_addr": pool[pick[:, 1]]})
    addrs = AddressSet.of(batch)
    start = time.perf_counter()
    stage.enrich(batch, addrs)
    elapsed = time.perf_counter() - start
    print(f"warm: {args.flows} flows, {len(addrs)} unique addresses in {elapsed * 1e3:.0f} ms "
          f"= {args.flows / elapsed:,.0f} flows/s")
    print(f"cache entries: {stage.cache_len()}, max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    stage.close()


if __name__ == "__main__":
    main()
