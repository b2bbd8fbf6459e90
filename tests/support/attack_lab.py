"""An attack lab for tests: real scanners and flooders against a small AS in network
namespaces, seen by a real flow exporter, with the ground truth of each run.

Why a lab and not generated flows: detection rules and the anomaly scoring must hold on
what real tools send and a real exporter reports (nmap's retries and RSTs, hping3's
source-port walk, softflowd's flow timeouts), not only on the generator's model.

Topology (namespaces of one :class:`~support.netns.TestNetwork`; nothing reaches the host)::

    attacker 198.51.100.0/24 --uplink-- router --inside-- victims 84.54.49.0/24 (every address local)
                                       |
                                    export  softflowd on the router's `uplink` exports here
                                       |
                                     coll 10.255.3.2  (the collector's namespace)

* ``attacker`` holds the outside addresses (TEST-NET-2): one per actor (:data:`SCANNER_H`,
  :data:`SCANNER_V`, :data:`FLOODER`, :data:`CLIENT`), so each run's source is known;
* ``router`` forwards between them and is the border the exporter watches: softflowd on
  its upstream veth (``uplink``) sees both directions of every conversation, as a MikroTik's
  traffic-flow on its uplink does, and exports NetFlow v9 or IPFIX to ``coll``;
* ``victims`` treats the whole of :data:`VICTIM_NET` (the original config's own /24) as
  local (``ip route add local ... dev lo``), so every address answers: nmap finds hosts
  with closed ports (RST) everywhere, and the web and DNS servers of the benign run
  (:data:`WEB`, :data:`DNS`) have open ones;
* ``coll`` is empty: the test runs its collector there, on :data:`COLLECTOR` (port
  :attr:`AttackLab.collector_port`).

How flows reach the collector promptly: softflowd runs with short timeouts, and
:meth:`AttackLab.flush` makes it export everything it holds.  softflowd reads packets
through libpcap with a zero timeout, and on a quiet link they wait in a ring block until
it fills (see tests/test_e2e_softflowd.py), so flush first sends non-IP filler frames
until softflowd counts some, then ``softflowctl expire-all``.

Each traffic method returns an :class:`~appliance.flowenricher.generate.scenarios.AttackTruth`
(the generator's ground-truth type), with the wall-clock window and what the tool
reported in ``params``; ``label`` numbers the runs of one lab from 1 (the benign run's
truth has kind ``benign``); ``attackers`` is empty for a flood from random (spoofed)
sources.  Usage::

    with TestNetwork(tmp_path / "net") as net:
        lab = AttackLab(net, tmp_path, version=10).start()
        collector = Collector(lab, collector_config(tmp_path, rules=rules_file), tmp_path)
        truth = lab.nmap_horizontal(port=22, hosts=100)   # ground truth of the run
        lab.flush()                                        # its flows are at the collector now
        collector.sql("SELECT ... FROM flowenricher.flows")

Any other receiver can take the collector's place: it runs in :attr:`AttackLab.coll` and
listens on :data:`COLLECTOR`, port :attr:`AttackLab.collector_port`.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from appliance.flowenricher.generate.scenarios import AttackTruth
from support import flowenricher_argv

from .netns import Namespace, Spawned, TestNetwork

SOFTFLOWD = "/usr/sbin/softflowd"
SOFTFLOWCTL = "/usr/sbin/softflowctl"
NMAP = "/usr/bin/nmap"
HPING3 = "/usr/sbin/hping3"
CURL = "/usr/bin/curl"
DNSMASQ = "/usr/sbin/dnsmasq"
TIMEOUT = "/usr/bin/timeout"

ATTACKER_NET = "198.51.100.0/24"
ROUTER_UP = "198.51.100.1"
SCANNER_H = "198.51.100.10"
"""Source of horizontal scans."""
SCANNER_V = "198.51.100.11"
"""Source of vertical scans."""
FLOODER = "198.51.100.12"
"""Source of single-source floods (random sources are drawn by hping3 otherwise)."""
CLIENT = "198.51.100.20"
"""Source of the benign run's web and DNS clients."""

