"""Detection latency: the first flow of an attack received by the collector -> the blackhole
route present in the router's RIB (BIRD), median, p90 and max over `--runs` attacks.

    python bench/detect_latency.py [--runs 20] [--flows 25] [--workers 2]

What runs (as root: the BGP lab needs a network namespace):

* tests/support/bgp_lab.py's lab: gobgpd and BIRD 2 peering in a namespace; BIRD imports
  everything gobgpd sends, so its table is what the router would hold.
* `flowenricher run` on a temporary config (one listener on 127.0.0.1, `--workers`
  workers, embedded chDB, my_prefixes of the generator, ``bgp.gobgp.api`` the lab
  gobgpd's Unix socket (``unix:///path``), ``blackhole.max_active``
  and ``max_per_minute`` above the number of runs) and a rules file with one
  horizontal-scan rule (TCP, same destination port, 20 distinct destinations, 20 flows,
  10 s window, ``action: alert,blackhole``, next hop 192.0.2.1, community 65535:666).
* Each run: a fresh scanner address (``--scanner-base`` + run number, never seen by the
  collector before) sends `--flows` TCP SYN flows to port 22 of distinct hosts of
  84.54.49.0/24, IPFIX encoded by the generator's own encoder
  (appliance.flowenricher.generate.encode, one exporter for the whole bench, so the
  templates are known from the warm-up on), as one burst of datagrams, the way an
  exporter flushes its cache.  t0 is taken just before the first of those datagrams is
  sent: on loopback the collector's socket holds it within microseconds, so t0 stands for
  "first attack flow received".  t1 is when BIRD first shows ``<scanner>/32``: this bench
  asks BIRD on its control socket (``show route <scanner>/32``, one request after the
  other, about 0.1-0.3 ms each, no process started per poll).

Also reported per run: when the blackhole manager logged the announcement in
blackholes.txt (wall clock, millisecond resolution), which splits the time into the
collector's part (worker batching, decoding, engine, the AddPath call to gobgpd) and
BGP's (gobgpd -> BIRD).  detections.log is no help there: its ``time`` is the flows'
receive time in whole seconds.  The attack comes from one socket, one source port, as
one router's export does.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(HERE))

from ingest import Children, free_port, interrupt, wait_for_log  # noqa: E402
from support.bgp_lab import BgpLab  # noqa: E402
from support.netns import TestNetwork, sweep_stale, unavailable_reason  # noqa: E402

from appliance.flowenricher.generate.encode import FlowEncoder, make_encoder  # noqa: E402
from appliance.flowenricher.generate.flows import INBOUND, Flows, v4_rows  # noqa: E402
from appliance.flowenricher.generate.traffic import DEFAULT_MY_PREFIXES  # noqa: E402

RULE_NAME = "bench_horizontal_scan"
VICTIM_NET = ipaddress.IPv4Network("84.54.49.0/24")  # the generator's first own prefix
SCAN_PORT = 22
SYN = 0x02
ROUTE_TIMEOUT_S = 10.0  # a run whose route has not appeared by then failed


class BirdControl:
    """A persistent connection to BIRD's control socket (the protocol birdc speaks: a
    command line in, numbered reply lines out, ending with a line 'NNNN ' whose code is
    0000 or an error), so polling costs a round trip, not a birdc process."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self._buffer = b""
        self._reply()  # the "0001 BIRD ... ready." greeting

    def command(self, text: str) -> str:
        self.sock.sendall(text.encode() + b"\n")
        return self._reply()

    def _reply(self) -> str:
        lines: list[bytes] = []
        while True:
            while b"\n" not in self._buffer:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise RuntimeError("BIRD closed its control socket")
                self._buffer += chunk
            line, self._buffer = self._buffer.split(b"\n", 1)
            lines.append(line)
            # A reply ends with a numbered line whose fifth character is a space
            # ("0000 ", "8001 Network not found", "0001 BIRD ready.").
            if len(line) >= 5 and line[:4].isdigit() and line[4:5] == b" ":
                return b"\n".join(lines).decode(errors="replace")

    def has_route(self, prefix: str) -> bool:
        return prefix in self.command(f"show route {prefix}")

    def close(self) -> None:
        self.sock.close()


@dataclass
class Run:
    scanner: str
    t0: float  # wall clock, just before the first attack datagram
    route_s: float | None = None  # t0 -> route in BIRD
    announced_s: float | None = None  # t0 -> announcement logged in blackholes.txt
    datagrams: int = 0


