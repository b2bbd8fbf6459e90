"""Detection latency: the first flow of an attack received by the collector -> the blackhole
announced, confirmed and in the router's table (BIRD), per address family, median, p90,
max and min over `--runs` attacks, against the target (design §4): at most 1 s to confirmed.

    python bench/detect_latency.py [--runs 20] [--family 4|6|both] [--flows 25] [--workers 2]

What runs (as root: the BGP lab needs a network namespace):

* tests/support/bgp_lab.py's lab: gobgpd and BIRD 2 in a namespace, one IPv4 and one
  IPv6 session; BIRD imports everything gobgpd sends, so its tables are what the router
  would hold.
* `flowenricher run` on a temporary config (one listener on 127.0.0.1, `--workers`
  workers, embedded chDB, my_prefixes of the generator, which hold both victim networks
  below, ``bgp.gobgp.api`` the lab gobgpd's Unix socket (``unix:///path``),
  ``blackhole.max_active`` and ``max_per_minute`` above the number of attacks, next hops
  left at their defaults) and a rules file with one horizontal-scan rule (TCP, same
  destination port, 20 distinct destinations, 20 flows, 10 s window, keyed on the source
  (the default), nothing in it naming a family, ``action: alert,blackhole``, next hop
  192.0.2.1, community 65535:666).  The
  manager blackholes an IPv6 scanner with ``blackhole.next_hop_v6`` (default 100::1),
  since the rule's next hop is IPv4.
* Each run, per family (IPv4 and IPv6 runs alternate): a fresh scanner (``--scanner-base``
  or ``--scanner-base-v6`` + run number, never seen by the collector before) sends
  `--flows` TCP SYN flows to port 22 of distinct hosts of 84.54.49.0/24 or
  2a14:4280::/120, IPFIX encoded by the generator's own encoder
  (appliance.flowenricher.generate.encode: templates 256 and 257, one exporter for the
  whole bench, so the templates are known from the warm-up on), as one burst of
  datagrams, the way an exporter flushes its cache.  The encoder puts up to 30 records in
  a datagram whatever their size: 25 IPv6 records make one 2 KB datagram, which loopback
  carries; a router at a 1500-byte MTU would send two.

Times, all from t0, taken just before the first attack datagram is sent (on loopback the
collector's socket holds it within microseconds, so t0 stands for "first attack flow
received"):

* announce: the blackhole manager's "announce" line in blackholes.txt (GoBGP took the
  route): the collector's part (worker batching, decoding, engine, the AddPath call);
* confirm: its "confirm" line (the route in GoBGP's adj-RIB-out towards BIRD, seen by the
  manager's check thread): what the target is about;
* BIRD: when BIRD first shows ``<scanner>/32`` or ``/128``.  The bench asks BIRD on its
  control socket (``show route <prefix>``, 1 ms apart, about 0.1-0.3 ms each, no process
  started per poll), until the route is there or 10 s have passed.

blackholes.txt times are wall clock, written with millisecond resolution (cut, not
rounded: up to 1 ms early).  detections.log is no help: its ``time`` is the flows' receive
time in whole seconds.  The attack comes from one socket, one source port, as one router's
export does.  Exit status 0 when every run of every family was confirmed within 1 s.
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
from appliance.flowenricher.generate.flows import INBOUND, Flows, text_rows  # noqa: E402
from appliance.flowenricher.generate.traffic import DEFAULT_MY_PREFIXES  # noqa: E402

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

RULE_NAME = "bench_horizontal_scan"
# Victims inside the generator's own prefixes (84.54.49.0/24 and 2a14:4280::/29, both in
# DEFAULT_MY_PREFIXES): the collector calls the attack inbound, as the rule wants.
VICTIM_NETS: dict[int, IPNetwork] = {4: ipaddress.IPv4Network("84.54.49.0/24"),
                                     6: ipaddress.IPv6Network("2a14:4280::/120")}
HOST_LEN = {4: 32, 6: 128}
FAMILIES = {"4": (4,), "6": (6,), "both": (4, 6)}
SCAN_PORT = 22
SYN = 0x02
ROUTE_TIMEOUT_S = 10.0  # a run whose route has not appeared in BIRD by then failed
POLL_S = 0.001  # between two questions to BIRD
TARGET_S = 1.0  # design §4: first flow of an attack -> route confirmed within 1 s


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
        """BIRD holds `prefix` (its IPv4 or IPv6 table, by the prefix's family)."""
        return prefix in self.command(f"show route {prefix}")

    def close(self) -> None:
        self.sock.close()


@dataclass
class Run:
    family: int
    number: int  # 1, 2, ... within its family
    scanner: str
    t0: float  # wall clock, just before the first attack datagram
    datagrams: int = 0
    announced_s: float | None = None  # t0 -> "announce" in blackholes.txt
    confirmed_s: float | None = None  # t0 -> "confirm" in blackholes.txt
    route_s: float | None = None  # t0 -> route in BIRD


def rules_yaml() -> str:
    """The one rule: a fast horizontal scan in the original's format, keyed on the source
    (the default) and for either family: nothing in it names one."""
    rule = {
        "name": RULE_NAME,
        "proto": "tcp",
        "same_dst_port": True,
        "unique_dst_ips": 20,
        "min_flows": 20,
        "time_window": "10s",
        "action": "alert,blackhole",
        "blackhole_count": 20,
        "blackhole_next_hop": "192.0.2.1",  # IPv4 only: IPv6 scanners get blackhole.next_hop_v6
        "blackhole_communities": ["65535:666"],
        "blackhole_time": 3600,
    }
    return json.dumps([rule], indent=2)  # JSON is YAML


def collector_config(where: Path, port: int, metrics_port: int, api_port: int, gobgp_api: str,
                     attacks: int, args: argparse.Namespace) -> dict[str, object]:
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
        "blackhole": {"max_active": attacks + 10, "max_per_minute": attacks + 10,
                      "log_file": str(where / "blackholes.txt")},
        "log_level": "info",
    }