VICTIM_NET = "84.54.49.0/24"
WEB = "84.54.49.80"
DNS = "84.54.49.53"
ROUTER_DOWN, VICTIMS_UP = "10.255.4.1", "10.255.4.2"
EXPORTER, COLLECTOR = "10.255.3.1", "10.255.3.2"
MY_PREFIXES = ("84.54.49.0/24", "194.153.116.0/24", "2a14:4280::/29")
"""The operator's prefixes: the original config's, which `generate` models too."""
INFRASTRUCTURE = (ROUTER_UP, ROUTER_DOWN, VICTIMS_UP, EXPORTER, COLLECTOR)
"""The lab's own router and link addresses: never blackholed (DESIGN §5)."""

UPLINK_IF, DOWNLINK_IF, EXPORT_IF = "uplink", "inside", "export"
FILLER_ETHERTYPE = 0x88B5
CAPTURE_FILTER = f"ip or ether proto {FILLER_ETHERTYPE:#06x}"
SOFTFLOWD_TIMEOUTS = {"tcp": 5, "tcp.rst": 1, "tcp.fin": 1, "udp": 2, "icmp": 2, "general": 5, "maxlife": 10,
                      "expint": 1}
"""Seconds: short enough that flows leave softflowd while the test waits, even without
:meth:`AttackLab.flush` (expint: how often softflowd looks for expired flows)."""

TOOLS = {SOFTFLOWD: "softflowd", SOFTFLOWCTL: "softflowd", NMAP: "nmap", HPING3: "hping3", CURL: "curl",
         DNSMASQ: "dnsmasq-base", TIMEOUT: "coreutils"}

# Non-IP frames that fill softflowd's capture ring (see the module docstring).
FILLER = r"""
import socket, sys
ifname, ethertype, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind((ifname, 0))
frame = bytes.fromhex("02feedc0ffee") + s.getsockname()[4] + ethertype.to_bytes(2, "big") + bytes(46)
for _ in range(count):
    s.send(frame)
"""

# The benign clients: web requests with curl and DNS queries (dnspython) at steady rates
# for a while; prints how many of each succeeded, as JSON.
BENIGN_CLIENT = r"""
import json, subprocess, sys, time
import dns.message, dns.query, dns.rcode
p = json.loads(sys.argv[1])
deadline = time.monotonic() + p["duration"]
next_web = next_dns = time.monotonic()
done = {"web": 0, "web_failed": 0, "dns": 0, "dns_failed": 0}
while (now := time.monotonic()) < deadline:
    if now >= next_web:
        next_web += p["web_interval"]
        r = subprocess.run([p["curl"], "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2",
                            "--interface", p["client"], f"http://{p['web']}/index.html"],
                           capture_output=True, text=True)
        done["web" if r.stdout == "200" else "web_failed"] += 1
    if now >= next_dns:
        next_dns += p["dns_interval"]
        q = dns.message.make_query(f"www{done['dns'] % 7}.benign.test", "A")
        try:
            a = dns.query.udp(q, p["dns"], timeout=1, source=p["client"])
            done["dns" if a.rcode() == dns.rcode.NOERROR and a.answer else "dns_failed"] += 1
        except Exception:
            done["dns_failed"] += 1
    time.sleep(max(0.0, min(next_web, next_dns) - time.monotonic()))
print(json.dumps(done), flush=True)
"""


def unavailable_reason() -> str | None:
    """Why the lab cannot run here (a tool missing), or None; namespaces are checked by
    :func:`support.netns.require_netns`."""
    for path, package in TOOLS.items():
        if shutil.which(path) is None:
            return f"{path} is not installed (Debian package {package})"
    return None


@dataclass(frozen=True)
class ExporterStats:
    """softflowd's own counters (``softflowctl statistics``)."""

    active: int
    processed: int
    non_ip: int
    exported_flows: int
    export_packets: int
    export_failures: int
    pcap_dropped: int