def rules_yaml() -> str:
    """The one rule: a fast horizontal scan, as the brief and the original's format say."""
    rule = {
        "name": RULE_NAME,
        "proto": "tcp",
        "same_dst_port": True,
        "unique_dst_ips": 20,
        "min_flows": 20,
        "time_window": "10s",
        "action": "alert,blackhole",
        "blackhole_count": 20,
        "blackhole_next_hop": "192.0.2.1",
        "blackhole_communities": ["65535:666"],
        "blackhole_time": 3600,
    }
    return json.dumps([rule], indent=2)  # JSON is YAML


def collector_config(where: Path, port: int, metrics_port: int, api_port: int, gobgp_api: str,
                     args: argparse.Namespace) -> dict[str, object]:
    return {
        "collectors": {"listeners": [{"address": "127.0.0.1", "port": port, "protocol": "netflow"}],
                       "workers": args.workers},
        "storage": {"path": str(where / "data")},
        "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
        "api": {"listen": f"127.0.0.1:{api_port}"},
        "my_prefixes": list(DEFAULT_MY_PREFIXES),
        "enrich": "none",
        "bgp": {"gobgp": {"api": gobgp_api}},
        "detection": {"alerts_log": str(where / "detections.log")},
        "blackhole": {"max_active": args.runs + 10, "max_per_minute": args.runs + 10,
                      "log_file": str(where / "blackholes.txt")},
        "log_level": "info",
    }


def attack_flows(scanner: int, n: int, now_ms: int, rng: np.random.Generator) -> Flows:
    """`n` SYN probes from `scanner` to port 22 of `n` distinct hosts of VICTIM_NET."""
    hosts = rng.choice(np.arange(1, 255, dtype=np.uint32), size=n, replace=False) + np.uint32(int(VICTIM_NET[0]))
    f = Flows.empty(n)
    f.src_addr = v4_rows(np.full(n, scanner, dtype=np.uint32))
    f.dst_addr = v4_rows(hosts.astype(np.uint32))
    f.post_nat_src_addr, f.post_nat_dst_addr = f.src_addr.copy(), f.dst_addr.copy()
    f.src_port[:] = rng.integers(32768, 61000)
    f.dst_port[:] = SCAN_PORT
    f.post_nat_src_port, f.post_nat_dst_port = f.src_port.copy(), f.dst_port.copy()
    f.proto[:] = 6
    f.tcpflags[:] = SYN
    f.packets[:] = 1
    f.bytes[:] = 44
    f.flow_direction[:] = INBOUND
    f.src_mask[:], f.dst_mask[:] = 24, 24
    f.input_interface[:], f.output_interface[:] = 1, 2
    f.start_ms[:] = now_ms
    f.end_ms[:] = now_ms
    return f


def _log_times(path: Path, key: str, match: str) -> dict[str, float]:
    """address -> unix time of its first line in a JSON-lines log (detections.log or
    blackholes.txt), read from the line's ``time`` field."""
    found: dict[str, float] = {}
    if not path.exists():
        return found
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if match and entry.get("action", match) != match:
            continue
        addr = str(entry.get(key, "")).split("/")[0]
        stamp = str(entry.get("time", ""))
        if addr and stamp and addr not in found:
            found[addr] = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    return found