def attack_flows(scanner: IPAddress, n: int, now_ms: int, rng: np.random.Generator) -> Flows:
    """`n` SYN probes from `scanner` to port 22 of `n` distinct hosts of its family's
    victim network."""
    family = scanner.version
    net = VICTIM_NETS[family]
    hosts = rng.choice(np.arange(1, 255), size=n, replace=False)
    f = Flows.empty(n)
    f.src_addr = text_rows([str(scanner)] * n)
    f.dst_addr = text_rows([str(net[int(h)]) for h in hosts])
    if family == 6:
        f.ip_version[:] = 6
        f.next_hop = np.zeros((n, 16), dtype=np.uint8)  # "::", not the IPv4-mapped 0.0.0.0
    f.post_nat_src_addr, f.post_nat_dst_addr = f.src_addr.copy(), f.dst_addr.copy()
    f.src_port[:] = rng.integers(32768, 61000)
    f.dst_port[:] = SCAN_PORT
    f.post_nat_src_port, f.post_nat_dst_port = f.src_port.copy(), f.dst_port.copy()
    f.proto[:] = 6
    f.tcpflags[:] = SYN
    f.packets[:] = 1
    f.bytes[:] = 44 if family == 4 else 64
    f.flow_direction[:] = INBOUND
    f.src_mask[:], f.dst_mask[:] = (24, 24) if family == 4 else (48, 64)
    f.input_interface[:], f.output_interface[:] = 1, 2
    f.start_ms[:] = now_ms
    f.end_ms[:] = now_ms
    return f


def _log_times(path: Path, action: str) -> dict[str, float]:
    """address -> unix time of its first `action` line in blackholes.txt (JSON lines), read
    from the line's ``time`` field."""
    found: dict[str, float] = {}
    if not path.exists():
        return found
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("action") != action:
            continue
        addr = str(entry.get("prefix", "")).split("/")[0]
        stamp = str(entry.get("time", ""))
        if addr and stamp and addr not in found:
            found[addr] = datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    return found


def scanner_of(family: int, number: int, args: argparse.Namespace) -> IPAddress:
    base = ipaddress.ip_address(args.scanner_base if family == 4 else args.scanner_base_v6)
    return base + number