class Softflowd:
    """softflowd on `interface` of `ns`, exporting to `target`, controlled through its socket."""

    def __init__(self, net: TestNetwork, ns: Namespace, interface: str, target: str, version: int,
                 workdir: Path, timeouts: dict[str, int] | None = None) -> None:
        self.ns = ns
        self.interface = interface
        self.ctl = workdir / "softflowd.ctl"
        argv = [SOFTFLOWD, "-d", "-v", str(version), "-i", interface, "-n", target, "-c", str(self.ctl),
                "-p", str(workdir / "softflowd.pid"), "-T", "full", "-m", "65536"]
        for name, seconds in (timeouts or SOFTFLOWD_TIMEOUTS).items():
            argv += ["-t", f"{name}={seconds}"]
        self.proc = net.spawn(ns, [*argv, CAPTURE_FILTER], "softflowd")
        self.proc.wait_for(self.ctl.exists, 10, "control socket")
        self.proc.wait_for_output("Exporting flows", 10)

    def command(self, command: str) -> str:
        done = subprocess.run([SOFTFLOWCTL, "-c", str(self.ctl), command], capture_output=True, text=True,
                              timeout=10)
        if done.returncode != 0:
            raise RuntimeError(f"softflowctl {command}: exit {done.returncode}: {done.stdout}{done.stderr}")
        return done.stdout

    def stats(self) -> ExporterStats:
        text = self.command("statistics")

        def number(pattern: str, group: int = 1) -> int:
            found = re.search(pattern, text)
            if not found:
                raise RuntimeError(f"no {pattern!r} in softflowd statistics:\n{text}")
            return int(found.group(group))

        exported = r"Flows exported: (\d+) \((\d+) records\) in (\d+) packets \((\d+) failures\)"
        return ExporterStats(
            active=number(r"Number of active flows: (\d+)"), processed=number(r"Packets processed: (\d+)"),
            non_ip=number(r"Ignored packets: \d+ \((\d+) non-IP"),
            exported_flows=number(exported, 1), export_packets=number(exported, 3),
            export_failures=number(exported, 4), pcap_dropped=number(r"Packets dropped by libpcap: (\d+)"),
        )

    def flush(self, timeout: float = 10.0) -> ExporterStats:
        """Make softflowd read every packet sent so far (filler frames until it counted new
        ones) and export every flow it holds; its statistics afterwards."""
        before = self.stats()
        deadline = time.monotonic() + timeout
        stats = before
        while stats.non_ip == before.non_ip:
            if time.monotonic() > deadline:
                raise TimeoutError(f"softflowd processed no filler frame within {timeout} s: {stats}")
            self.ns.run([sys.executable, "-c", FILLER, self.interface, str(FILLER_ETHERTYPE), "2500"])
            for _ in range(5):
                stats = self.stats()
                if stats.non_ip > before.non_ip:
                    break
                time.sleep(0.02)
        if stats.active == 0:
            return stats
        held = stats
        self.command("expire-all")
        while (stats := self.stats()).exported_flows < held.exported_flows + held.active:
            if time.monotonic() > deadline:
                raise TimeoutError(f"softflowd did not export its {held.active} flows within {timeout} s: {stats}")
            time.sleep(0.05)
        return stats