def attack(run: int, args: argparse.Namespace, encoder: FlowEncoder, exporter: socket.socket, bird: BirdControl,
           rng: np.random.Generator) -> Run:
    scanner = int(ipaddress.IPv4Address(args.scanner_base)) + run
    text = str(ipaddress.IPv4Address(scanner))
    prefix = f"{text}/32"
    if bird.has_route(prefix):
        raise RuntimeError(f"{prefix} is in BIRD before its attack")
    packets = encoder.encode(attack_flows(scanner, args.flows, int(time.time() * 1000), rng))
    t0 = time.time()
    began = time.perf_counter()
    for packet in packets:
        exporter.send(packet)
    result = Run(text, t0, datagrams=len(packets))
    deadline = began + ROUTE_TIMEOUT_S
    while time.perf_counter() < deadline:
        if bird.has_route(prefix):
            result.route_s = time.perf_counter() - began
            break
    return result


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _ms(value: float | None) -> str:
    return f"{value * 1000:.0f}" if value is not None else "-"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20, help="attacks, each from a new scanner (default 20)")
    ap.add_argument("--flows", type=int, default=25, help="probes per attack, to distinct hosts (default 25, >= 20)")
    ap.add_argument("--workers", type=int, default=2, help="the collector's receive/decode workers (default 2)")
    ap.add_argument("--pause", type=float, default=1.5, help="seconds between runs (default 1.5)")
    ap.add_argument("--scanner-base", default="45.33.100.10", help="first scanner address; run k uses base + k")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the work directory (collector log, detections.log)")
    args = ap.parse_args(argv)
    if args.runs <= 0 or not 20 <= args.flows <= 254:
        ap.error("--runs must be > 0 and --flows from 20 (the rule's threshold) to 254")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    reason = unavailable_reason()
    if reason:
        sys.exit(f"bench/detect_latency.py: {reason}")
    signal.signal(signal.SIGTERM, interrupt)  # unwind through the finally: everything stops by PID
    sweep_stale()
    work = Path(tempfile.mkdtemp(prefix="flowenricher-detect-latency-"))
    children = Children()
    lab = BgpLab(TestNetwork(work / "net"))
    bird: BirdControl | None = None
    runs: list[Run] = []
    try:
        lab.start()
        lab.wait_established(timeout=30)
        bird = BirdControl(lab.bird_socket)
        where = work / "collector"
        where.mkdir()
        port, metrics_port, api_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM), \
            free_port(socket.SOCK_STREAM)
        conf, rules = where / "config.yaml", where / "detection.yml"
        gobgp_api = f"unix://{lab.api_socket}"
        conf.write_text(json.dumps(collector_config(where, port, metrics_port, api_port, gobgp_api, args), indent=2))
        rules.write_text(rules_yaml())
        argv_run = ["flowenricher", "run", "--config", str(conf), "--rules", str(rules)]
        log = where / "collector.log"
        proc = children.start(argv_run, signal.SIGTERM, log, where)
        wait_for_log(proc, log, ["listening:", "detection: 1 rules"], timeout=120)
        print(f"collector: {' '.join(argv_run)} ({args.workers} workers); BGP lab up; {args.runs} runs of "
              f"{args.flows} SYN probes to port {SCAN_PORT} of distinct hosts of {VICTIM_NET}")
        encoder = make_encoder("ipfix")
        rng = np.random.default_rng(args.seed)
        # One socket, one source port for the whole bench, as one router: the kernel hands
        # all its datagrams to the same worker (SO_REUSEPORT hashes on the 4-tuple), which
        # has its templates.  Templates first (an exporter sends them at start), so the
        # attack's datagrams are decoded on arrival, not held for a template.
        exporter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        exporter.connect(("127.0.0.1", port))
        for packet in encoder.encode(attack_flows(int(VICTIM_NET[1]), 1, int(time.time() * 1000), rng)):
            exporter.send(packet)
        time.sleep(2.0)
        for k in range(args.runs):
            run = attack(k, args, encoder, exporter, bird, rng)
            runs.append(run)
            print(f"run {k + 1:2d}: scanner {run.scanner}, {run.datagrams} datagram(s): route in BIRD after "
                  f"{_ms(run.route_s)} ms")
            sys.stdout.flush()
            time.sleep(args.pause)
        exporter.close()
        time.sleep(1.0)  # the last log lines are written
        announced = _log_times(where / "blackholes.txt", "prefix", "announce")
        for run in runs:
            if run.scanner in announced:
                run.announced_s = announced[run.scanner] - run.t0
        problems = [line for line in log.read_text(errors="replace").splitlines() if "ERROR" in line or "refused" in line]
        for line in problems[:5]:
            print(f"collector log: {line[:200]}")
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        children.stop_all()
        if bird is not None:
            bird.close()
        lab.close()
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    report(runs, args)
    return 0 if runs and all(r.route_s is not None for r in runs) else 1


def report(runs: Sequence[Run], args: argparse.Namespace) -> None:
    if not runs:
        print("no run completed")
        return
    print()
    print("| run | scanner | t0 -> announcement in blackholes.txt ms | t0 -> route in BIRD ms |")
    print("|-----|---------|-----------------------------------------|------------------------|")
    for k, r in enumerate(runs, 1):
        print(f"| {k} | {r.scanner} | {_ms(r.announced_s)} | {_ms(r.route_s)} |")
    got = [r.route_s for r in runs if r.route_s is not None]
    missed = len(runs) - len(got)
    print()
    if got:
        print(f"detection latency (first attack datagram sent -> /32 in BIRD), {len(got)} of {len(runs)} runs: "
              f"median {statistics.median(got) * 1000:.0f} ms, p90 {percentile(got, 0.9) * 1000:.0f} ms, "
              f"max {max(got) * 1000:.0f} ms, min {min(got) * 1000:.0f} ms; target <= 1000 ms: "
              f"{'met' if max(got) <= 1.0 and not missed else 'NOT met'}")
    logged = [r.announced_s for r in runs if r.announced_s is not None]
    if logged:
        print(f"  announcement logged by the blackhole manager: median {statistics.median(logged) * 1000:.0f} ms, "
              f"max {max(logged) * 1000:.0f} ms after t0 (blackholes.txt timestamps, ms resolution)")
    if missed:
        print(f"{missed} run(s) without the route in BIRD within {ROUTE_TIMEOUT_S:.0f} s")


if __name__ == "__main__":
    raise SystemExit(main())