def attack(family: int, number: int, args: argparse.Namespace, encoder: FlowEncoder, exporter: socket.socket,
           bird: BirdControl, rng: np.random.Generator) -> Run:
    scanner = scanner_of(family, number, args)
    prefix = f"{scanner}/{HOST_LEN[family]}"
    if bird.has_route(prefix):
        raise RuntimeError(f"{prefix} is in BIRD before its attack")
    packets = encoder.encode(attack_flows(scanner, args.flows, int(time.time() * 1000), rng))
    t0 = time.time()
    began = time.perf_counter()
    for packet in packets:
        exporter.send(packet)
    result = Run(family, number + 1, str(scanner), t0, datagrams=len(packets))
    deadline = began + ROUTE_TIMEOUT_S
    while time.perf_counter() < deadline:
        if bird.has_route(prefix):
            result.route_s = time.perf_counter() - began
            break
        time.sleep(POLL_S)
    return result


def read_manager_times(runs: Sequence[Run], path: Path) -> None:
    """Fill in announce and confirm times from blackholes.txt."""
    announced, confirmed = _log_times(path, "announce"), _log_times(path, "confirm")
    for run in runs:
        if run.scanner in announced:
            run.announced_s = announced[run.scanner] - run.t0
        if run.scanner in confirmed:
            run.confirmed_s = confirmed[run.scanner] - run.t0


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _ms(value: float | None) -> str:
    return f"{value * 1000:.0f}" if value is not None else "-"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20, help="attacks per family, each from a new scanner (default 20)")
    ap.add_argument("--family", choices=sorted(FAMILIES), default="both",
                    help="address family of the attacks: 4, 6 or both, alternating (default both)")
    ap.add_argument("--flows", type=int, default=25, help="probes per attack, to distinct hosts (default 25, >= 20)")
    ap.add_argument("--workers", type=int, default=2, help="the collector's receive/decode workers (default 2)")
    ap.add_argument("--pause", type=float, default=1.5, help="seconds between attacks (default 1.5)")
    ap.add_argument("--scanner-base", default="45.33.100.10", help="first IPv4 scanner; run k uses base + k")
    ap.add_argument("--scanner-base-v6", default="2001:db8:5ca::10",
                    help="first IPv6 scanner (documentation range, outside my_prefixes); run k uses base + k")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true",
                    help="keep the work directory (collector log, detections.log, blackholes.txt)")
    args = ap.parse_args(argv)
    if args.runs <= 0 or not 20 <= args.flows <= 254:
        ap.error("--runs must be > 0 and --flows from 20 (the rule's threshold) to 254")
    own = [ipaddress.ip_network(text) for text in DEFAULT_MY_PREFIXES]
    for family in FAMILIES[args.family]:
        try:
            first, last = scanner_of(family, 0, args), scanner_of(family, args.runs - 1, args)
        except ValueError as err:
            ap.error(f"--scanner-base{'' if family == 4 else '-v6'}: {err}")
        if first.version != family:
            ap.error(f"--scanner-base{'' if family == 4 else '-v6'}: {first} is not IPv{family}")
        if any(net.version == family and (first in net or last in net) for net in own):
            ap.error(f"scanners {first}-{last} inside my_prefixes: never blackholed as a source")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    reason = unavailable_reason()
    if reason:
        sys.exit(f"bench/detect_latency.py: {reason}")
    families = FAMILIES[args.family]
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
        attacks = args.runs * len(families)
        conf.write_text(json.dumps(collector_config(where, port, metrics_port, api_port, gobgp_api, attacks, args),
                                   indent=2))
        rules.write_text(rules_yaml())
        argv_run = ["flowenricher", "run", "--config", str(conf), "--rules", str(rules)]
        log = where / "collector.log"
        proc = children.start(argv_run, signal.SIGTERM, log, where)
        wait_for_log(proc, log, ["listening:", "detection: 1 rules"], timeout=120)
        targets = " and ".join(str(VICTIM_NETS[family]) for family in families)
        print(f"collector: {' '.join(argv_run)} ({args.workers} workers); BGP lab up; {args.runs} runs per family "
              f"(IPv{' and IPv'.join(map(str, families))}) of {args.flows} SYN probes to port {SCAN_PORT} of "
              f"distinct hosts of {targets}; times from t0 (first attack datagram sent)")
        encoder = make_encoder("ipfix")
        rng = np.random.default_rng(args.seed)
        # One socket, one source port for the whole bench, as one router: the kernel hands
        # all its datagrams to the same worker (SO_REUSEPORT hashes on the 4-tuple), which
        # has its templates.  Templates first (an exporter sends them at start; one packet
        # holds both the IPv4 and the IPv6 template), and one flow of each family from an
        # inside host, so the attacks' datagrams are decoded on arrival, not held for a
        # template, and no decoding path runs for the first time during a measurement.
        exporter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        exporter.connect(("127.0.0.1", port))
        for family in families:
            for packet in encoder.encode(attack_flows(VICTIM_NETS[family][1], 1, int(time.time() * 1000), rng)):
                exporter.send(packet)
        time.sleep(2.0)
        for k in range(args.runs):
            for family in families:
                run = attack(family, k, args, encoder, exporter, bird, rng)
                runs.append(run)
                print(f"run {k + 1:2d} IPv{family}: scanner {run.scanner}, {run.datagrams} datagram(s): "
                      f"route in BIRD after {_ms(run.route_s)} ms")
                sys.stdout.flush()
                time.sleep(args.pause)
        exporter.close()
        # The last lines are written: wait for every run's "confirm" (or give up).
        deadline = time.monotonic() + ROUTE_TIMEOUT_S
        while time.monotonic() < deadline:
            read_manager_times(runs, where / "blackholes.txt")
            if all(r.confirmed_s is not None for r in runs):
                break
            time.sleep(0.2)
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
    return 0 if report(runs, families) else 1