class AttackLab:
    """The namespaces, routes, servers and exporter of the module docstring.

    `version` is softflowd's export format (9: NetFlow v9, 10: IPFIX); `collector_port`
    is where it sends, on :data:`COLLECTOR` in :attr:`coll`.
    """

    def __init__(self, net: TestNetwork, workdir: Path, version: int = 10, collector_port: int = 2055) -> None:
        self.net = net
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.version = version
        self.collector_port = collector_port
        self.exporter: Softflowd | None = None
        self._ns: dict[str, Namespace] = {}
        self._runs = 0

    def _namespace(self, label: str) -> Namespace:
        try:
            return self._ns[label]
        except KeyError:
            raise RuntimeError(f"attack lab: no {label} namespace before start()") from None

    @property
    def attacker(self) -> Namespace:
        """Where the scanners, flooders and benign clients run."""
        return self._namespace("attacker")

    @property
    def router(self) -> Namespace:
        """The border router, with softflowd on its uplink."""
        return self._namespace("router")

    @property
    def victims(self) -> Namespace:
        """The own network: every address of VICTIM_NET, the web and DNS servers."""
        return self._namespace("victims")

    @property
    def coll(self) -> Namespace:
        """The collector's namespace (COLLECTOR); empty until the test starts one there."""
        return self._namespace("coll")

    @property
    def collector_target(self) -> str:
        """``host:port`` the exporter sends to (a collector in :attr:`coll` listens there)."""
        return f"{COLLECTOR}:{self.collector_port}"

    def start(self) -> AttackLab:
        """Namespaces, veth pairs, addresses and routes, the victims' servers, softflowd."""
        net = self.net
        if self._ns:
            raise RuntimeError("attack lab already started")
        self._ns = {label: net.namespace(label) for label in ("attacker", "router", "victims", "coll")}
        prefix = ipaddress.ip_network(ATTACKER_NET).prefixlen
        actors = [f"{a}/{prefix}" for a in (SCANNER_H, SCANNER_V, FLOODER, CLIENT)]
        net.veth(self.attacker, UPLINK_IF, actors, self.router, UPLINK_IF, f"{ROUTER_UP}/{prefix}")
        net.veth(self.router, DOWNLINK_IF, f"{ROUTER_DOWN}/30", self.victims, DOWNLINK_IF, f"{VICTIMS_UP}/30")
        net.veth(self.router, EXPORT_IF, f"{EXPORTER}/30", self.coll, EXPORT_IF, f"{COLLECTOR}/30")
        self.attacker.ip("route", "add", "default", "via", ROUTER_UP)
        self.victims.ip("route", "add", "default", "via", ROUTER_DOWN)
        self.victims.ip("route", "add", "local", VICTIM_NET, "dev", "lo")
        for address in (WEB, DNS):  # servers bind to these, so they are interface addresses too
            self.victims.ip("addr", "add", f"{address}/32", "dev", "lo")
        self.router.ip("route", "add", VICTIM_NET, "via", VICTIMS_UP)
        self.router.sysctl("net.ipv4.ip_forward", "1")
        for ns in (self.router, self.victims):  # floods with random sources must get through
            for scope in ("all", "default", UPLINK_IF if ns is self.router else DOWNLINK_IF):
                ns.sysctl(f"net.ipv4.conf.{scope}.rp_filter", "0")
        self._start_servers()
        self.exporter = Softflowd(net, self.router, UPLINK_IF, self.collector_target, self.version, self.workdir)
        return self

    def _start_servers(self) -> None:
        docroot = self.workdir / "www"
        docroot.mkdir(exist_ok=True)
        (docroot / "index.html").write_text("<html><body>flowenricher attack lab</body></html>\n" * 40)
        web = self.net.spawn(self.victims, [sys.executable, "-u", "-m", "http.server", "80", "--bind", WEB,
                                            "--directory", str(docroot)], "web")
        web.wait_for_output("Serving HTTP", 15, stream="stdout")
        dns = self.net.spawn(self.victims, [
            DNSMASQ, "--no-daemon", "--no-resolv", "--no-hosts", "--conf-file=/dev/null", "--port=53",
            f"--listen-address={DNS}", "--bind-interfaces", "--address=/benign.test/" + WEB,
            f"--pid-file={self.workdir / 'dnsmasq.pid'}", "--log-facility=-",
        ], "dnsmasq")
        dns.wait_for_output("started", 15)

    # -------------------------------------------------------------------- exporter

    def flush(self) -> ExporterStats:
        """Every packet so far exported to the collector (see :meth:`Softflowd.flush`)."""
        assert self.exporter is not None, "start() the lab first"
        return self.exporter.flush()

    # -------------------------------------------------------------------- traffic

    def _truth(self, kind: str, proto: int, attackers: Sequence[str], victims: Sequence[str],
               ports: Sequence[int], started: float, **params: float | int | str) -> AttackTruth:
        self._runs += 1
        return AttackTruth(kind=kind, label=self._runs, proto=proto, attackers=tuple(attackers),
                           victims=tuple(victims), dst_ports=tuple(ports),
                           params={"started": started, "ended": time.time(), **params})

    def _nmap(self, source: str, targets: Sequence[str], ports: str, scan: str, name: str) -> tuple[int, str]:
        """nmap from `source` without host discovery (-Pn: every target is probed), timing
        aggressive and one probe per port (a run takes a fraction of a second here); (hosts up, output)."""
        if scan not in ("sS", "sT"):
            raise ValueError(f"nmap scan type {scan!r}: use sS (SYN) or sT (connect)")
        argv = [NMAP, f"-{scan}", "-Pn", "-n", "-T5", "--max-retries", "0", "-S", source, "-e", UPLINK_IF,
                "-p", ports, *targets]
        done = self.attacker.run(argv, timeout=120)
        (self.workdir / f"{name}.nmap.txt").write_text(done.stdout + done.stderr)
        found = re.search(r"Nmap done: (\d+) IP address(?:es)? \((\d+) hosts? up\)", done.stdout)
        if not found:
            raise RuntimeError(f"nmap printed no summary:\n{done.stdout}{done.stderr}")
        return int(found.group(2)), done.stdout

    def nmap_horizontal(self, port: int = 22, hosts: int = 100, source: str = SCANNER_H,
                        scan: str = "sS") -> AttackTruth:
        """One port on the first `hosts` addresses of :data:`VICTIM_NET`, from `source`."""
        net = ipaddress.ip_network(VICTIM_NET)
        if not 1 <= hosts <= net.num_addresses - 2:
            raise ValueError(f"hosts={hosts}: between 1 and {net.num_addresses - 2} addresses of {VICTIM_NET}")
        targets = [str(net.network_address + i) for i in range(1, hosts + 1)]
        started = time.time()
        up, _ = self._nmap(source, targets, str(port), scan, f"horizontal-{self._runs + 1}")
        return self._truth("horizontal_scan", 6, [source], targets, [port], started, tool=f"nmap -{scan}",
                           hosts_up=up)

    def nmap_vertical(self, target: str = "84.54.49.7", ports: tuple[int, int] = (1, 1000),
                      source: str = SCANNER_V, scan: str = "sT") -> AttackTruth:
        """Ports `ports[0]`..`ports[1]` of one victim, from `source`."""
        low, high = ports
        if not 1 <= low <= high <= 65535:
            raise ValueError(f"ports={ports}: a range within 1..65535")
        started = time.time()
        up, out = self._nmap(source, [target], f"{low}-{high}", scan, f"vertical-{self._runs + 1}")
        open_ports = re.findall(r"^(\d+)/tcp\s+open", out, re.MULTILINE)
        return self._truth("vertical_scan", 6, [source], [target], range(low, high + 1), started,
                           tool=f"nmap -{scan}", hosts_up=up, open_ports=",".join(open_ports))

    def hping_flood(self, target: str, port: int, proto: str = "syn", count: int = 3000, interval_us: int = 200,
                    source: str | None = None, data_bytes: int = 0) -> AttackTruth:
        """`count` packets from hping3 at one every `interval_us` µs: TCP SYNs (`proto`
        "syn") or UDP datagrams ("udp") of `data_bytes` payload.  `source` None draws a
        random source per packet (--rand-source, a spoofed flood); hping3 moves the
        source port on each packet either way, so every packet is a flow of its own."""
        if proto not in ("syn", "udp"):
            raise ValueError(f"proto={proto!r}: syn or udp")
        if count < 1 or interval_us < 1:
            raise ValueError(f"count={count}, interval_us={interval_us}: both at least 1")
        mode = ["-S"] if proto == "syn" else ["--udp"]
        origin = ["--rand-source"] if source is None else ["-a", source]
        limit = count * interval_us / 1e6 * 3 + 5  # hping3 waits for answers after the last packet
        argv = [TIMEOUT, "-s", "INT", f"{limit:.0f}", HPING3, "-n", "-q", *mode, *origin, "-p", str(port),
                "-c", str(count), "-i", f"u{interval_us}", "-d", str(data_bytes), "-I", UPLINK_IF, target]
        started = time.time()
        done = self.attacker.run(argv, timeout=limit + 10, check=False)
        text = done.stdout + done.stderr
        (self.workdir / f"hping-{self._runs + 1}.txt").write_text(text)
        sent = re.search(r"(\d+) packets transmitted", text)
        if not sent or done.returncode not in (0, 1, 124):  # 1: nothing answered (random sources)
            raise RuntimeError(f"hping3 exited {done.returncode}:\n{text}")
        kind = "syn_flood" if proto == "syn" else "udp_flood"
        return self._truth(kind, 6 if proto == "syn" else 17, [source] if source else [], [target], [port], started,
                           tool=f"hping3 {' '.join(mode + origin)}", sent=int(sent.group(1)))

    def benign(self, duration: float = 6.0, web_interval: float = 0.1, dns_interval: float = 0.1,
               generate_fps: int = 0, generate_protocol: str = "ipfix") -> AttackTruth:
        """Normal use for `duration` seconds: curl fetching a page from :data:`WEB` and DNS
        queries to dnsmasq on :data:`DNS`, from :data:`CLIENT`; with `generate_fps`, also
        `flowenricher generate --scenario normal` sending from :attr:`coll` to the
        collector at that rate (a busy network's background, as a second exporter).

        ``params`` count the requests: web, web_failed, dns, dns_failed (each one flow
        from the client, one back), and generated_flows, generated_send_errors as
        `generate` reported them."""
        params = {"duration": duration, "web_interval": web_interval, "dns_interval": dns_interval,
                  "curl": CURL, "client": CLIENT, "web": WEB, "dns": DNS}
        generator: Spawned | None = None
        started = time.time()
        if generate_fps:
            generator = self.net.spawn(self.coll, [*flowenricher_argv(), "generate", "--to", self.collector_target,
                                                   "--fps", str(generate_fps), "--duration", f"{duration:g}",
                                                   "--protocol", generate_protocol, "--scenario", "normal"],
                                       f"generate-{self._runs + 1}")
        done = self.attacker.run([sys.executable, "-c", BENIGN_CLIENT, json.dumps(params)], timeout=duration + 60)
        counts = {name: int(value) for name, value in json.loads(done.stdout.strip().splitlines()[-1]).items()}
        if generator is not None:
            if generator.wait(duration + 60) != 0:
                raise RuntimeError(f"flowenricher generate failed:\n{generator.describe()}")
            sent = json.loads(generator.stdout().strip().splitlines()[-1])  # its statistics, as JSON
            counts |= {"generated_flows": int(sent["flows"]), "generated_send_errors": int(sent["send_errors"])}
        return self._truth("benign", 0, [CLIENT], [WEB, DNS], [80, 53], started, **counts)


