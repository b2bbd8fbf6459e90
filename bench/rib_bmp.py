"""Full table from gobgpd by BMP versus by the gRPC mirror: time, and gobgpd's memory.

    python bench/rib_bmp.py [--v4 1000000] [--v6 200000] [--paths 100000] [--policy local-rib]
                            [--no-listpath] [--gogc N] [--gomemlimit SIZE]

What runs (as root): the BGP lab of bench/rib.py (BIRD announcing a synthetic table to
gobgpd over iBGP, in a network namespace), then, once gobgpd holds the whole table:

1. gobgpd's steady RSS (``VmRSS`` of its /proc status, after 10 s at rest);
2. a minimal BMP station (RFC 7854) in a separate Python process inside the namespace,
   listening on the namespace's loopback; gobgpd is told to connect to it with the AddBmp
   gRPC call (``--policy``: ``local-rib`` sends gobgpd's best paths as the Loc-RIB
   instance of RFC 9069; ``post-policy`` each peer's Adj-RIB-In after import policy,
   ``pre-policy`` before it).  The station only frames BMP messages and counts the
   prefixes of the UPDATEs inside: the least any Python station must do, so its time is
   a floor for a real one.  Measured: the time from the station's first byte to the whole
   table received, the message types, peer types and prefixes per UPDATE seen, gobgpd's
   peak RSS during the dump (``VmHWM``, reset through /proc/PID/clear_refs before it,
   and the largest ``VmRSS`` sampled every 0.2 s), the station's own RSS;
3. unless ``--no-listpath``: the same for the current gRPC mirror (``RibMirror``, which
   lists a table over ``dump_limit`` with ListPath), gobgpd's steady RSS measured again
   first (after 20 s at rest).

``--gogc`` / ``--gomemlimit`` start gobgpd with Go's ``GOGC`` / ``GOMEMLIMIT``, to see how
much of gobgpd's peak is garbage its collector has not yet returned.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from rib import RssSampler, require_netns_or_exit, steady_rss, synthetic_table, wait_table
from support.bgp_lab import BgpLab
from support.netns import TestNetwork

ROOT = Path(__file__).resolve().parent.parent
BMP_PORT = 11019

# A station that only frames BMP messages and counts the prefixes of the UPDATEs inside:
# what any Python BMP station must at least do.  Prints one JSON line when done.
COUNT_STATION = r'''
import json, socket, struct, sys, time
port, expected = int(sys.argv[1]), int(sys.argv[2])
srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", port)); srv.listen(1)
print("listening", flush=True)
conn, _ = srv.accept()
conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
types, peer_types, per_update, prefixes, withdrawn, total_bytes = {}, {}, {}, 0, 0, 0
buf = bytearray(); first = None
while prefixes < expected:
    chunk = conn.recv(1 << 20)
    if not chunk:
        break
    if first is None:
        first = time.monotonic()
    total_bytes += len(chunk)
    buf += chunk
    pos, end = 0, len(buf)
    while end - pos >= 6:
        length = int.from_bytes(buf[pos + 1:pos + 5], "big")
        if end - pos < length:
            break
        mtype = buf[pos + 5]
        types[mtype] = types.get(mtype, 0) + 1
        if mtype == 0:
            peer_types[buf[pos + 6]] = peer_types.get(buf[pos + 6], 0) + 1
            u = pos + 48  # common header 6 + per-peer header 42
            wlen = int.from_bytes(buf[u + 19:u + 21], "big")
            alen = int.from_bytes(buf[u + 21 + wlen:u + 23 + wlen], "big")
            n = 0
            a, aend = u + 23 + wlen, u + 23 + wlen + alen
            while a < aend:  # MP_REACH (14) NLRI count
                flags, code = buf[a], buf[a + 1]
                hl = 4 if flags & 0x10 else 3
                alen1 = int.from_bytes(buf[a + 2:a + hl], "big")
                if code == 14:
                    v = a + hl
                    nhl = buf[v + 3]
                    p, pend = v + 5 + nhl, v + alen1
                    while p < pend:
                        n += 1; p += 1 + (buf[p] + 7) // 8
                elif code == 15:
                    withdrawn += 1
                a += hl + alen1
            p, pend = aend, pos + length
            while p < pend:
                n += 1; p += 1 + (buf[p] + 7) // 8
            if wlen:
                withdrawn += 1
            per_update[n] = per_update.get(n, 0) + 1
            prefixes += n
        pos += length
    del buf[:pos]
took = time.monotonic() - (first or time.monotonic())
rss = [int(l.split()[1]) // 1024 for l in open("/proc/self/status") if l.startswith(("VmRSS", "VmHWM"))]
print(json.dumps({"seconds": took, "prefixes": prefixes, "bytes": total_bytes, "types": types,
                  "peer_types": peer_types, "prefixes_per_update": per_update, "withdrawals": withdrawn,
                  "station_rss_mb": rss[1], "station_peak_mb": rss[0]}), flush=True)
conn.close()
'''

LISTPATH_CHILD = r'''
import json, sys, time
from prometheus_client import CollectorRegistry
from appliance.flowenricher.bgp.mirror import RibMirror
target, expected = sys.argv[1], int(sys.argv[2])
mirror = RibMirror(target, CollectorRegistry())
started = time.monotonic()
mirror.start()
while len(mirror.view()) < expected or not mirror.synchronized:
    time.sleep(0.05)
took = time.monotonic() - started
rss = [int(l.split()[1]) // 1024 for l in open("/proc/self/status") if l.startswith(("VmRSS", "VmHWM"))]
print(json.dumps({"seconds": took, "method": mirror.last_load_method, "prefixes": len(mirror.view()),
                  "station_rss_mb": rss[1], "station_peak_mb": rss[0]}), flush=True)
mirror.stop()
'''

POLICIES = {"pre-policy": "PRE", "post-policy": "POST", "local-rib": "LOCAL"}  # AddBmpRequest.MonitoringPolicy


def uptime() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()


def run_bmp(lab: BgpLab, expected: int, policy: str) -> dict[str, object]:
    assert lab.ns is not None and lab.gobgpd is not None
    from appliance.flowenricher.bgp.client import GoBgpClient
    from appliance.flowenricher.bgp.stubs import gobgp_pb2

    proc = subprocess.Popen(lab.ns.cmd([sys.executable, "-c", COUNT_STATION, str(BMP_PORT), str(expected)]),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "listening":
            raise RuntimeError(f"BMP station failed:\n{proc.stderr.read() if proc.stderr else ''}")
        steady = steady_rss(lab.gobgpd.pid)
        sampler = RssSampler(lab.gobgpd.pid)
        with GoBgpClient(lab.api_target) as client:
            client.stub.AddBmp(gobgp_pb2.AddBmpRequest(address="127.0.0.1", port=BMP_PORT,
                                                       policy=POLICIES[policy]), timeout=5)
            out, err = proc.communicate(timeout=900)
            fig: dict[str, object] = dict(sampler.stop())
            client.stub.DeleteBmp(gobgp_pb2.DeleteBmpRequest(address="127.0.0.1", port=BMP_PORT), timeout=5)
        if proc.returncode != 0:
            raise RuntimeError(f"BMP station failed:\n{err}")
        fig.update(json.loads(out.strip().splitlines()[-1]))
        fig["gobgpd_steady_rss_mb"] = steady
        return fig
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def run_listpath(lab: BgpLab, expected: int) -> dict[str, object]:
    assert lab.gobgpd is not None
    steady = steady_rss(lab.gobgpd.pid, 20.0)
    sampler = RssSampler(lab.gobgpd.pid)
    done = subprocess.run([sys.executable, "-c", LISTPATH_CHILD, lab.api_target, str(expected)],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    fig: dict[str, object] = dict(sampler.stop())
    if done.returncode != 0:
        raise RuntimeError(f"mirror process failed:\n{done.stderr}")
    fig.update(json.loads(done.stdout.strip().splitlines()[-1]))
    fig["gobgpd_steady_rss_mb"] = steady
    return fig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--v4", type=int, default=1_000_000)
    ap.add_argument("--v6", type=int, default=200_000)
    ap.add_argument("--paths", type=int, default=100_000, help="distinct AS paths in the table")
    ap.add_argument("--policy", choices=sorted(POLICIES), action="append",
                    help="BMP route monitoring policy (repeatable; default local-rib)")
    ap.add_argument("--gogc", help="GOGC for gobgpd (Go's garbage collector target, default 100)")
    ap.add_argument("--gomemlimit", help="GOMEMLIMIT for gobgpd (Go's soft memory limit, e.g. 3GiB)")
    ap.add_argument("--no-listpath", action="store_true", help="skip the gRPC mirror run")
    ap.add_argument("--listpath-first", action="store_true",
                    help="the gRPC mirror before BMP (each leaves gobgpd's heap grown for the next)")
    args = ap.parse_args()
    require_netns_or_exit()
    for name, value in (("GOGC", args.gogc), ("GOMEMLIMIT", args.gomemlimit)):
        if value:
            os.environ[name] = value  # gobgpd inherits it (BIRD ignores it)
    expected = args.v4 + args.v6
    routes = synthetic_table(args.v4, args.v6, args.paths)
    print(f"table: {args.v4} IPv4 + {args.v6} IPv6 prefixes, {args.paths} distinct AS paths")
    with tempfile.TemporaryDirectory(prefix="bench-rib-bmp-") as tmp:
        lab = BgpLab(TestNetwork(Path(tmp)))
        try:
            t = time.monotonic()
            lab.start(routes, timeout=600)
            del routes
            # (no wait_established: birdc answers slowly while BIRD sends a full table)
            wait_table(lab, expected, timeout=900)
            print(f"gobgpd holds the table after {time.monotonic() - t:.0f} s")
            runs: list[str | None] = list(args.policy or ["local-rib"])  # None: the gRPC mirror
            if not args.no_listpath:
                runs.insert(0 if args.listpath_first else len(runs), None)
            for policy in runs:
                load = uptime()
                fig = run_listpath(lab, expected) if policy is None else run_bmp(lab, expected, policy)
                name = "gRPC mirror" if policy is None else f"BMP {policy}"
                print(f"{name} (load average before: {load}, after: {uptime()}): {json.dumps(fig)}", flush=True)
        finally:
            lab.close()


if __name__ == "__main__":
    main()
