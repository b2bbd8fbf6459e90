"""RIB mirror with a full table: time to load it from GoBGP, RSS, batched lookups/s.

    python bench/rib.py [--v4 1000000] [--v6 200000] [--paths 100000] [--compare-listings]

What runs (as root; it builds the BGP lab of tests/support/bgp_lab.py): BIRD 2 announces
a synthetic table from its static protocols (a config of one route per line, each with
its AS path, communities and sometimes LOCAL_PREF) over iBGP to gobgpd, in a network
namespace.  The table: IPv4 prefixes mostly /24 (then /22-/23, /16-/21, a few shorter
and longer), IPv6 mostly /48 (then /32-/47, a few /29 and /64), random AS paths of 1 to
8 ASes drawn from a pool of ``--paths`` distinct paths (4-byte ASNs included), 0 to 3
standard communities.

Measured in a separate Python process (so the figures are the mirror's, with numpy,
gRPC and protobuf loaded as in the collector): the time from starting the mirror to the
whole table in use (by the watch's init dump up to the mirror's ``dump_limit``, 100k
prefixes, else by ListPath: gobgpd cannot send a full table in one message, see
appliance/flowenricher/bgp/client.py); its RSS at rest after the load and its peak
(VmHWM) during it; batched lookups/s of distinct sorted addresses (what the BGP stage
sends: ``np.unique`` output), with an empty overlay and with 20k pending changes; and
the time and peak RSS to merge those changes into a rebuilt base.  gobgpd's RSS: steady
(``VmRSS`` after 20 s at rest with the table) and its peak while the mirror loads
(``VmHWM``, reset through /proc/PID/clear_refs just before).  Runs in about five minutes
for a full table (BIRD and gobgpd take most of it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support.bgp_lab import BgpLab, StaticRoute
from support.netns import TestNetwork, require_netns

CHILD = r'''
import json, sys, time
import numpy as np
from appliance.flowenricher.bgp.mirror import RibMirror
from appliance.flowenricher.bgp.route import RouteAttributes, V4_MAPPED
from prometheus_client import CollectorRegistry

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0

target, expected = sys.argv[1], int(sys.argv[2])
out = {"rss_before_mb": status("VmRSS")}
mirror = RibMirror(target, CollectorRegistry(), merge_rows=1_000_000_000)
started = time.monotonic()
mirror.start()
while len(mirror.view()) < expected or not mirror.synchronized:  # synchronized: the load's figures are set
    time.sleep(0.05)
out["load_s"] = time.monotonic() - started
out["decode_and_build_s"] = mirror.last_load_s
out["method"] = mirror.last_load_method
time.sleep(1.0)
view = mirror.view()
out["prefixes_v4"], out["prefixes_v6"] = view.prefixes_v4, view.prefixes_v6
out["rss_mb"] = status("VmRSS")
out["peak_rss_mb"] = status("VmHWM")

rng = np.random.default_rng(7)
def addresses(n):
    v4 = np.zeros((n, 16), np.uint8)
    v4[:, 10:12] = 0xFF
    v4[:, 12:] = rng.integers(0, 256, (n, 4), dtype=np.uint8)
    v6 = rng.integers(0, 256, (n // 5, 16), dtype=np.uint8)
    v6[:, 0] = 0x20
    v6[:, 1] = rng.integers(0, 256, n // 5, dtype=np.uint8) & 0x0F
    both = np.concatenate([v4, v6])
    keys = np.ascontiguousarray(both).view(np.dtype((np.void, 16))).ravel()
    return np.frombuffer(np.unique(keys).tobytes(), np.uint8).reshape(-1, 16)

def rate(view, addrs, repeat=5):
    best = 1e9
    for _ in range(repeat):
        t = time.perf_counter()
        rows = view.lookup(addrs)
        best = min(best, time.perf_counter() - t)
    return len(addrs) / best, float((rows >= 0).mean())

for n in (5_000, 50_000, 500_000):
    addrs = addresses(n)
    out[f"lookups_per_s_{len(addrs)}"], out[f"hit_ratio_{len(addrs)}"] = rate(view, addrs)

# 20k pending changes (a third withdrawals) on top of the loaded table.
keys = mirror.state._base.table.keys
pick = rng.choice(len(keys), 20_000, replace=False)
changes = [(bytes(keys[i]).ljust(18, b"\0"),
            None if k % 3 == 0 else RouteAttributes((64999, 64998), 64998, 64999, V4_MAPPED + bytes(4), 1, ()))
           for k, i in enumerate(pick.tolist())]
del keys, view
mirror.stop()
state = mirror.state
t = time.perf_counter(); state.apply(changes); out["apply_20k_s"] = time.perf_counter() - t
t = time.perf_counter(); view = state.view(); out["overlay_view_s"] = time.perf_counter() - t
addrs = addresses(50_000)
out[f"lookups_per_s_overlay_{len(addrs)}"], _ = rate(view, addrs)
del view
open("/proc/self/clear_refs", "w").write("5")  # peak RSS from here on: the merge's
t = time.perf_counter(); state.merge(); out["merge_s"] = time.perf_counter() - t
out["peak_rss_merge_mb"] = status("VmHWM")
out["rss_after_merge_mb"] = status("VmRSS")
print(json.dumps(out))
'''


LISTING = r'''
import json, sys, time
import grpc, grpc.experimental
from appliance.flowenricher.bgp.client import CHANNEL_OPTIONS, SINGLE_THREADED_UNARY_STREAM
from appliance.flowenricher.bgp.stubs import gobgp_pb2 as api
target, wire, single = sys.argv[1], sys.argv[2] == "wire", sys.argv[3] == "single"
options = [*CHANNEL_OPTIONS, *([(SINGLE_THREADED_UNARY_STREAM, 1)] if single else [])]
channel = grpc.insecure_channel(target, options=options)
call = channel.unary_stream("/apipb.GobgpApi/ListPath", request_serializer=api.ListPathRequest.SerializeToString,
                            response_deserializer=api.ListPathResponse.FromString)
started, first, n = time.monotonic(), None, 0
for afi in (api.Family.AFI_IP, api.Family.AFI_IP6):
    request = api.ListPathRequest(table_type=api.GLOBAL, family=api.Family(afi=afi, safi=api.Family.SAFI_UNICAST),
                                  enable_only_binary=wire)
    for response in call(request, timeout=1800):
        first = time.monotonic() - started if first is None else first
        n += 1
print(json.dumps({"prefixes": n, "seconds": time.monotonic() - started, "first_s": first}))
'''
"""One bare listing of the table (no decoding, no RIB): attributes as ``Any``s or in wire
form, the stream read by gRPC's polling thread or on the caller's; for --compare-listings."""


def synthetic_table(n4: int, n6: int, n_paths: int, seed: int = 1) -> list[StaticRoute]:
    rng = np.random.default_rng(seed)
    upstreams = np.array([174, 1299, 3356, 6939, 64500], dtype=np.int64)
    lengths = rng.integers(1, 9, n_paths)
    pool = []
    for length in lengths.tolist():
        path = rng.integers(1, 400_000, length)
        path[0] = upstreams[rng.integers(0, len(upstreams))]
        pool.append(tuple(int(a) for a in path))
    routes: list[StaticRoute] = []

    def add(nets: np.ndarray, plens: np.ndarray, fmt: str) -> None:
        paths = rng.integers(0, n_paths, len(nets))
        n_comm = rng.integers(0, 4, len(nets))
        lp = rng.random(len(nets))
        for net, plen, p, c, pref in zip(nets.tolist(), plens.tolist(), paths.tolist(), n_comm.tolist(), lp.tolist(),
                                         strict=True):
            comms = tuple(f"{65000 + k}:{(p + k) % 65536}" for k in range(c))
            routes.append(StaticRoute(fmt.format(net, plen), pool[p], comms, 150 if pref < 0.1 else None))

    weights4 = np.array([600, 80, 100, 30, 40, 30, 20, 10, 60, 5, 4, 1, 5, 4, 4], dtype=float)
    plen4 = rng.choice(np.array([24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 12, 8, 25, 28, 32]), n4 * 2,
                       p=weights4 / weights4.sum())
    base4 = rng.integers(0x01000000, 0xDF000000, n4 * 2, dtype=np.uint64)
    base4 = base4[(base4 >> np.uint64(24)) != 127]  # BIRD refuses 127.0.0.0/8 (martian)
    plen4 = plen4[:len(base4)]
    mask = (np.uint64(0xFFFFFFFF) << (32 - plen4).astype(np.uint64)) & np.uint64(0xFFFFFFFF)
    keys4 = rng.permutation(np.unique((base4 & mask) << np.uint64(8) | plen4.astype(np.uint64)))[:n4]
    nets4 = [f"{k >> 32 & 255}.{k >> 24 & 255}.{k >> 16 & 255}.{k >> 8 & 255}" for k in keys4.tolist()]
    add(np.array(nets4), (keys4 & np.uint64(255)).astype(np.int64), "{}/{}")
    plen6 = rng.choice(np.array([48, 44, 40, 36, 32, 29, 64]), n6 * 2, p=[0.55, 0.1, 0.08, 0.05, 0.17, 0.03, 0.02])
    hi = (np.uint64(0x2000) << np.uint64(48)) | rng.integers(0, 2**45, n6 * 2, dtype=np.uint64)
    mask6 = np.uint64(0xFFFFFFFFFFFFFFFF) << (64 - plen6).astype(np.uint64)
    keys6 = rng.permutation(np.unique(np.stack([hi & mask6, plen6.astype(np.uint64)], axis=1), axis=0))[:n6]
    nets6 = [":".join(f"{h >> s & 0xFFFF:x}" for s in (48, 32, 16, 0)) + "::" for h in keys6[:, 0].tolist()]
    add(np.array(nets6), keys6[:, 1].astype(np.int64), "{}/{}")
    return routes


def wait_table(lab: BgpLab, expected: int, timeout: float) -> float:
    """Seconds until gobgpd holds `expected` prefixes (gobgp CLI summary)."""
    started = time.monotonic()
    count = 0
    while time.monotonic() - started < timeout:
        count = 0
        for family in ("ipv4", "ipv6"):
            out = subprocess.run(["gobgp", "--target", lab.api_target, "global", "rib", "summary", "-a", family],
                                 capture_output=True, text=True, timeout=30).stdout
            for word in out.replace(",", " ").split():
                if word.isdigit():
                    count += int(word)
                    break
        if count >= expected:
            return time.monotonic() - started
        time.sleep(1)
    raise TimeoutError(f"gobgpd has {count} of {expected} prefixes after {timeout} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--v4", type=int, default=1_000_000)
    ap.add_argument("--v6", type=int, default=200_000)
    ap.add_argument("--paths", type=int, default=100_000, help="distinct AS paths in the table")
    ap.add_argument("--compare-listings", action="store_true",
                    help="after the mirror, bare listings side by side: wire form read on the caller's thread, wire "
                         "form through gRPC's polling thread, Any-packed (the API's default) through it")
    args = ap.parse_args()
    require_netns_or_exit()
    t = time.monotonic()
    routes = synthetic_table(args.v4, args.v6, args.paths)
    print(f"table: {args.v4} IPv4 + {args.v6} IPv6 prefixes, {args.paths} distinct AS paths "
          f"(generated in {time.monotonic() - t:.1f} s)")
    with tempfile.TemporaryDirectory(prefix="bench-rib-") as tmp:
        lab = BgpLab(TestNetwork(Path(tmp)))
        try:
            t = time.monotonic()
            lab.start(routes, timeout=600)
            del routes
            lab.wait_established(timeout=300)
            print(f"BIRD up with the table and sessions established in {time.monotonic() - t:.1f} s")
            took = wait_table(lab, args.v4 + args.v6, timeout=900)
            print(f"gobgpd received the full table from BIRD in {took:.1f} s more")
            assert lab.gobgpd is not None
            steady = steady_rss(lab.gobgpd.pid, 20.0)
            sampler = RssSampler(lab.gobgpd.pid)
            load = Path("/proc/loadavg").read_text().split()[:3]
            done = subprocess.run([sys.executable, "-c", CHILD, lab.api_target, str(args.v4 + args.v6)],
                                  capture_output=True, text=True, timeout=900,
                                  cwd=Path(__file__).resolve().parent.parent)
            gobgpd = sampler.stop()
            if done.returncode != 0:
                raise RuntimeError(f"mirror process failed:\n{done.stderr}")
            fig = json.loads(done.stdout.strip().splitlines()[-1])
            listings = compare_listings(lab) if args.compare_listings else []
        finally:
            lab.close()
    print(f"mirror: {fig['prefixes_v4']} IPv4 + {fig['prefixes_v6']} IPv6 prefixes loaded by {fig['method']} in "
          f"{fig['load_s']:.1f} s (from the watch opened to the table in use: {fig['decode_and_build_s']:.1f} s)")
    print(f"gobgpd RSS: {steady:.0f} MB steady with the table, peak {gobgpd['gobgpd_peak_rss_mb']:.0f} MB during "
          f"the mirror's load ({gobgpd['gobgpd_peak_rss_mb'] / steady:.2f}x); load average before "
          f"{' '.join(load)}, after {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    print(f"mirror process RSS: {fig['rss_before_mb']:.0f} MB before, {fig['rss_mb']:.0f} MB with the table, "
          f"peak {fig['peak_rss_mb']:.0f} MB during the load; {fig['rss_after_merge_mb']:.0f} MB after merging "
          f"20k changes, peak {fig['peak_rss_merge_mb']:.0f} MB during the merge")
    for key, value in fig.items():
        if key.startswith("lookups_per_s"):
            print(f"lookups ({key.removeprefix('lookups_per_s_').replace('_', ' ')} distinct sorted addresses): "
                  f"{value / 1e6:.1f} M/s")
    print(f"20k changes: applied in {fig['apply_20k_s'] * 1000:.0f} ms, overlay view built in "
          f"{fig['overlay_view_s'] * 1000:.0f} ms, merged into a rebuilt base in {fig['merge_s']:.2f} s")
    for line in listings:
        print(line)


def status_mb(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


class RssSampler:
    """gobgpd's VmRSS every 0.2 s while a load runs, and its VmHWM since `reset`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[float] = []
        self._stop = threading.Event()
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS from here on
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.samples.append(status_mb(self.pid, "VmRSS"))

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {"gobgpd_peak_rss_mb": status_mb(self.pid, "VmHWM"),
                "gobgpd_max_sampled_rss_mb": max(self.samples, default=0.0)}