def collector_config(workdir: Path, *, port: int = 2055, rules: Path | None = None, gobgp_api: str | None = None,
                     never: Sequence[str] = INFRASTRUCTURE, my_prefixes: Sequence[str] = MY_PREFIXES) -> str:
    """A config.yaml for `flowenricher run` in the lab's collector namespace: one worker
    on :data:`COLLECTOR`, the embedded store in `workdir`, no outside enrichment (direction
    from `my_prefixes` always runs); with `rules`, detection (detections.log in
    `workdir`); with `gobgp_api`, blackholes through that GoBGP (blackholes.txt in
    `workdir`), `never` on the never-blackhole list.  API and metrics on the namespace's
    own loopback, where they clash with nothing."""
    lines = [
        "# flowenricher in the attack lab's collector namespace",
        "collectors:",
        f"  listeners: [{{address: {COLLECTOR}, port: {port}, protocol: netflow}}]",
        "  workers: 1",
        f"storage: {{path: {json.dumps(str(workdir / 'data'))}}}",
        "insert: {batch_size: 5000, flush_interval_ms: 200}",
        'metrics: {listen: "127.0.0.1:9601"}',
        'api: {listen: "127.0.0.1:9600"}',
        "enrich: none",
        f"my_prefixes: {json.dumps(list(my_prefixes))}",
    ]
    if rules is not None:
        lines += ["detection:", "  enable_detection_engine: true", f"  rules_config: {json.dumps(str(rules))}",
                  f"  alerts_log: {json.dumps(str(workdir / 'detections.log'))}"]
    if gobgp_api is not None:
        lines += [f"bgp: {{gobgp: {{api: {json.dumps(gobgp_api)}}}}}", "blackhole:",
                  f"  never: {json.dumps(list(never))}", f"  log_file: {json.dumps(str(workdir / 'blackholes.txt'))}",
                  "  reconcile_interval: 1s"]
    return "\n".join(lines) + "\n"


class Collector:
    """`flowenricher run --config CONFIG` in the lab's collector namespace, stopped by PID
    (SIGTERM, as systemd does) when the test network closes or :meth:`stop` is called."""

    def __init__(self, lab: AttackLab, config_text: str, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.config = self.workdir / "config.yaml"
        self.config.write_text(config_text)
        self.proc = lab.net.spawn(lab.coll, [*flowenricher_argv(), "run", "--config", str(self.config)],
                                  "collector", cwd=self.workdir)
        self.proc.wait_for_output("listening:", timeout=60)

    def sql(self, query: str) -> list[dict[str, Any]]:
        """`flowenricher sql QUERY --format json`: through the running service's control
        socket (from any namespace: it is a file), from the store once it stopped."""
        done = subprocess.run([*flowenricher_argv(), "sql", query, "--config", str(self.config), "--format", "json"],
                              capture_output=True, text=True, timeout=60, cwd=self.workdir)
        if done.returncode != 0:
            raise RuntimeError(f"flowenricher sql exited {done.returncode}:\n{done.stderr}")
        return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]

    def stop(self) -> int:
        """SIGTERM to the PID; the exit code (negative if it had to be killed)."""
        return self.proc.stop(signal.SIGTERM, timeout=30)


