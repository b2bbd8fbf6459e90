"""Decode throughput, one core: flowenricher's columnar decoder beside the `netflow`
package (PyPI) on the same packets (MikroTik-like templates, 30 records a packet).

    python bench/decode.py [--flows 600000]
"""

from __future__ import annotations

import argparse
import time

import netflow

from appliance.flowenricher.decode.dispatch import FlowDecoder
from appliance.flowenricher.generate.encode import build_packets


def ours(packets: list[bytes]) -> tuple[int, float]:
    decoder = FlowDecoder()
    decoder.decode([(packets[0], "192.0.2.1", 0)])
    data = [(p, "192.0.2.1", 0) for p in packets[1:]]
    start = time.perf_counter()
    n = 0
    for i in range(0, len(data), 2048):
        n += decoder.decode(data[i : i + 2048]).n
    return n, time.perf_counter() - start


def theirs(packets: list[bytes], limit: int) -> tuple[int, float]:
    templates: dict[str, dict[int, object]] = {"netflow": {}, "ipfix": {}}
    netflow.parse_packet(packets[0], templates)
    start = time.perf_counter()
    n = 0
    for p in packets[1 : limit + 1]:
        n += len(netflow.parse_packet(p, templates).flows)
    return n, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--flows", type=int, default=600_000)
    args = ap.parse_args()
    for proto in ("v9", "ipfix"):
        packets = build_packets(proto, args.flows, records_per_packet=30, seed=1)
        n1, t1 = ours(packets)
        n2, t2 = theirs(packets, limit=len(packets) // 10)
        r1, r2 = n1 / t1, n2 / t2
        print(f"{proto:6s} flowenricher {r1 / 1e6:6.2f} M flows/s ({n1} flows)   "
              f"netflow {r2 / 1e3:7.1f} k flows/s ({n2} flows)   ratio {r1 / r2:5.1f}x")


if __name__ == "__main__":
    main()