def _summary(values: Sequence[float]) -> str:
    return (f"median {statistics.median(values) * 1000:.0f}, p90 {percentile(values, 0.9) * 1000:.0f}, "
            f"max {max(values) * 1000:.0f}, min {min(values) * 1000:.0f} ms")


def report(runs: Sequence[Run], families: Sequence[int]) -> bool:
    """Print the runs and the summaries; True when the target is met (every run of every
    family confirmed, the slowest within TARGET_S)."""
    if not runs:
        print("no run completed")
        print("FAIL: no run completed")
        return False
    print()
    print("| run | family | scanner | datagrams | t0 -> announce ms | t0 -> confirm ms | t0 -> route in BIRD ms |")
    print("|-----|--------|---------|-----------|-------------------|------------------|------------------------|")
    for r in runs:
        print(f"| {r.number} | IPv{r.family} | {r.scanner} | {r.datagrams} | {_ms(r.announced_s)} | "
              f"{_ms(r.confirmed_s)} | {_ms(r.route_s)} |")
    print()
    verdicts: list[str] = []
    met = True
    for family in families:
        mine = [r for r in runs if r.family == family]
        print(f"IPv{family}, {len(mine)} runs (blackholes.txt times have ms resolution):")
        for label, values in (("t0 -> announce (blackholes.txt)", [r.announced_s for r in mine]),
                              ("t0 -> confirm (blackholes.txt)", [r.confirmed_s for r in mine]),
                              ("t0 -> route in BIRD", [r.route_s for r in mine])):
            got = [v for v in values if v is not None]
            print(f"  {label:32s} {len(got):2d} of {len(mine)}: {_summary(got) if got else 'none'}")
        gap = [r.confirmed_s - r.announced_s for r in mine if r.confirmed_s is not None and r.announced_s is not None]
        bgp = [r.route_s - r.announced_s for r in mine if r.route_s is not None and r.announced_s is not None]
        if gap:
            print(f"  {'announce -> confirm':32s} {len(gap):2d} of {len(mine)}: {_summary(gap)}")
        if bgp:
            print(f"  {'announce -> route in BIRD':32s} {len(bgp):2d} of {len(mine)}: {_summary(bgp)}")
        confirmed = [r.confirmed_s for r in mine if r.confirmed_s is not None]
        worst = max(confirmed) if confirmed else None
        ok = bool(mine) and len(confirmed) == len(mine) and worst is not None and worst <= TARGET_S
        met = met and ok
        verdicts.append(f"IPv{family} max {_ms(worst)} ms, {len(confirmed)} of {len(mine)} confirmed")
    print()
    print(f"{'PASS' if met else 'FAIL'}: first attack datagram -> route confirmed, target max <= "
          f"{TARGET_S * 1000:.0f} ms with every run confirmed: {'; '.join(verdicts)}")
    return met


if __name__ == "__main__":
    raise SystemExit(main())