def steady_rss(pid: int, settle_s: float = 10.0) -> float:
    time.sleep(settle_s)
    return status_mb(pid, "VmRSS")


def compare_listings(lab: BgpLab) -> list[str]:
    """Bare listings in child processes, each with gobgpd's steady RSS just before and its
    peak during; the Any-packed one last, since it leaves gobgpd's heap grown."""
    assert lab.gobgpd is not None
    lines = []
    for wire, single in (("wire", "single"), ("wire", "threaded"), ("any", "threaded")):
        steady = steady_rss(lab.gobgpd.pid, 20.0)
        sampler = RssSampler(lab.gobgpd.pid)
        load = Path("/proc/loadavg").read_text().split()[:3]
        done = subprocess.run([sys.executable, "-c", LISTING, lab.api_target, wire, single], capture_output=True,
                              text=True, timeout=1800, cwd=Path(__file__).resolve().parent.parent)
        peak = sampler.stop()["gobgpd_peak_rss_mb"]
        if done.returncode != 0:
            raise RuntimeError(f"listing failed:\n{done.stderr}")
        got = json.loads(done.stdout.strip().splitlines()[-1])
        lines.append(f"bare listing, attributes {wire}, stream read {'on the caller' if single == 'single' else 'by gRPC'}"
                     f"'s thread: {got['prefixes']} prefixes in {got['seconds']:.1f} s (first after "
                     f"{got['first_s']:.1f} s); gobgpd {steady:.0f} -> {peak:.0f} MB ({peak / steady:.2f}x); load "
                     f"{' '.join(load)} -> {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    return lines


def require_netns_or_exit() -> None:
    try:
        require_netns()
    except BaseException as skip:  # pytest.skip raises its own exception type
        sys.exit(f"bench/rib.py: {skip}")


if __name__ == "__main__":
    main()
