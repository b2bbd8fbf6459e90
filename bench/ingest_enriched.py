"""Ingest with enrichment: the zero-loss rate of `flowenricher run` with GeoIP, ASN and BGP
enrichment on and a full-table RIB mirrored from GoBGP, beside the same collector with
enrichment off, in the same run.

    python bench/ingest_enriched.py [--rates 200k,250k,300k,350k,400k] [--duration 10]
                                    [--v4 1000000] [--v6 200000] [--modes enriched,plain]
                                    [--peers nfacctd,goflow2]

What runs (as root: the BGP lab needs a network namespace):

* BIRD 2 announces bench/rib.py's synthetic table (``--v4`` IPv4 + ``--v6`` IPv6
  prefixes, ``--paths`` distinct AS paths, communities, some LOCAL_PREF) over iBGP to
  gobgpd, both in a namespace of tests/support/bgp_lab.py; gobgpd's gRPC API is a Unix
  socket the collector reaches from the root namespace.  The lab is built once and
  serves every step.  With ``--rib prefix-file`` the same table goes to the collector as
  a ``bgp.prefix_file`` instead (no GoBGP): the same RIB structure and lookups, loaded in
  tens of seconds rather than the minutes gobgpd takes to list a full table per step.
* For each rate, one `flowenricher run` per mode, alone on the machine (one listener on
  127.0.0.1, two workers, embedded chDB, ``insert.batch_size`` 250000, my_prefixes of
  the generator, the deployed socket buffer: DEPLOYED_RECEIVE_BUFFER), fed `--duration`
  seconds of IPFIX by `flowenricher generate` (about
  0.6 of a core at 300k flows/s, taken from the collector's two), or with ``--sender
  replay`` by `flowenricher replay` from a capture of the same model (bench/ingest.py's;
  a fraction of that CPU), written for each step with its flows dated from the moment
  it is sent (see REPLAY_LEAD_S):
  - ``enriched``: ``enrich: "geoip, bgp"``, MaxMind's test ASN and City databases
    (tests/data/geoip), ``bgp.gobgp.api`` set to the lab gobgpd's Unix socket
    (``unix:///path``).  Traffic is sent only once the collector's RIB mirror reports
    itself synchronised with the whole table (its ``flowenricher_rib_synchronized`` and
    ``flowenricher_rib_prefixes`` gauges on /metrics), so every flow meets the full RIB;
    the time from the service's start to that point is the RIB load time in the collector.
    Then the step waits for gobgpd to go idle again (see :func:`wait_idle`) and reports
    the CPU gobgpd still used during the traffic; with ``--pause-gobgpd`` gobgpd is
    stopped (SIGSTOP, by PID) for the traffic and resumed after, so the figure is the
    collector's alone (the mirror keeps its table and stays synchronised: no change
    arrives meanwhile, and the step checks its gauge after).
  - ``plain``: ``enrich: none`` (direction and networks still run, as they always do).
  - ``rules``: ``enriched`` plus the detection engine with the original rule and ten more
    (:func:`bench_rules`), issue 4's "ingest with the engine and eleven rules".

With ``--peers``, each rate then runs the other collectors named, each alone, as
bench/ingest.py runs them (nfacctd storing a line per flow, goflow2 writing each flow to
a file), on the same traffic and the same socket buffer (:func:`run_peer`), so one run
compares them.

Zero loss is bench/ingest.py's: flows kept (``count()`` on the stopped store) equal to
flows sent, no kernel drop on the port, no decoder drop, and every row stored within
``--max-lag`` seconds of the sender's end.  Memory: the peak of the summed RSS of the
collector's processes during the step (sampled every 0.2 s, from the moment the RIB is
loaded), and the main process's own peak during the step (the RIB, GeoIP readers,
enrichment and the store live there) and over its whole life (VmHWM: includes the load).
So that the enriched figure is honest, the stored rows are counted by what they carry:
a non-empty ``dst_as_path`` (BGP), a non-zero ``src_as``, a non-zero ``dst_as``, a country.
The synthetic table covers only part of the address space, as a real one does; the
counts say how much BGP work the step did.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(HERE))

from ingest import (  # noqa: E402
    PEERS,
    RUNNERS,
    Capture,
    Children,
    MemorySampler,
    Step,
    _describe,
    _print_step,
    best,
    build_capture,
    family,
    free_port,
    interrupt,
    judge,
    net_core,
    parse_rates,
    rmem_max,
    scrape,
    send,
    socket_buffers,
    wait_for_log,
    wait_stored,
    warm_up,
)
from ingest import print_table as print_ingest_table  # noqa: E402
from rib import synthetic_table, wait_table  # noqa: E402
from support.bgp_lab import BgpLab, StaticRoute  # noqa: E402
from support.clickhouse_http import ClickHouseHTTPStandIn  # noqa: E402
from support.netns import TestNetwork, sweep_stale, unavailable_reason  # noqa: E402

from appliance.flowenricher.collector.receiver import kernel_drops  # noqa: E402
from appliance.flowenricher.collector.settings import CollectorSettings  # noqa: E402
from appliance.flowenricher.generate.traffic import DEFAULT_MY_PREFIXES  # noqa: E402

DEFAULT_RATES = "200k,250k,300k,350k,400k"
GEOIP = REPO / "tests" / "data" / "geoip"
MODES = ("enriched", "plain", "rules")
ENRICHED = ("enriched", "rules")  # modes with GeoIP/BGP enrichment (and the RIB)
WORKER_STATS_S = 1.0  # a worker sends its decoder counters this often (collector/worker.py)
COUNT_SQL = ("SELECT count(), countIf(notEmpty(dst_as_path)), countIf(src_as != 0), countIf(dst_as != 0), "
             "countIf(src_host_country != '' OR dst_host_country != '') FROM flowenricher.flows")


@dataclass
class EnrichedStep(Step):
    """bench/ingest.py's step, plus what only this benchmark measures."""

    mode: str = ""
    rib_load_s: float | None = None  # service start -> mirror synchronised with the full table
    rib_load_gauge_s: float | None = None  # the mirror's own flowenricher_rib_load_seconds
    rib_prefixes: int | None = None
    gobgpd_idle_wait_s: float | None = None  # RIB synchronised -> gobgpd idle again
    gobgpd_cpu_s: float | None = None  # gobgpd's CPU time during the measured traffic
    main_rss_kb: int = 0  # the main process's peak RSS during the step
    main_hwm_kb: int = 0  # its peak over its whole life (the RIB load included)
    with_dst_path: int | None = None
    with_src_as: int | None = None
    with_dst_as: int | None = None
    with_country: int | None = None
    extra: list[str] = field(default_factory=list)
    parts_mb: dict[str, float] = field(default_factory=dict)  # each part's peak (PartsSampler)
    cpu: str = ""  # CPU seconds of each process, of the main process's threads by name, and of the sender


MEMORY_PARTS = {
    "RIB": "flowenricher_rib_bytes",
    "GeoIP cache + AS names": "flowenricher_geoip_bytes",
    "writer queue": "flowenricher_writer_queued_bytes",
    "consumers queue": "flowenricher_consumers_queued_bytes",
    "blocks awaiting insert": "flowenricher_store_pending_bytes",
    "detection windows": "flowenricher_detection_state_bytes",
    "chDB tracker": "flowenricher_store_engine_bytes",
}
"""What the storing process reports it holds, part by part (its /metrics gauges)."""


class PartsSampler(threading.Thread):
    """Each memory part's peak over the step, from the collector's /metrics once a second
    (a part's peak, not a simultaneous reading: their sum bounds the parts' share of RSS)."""

    def __init__(self, url: str) -> None:
        super().__init__(name="memory-parts", daemon=True)
        self.url = url
        self.peaks: dict[str, float] = {}
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(1.0):
            try:
                metrics = scrape(self.url)
            except OSError:
                continue
            for part, name in MEMORY_PARTS.items():
                if name in metrics:
                    self.peaks[part] = max(self.peaks.get(part, 0.0), metrics[name] / 2**20)

    def finish(self) -> dict[str, float]:
        self._halt.set()
        self.join(10)
        return self.peaks


class MainSampler(MemorySampler):
    """MemorySampler that also keeps the main process's own peak RSS, sampled: the RIB
    mirror lives there, so its share is what the 500 MB target is about."""

    def __init__(self, directory: Path, main_pid: int) -> None:
        super().__init__(directory)
        self.main_pid = main_pid
        self.main_rss_kb = 0

    def sample(self) -> None:
        super().sample()
        self.main_rss_kb = max(self.main_rss_kb, _status_kb(self.main_pid, "VmRSS:"))


def _ticks(stat_path: str) -> tuple[str, int]:
    """(comm, utime + stime in clock ticks) from a /proc stat file; ("", 0) when gone."""
    try:
        text = Path(stat_path).read_text()
    except OSError:
        return "", 0
    comm = text[text.index("(") + 1:text.rindex(")")]
    fields = text.rsplit(")", 1)[1].split()
    return comm, int(fields[11]) + int(fields[12])


class CpuSnapshot:
    """CPU time of a collector's processes and of its main process's threads, so two
    snapshots say where the cores went during the traffic: whether the storing process is
    bound to one core (its Python threads share one interpreter lock) while the other
    sits idle, which decides whether more processes would help."""

    def __init__(self, directory: Path, main_pid: int) -> None:
        self.taken = time.monotonic()
        self.processes = {pid: (_describe(pid), _ticks(f"/proc/{pid}/stat")[1]) for pid in family(directory)}
        self.threads: dict[int, tuple[str, int]] = {}
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{main_pid}/task")]
        except OSError:
            tids = []
        for tid in tids:
            self.threads[tid] = _ticks(f"/proc/{main_pid}/task/{tid}/stat")

    def since(self, before: CpuSnapshot) -> str:
        """'over 12.3 s: 30.1 s CPU (245% of one core): flowenricher run 27.9 s (227%), ...;
        main's threads by name: ThreadPool 11.9 s (7 busy of 8), flowenricher 8.9 s (5 busy of 18), ...'.
        The interpreter's threads all carry the process's name; the engine's (chDB) carry
        their own (ThreadPool, MergeMutate, ...), so the split says interpreter against engine."""
        hz = os.sysconf("SC_CLK_TCK")
        wall = self.taken - before.taken
        procs = sorted(((label, (ticks - before.processes.get(pid, (label, 0))[1]) / hz)
                        for pid, (label, ticks) in self.processes.items()), key=lambda item: -item[1])
        by_name: dict[str, list[float]] = {}
        for tid, (comm, ticks) in self.threads.items():
            by_name.setdefault(comm, []).append((ticks - before.threads.get(tid, (comm, 0))[1]) / hz)
        names = sorted(by_name.items(), key=lambda item: -sum(item[1]))
        total = sum(s for _, s in procs)
        listed = ", ".join(f"{label} {s:.1f} s ({100 * s / wall:.0f}%)" for label, s in procs if s >= 0.05)
        threads = ", ".join(f"{name} {sum(cpu):.1f} s ({sum(1 for c in cpu if c >= 0.05)} busy of {len(cpu)})"
                            for name, cpu in names if sum(cpu) >= 0.05)
        return (f"over {wall:.1f} s: {total:.1f} s CPU ({100 * total / wall:.0f}% of one core): {listed}; "
                f"main's threads by name: {threads}")


def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


DEPLOYED_RECEIVE_BUFFER: int = CollectorSettings.model_fields["receive_buffer_bytes"].default
"""The socket buffer the appliance's collector has as deployed (the config's default, granted
by the rmem_max the Ansible role sets).  Until 2026-12-07 this bench asked for this machine's
rmem_max (4 MiB): an eighth of what the deployed appliance buffers, so bursts it would
absorb were lost here (docs/performance.md)."""


def collector_config(mode: str, where: Path, port: int, metrics_port: int, api_port: int, gobgp_api: str,
                     receive_buffer: int, server: tuple[int, str] | None = None) -> dict[str, object]:
    """bench/ingest.py's collector config, with enrichment on or off; `server` (port,
    database) stores into the ClickHouse HTTP stand-in instead of the embedded engine."""
    config: dict[str, object] = {
        "collectors": {
            "listeners": [{"address": "127.0.0.1", "port": port, "protocol": "netflow"}],
            "workers": 2,
            "receive_buffer_bytes": receive_buffer,
        },
        "storage": {"path": str(where / "data")},
        "insert": {"batch_size": 250_000},
        "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
        "api": {"listen": f"127.0.0.1:{api_port}"},
        "my_prefixes": list(DEFAULT_MY_PREFIXES),
        "my_asn": 65000,
        "log_level": "info",
    }
    if server is not None:
        config["clickhouse"] = {"host": "127.0.0.1", "port": server[0], "database": server[1]}
    if mode in ENRICHED:
        config["enrich"] = "geoip, bgp"
        config["geoip"] = {"asn_db": str(GEOIP / "GeoLite2-ASN-Test.mmdb"), "city_db": str(GEOIP / "GeoIP2-City-Test.mmdb")}
        # gobgp_api: gobgpd's socket, or the path of a prefix file (--rib prefix-file)
        config["bgp"] = {"gobgp": {"api": gobgp_api}} if gobgp_api.startswith("unix://") else \
            {"prefix_file": gobgp_api}
    else:
        config["enrich"] = "none"
    return config


def write_prefix_file(routes: Sequence[StaticRoute], path: Path) -> Path:
    """The table as a bgp.prefix_file (bgp/prefix_file.py's format)."""
    entries = []
    for r in routes:
        entry: dict[str, object] = {"prefix": r.prefix, "as_path": list(r.as_path),
                                    "next_hop": "10.255.0.2" if ":" not in r.prefix else "2001:db8::2"}
        if r.communities:
            entry["communities"] = list(r.communities)
        if r.local_pref is not None:
            entry["local_pref"] = r.local_pref
        entries.append(entry)
    path.write_text(json.dumps(entries))
    return path


def bench_rules(where: Path) -> Path:
    """The original rule plus ten more (bench/detect.py's set: the original, the shipped
    examples, three more), each alerting and writing the detections table; blackholing is
    left out so that nothing is announced into the lab's gobgpd during the run."""
    from detect import EXTRA_RULES

    original = yaml.safe_load((REPO / "tests" / "data" / "examples" / "detection.original.yml").read_text())
    shipped = yaml.safe_load((REPO / "appliance" / "flowenricher" / "examples" / "detection.yml").read_text())
    names = {r["name"] for r in original}
    rules = [*original, *(r for r in shipped if r["name"] not in names), *EXTRA_RULES]
    for rule in rules:
        rule["action"] = "alert,clickhouse"
        for key in [k for k in rule if k.startswith("blackhole_")]:
            del rule[key]
    path = where / "rules.yaml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_idle(pid: int, timeout: float, busy_share: float = 0.1, sample_s: float = 2.0) -> float | None:
    """Seconds until `pid` uses under `busy_share` of a core over `sample_s`; None on timeout.

    Why: after answering the collector's ListPath of a full table, gobgpd (Debian's 3.10)
    keeps one to two cores busy for minutes (seen here: 120-190 % CPU for more than 8
    minutes, its RSS from 2.7 GB before the listing up to 20 GB), which would take the
    two cores from the collector being measured.  On an appliance the table is listed
    once at start, not during every measurement, so the step can wait for gobgpd to
    settle (or pause it: ``--pause-gobgpd``), and reports the CPU gobgpd still used
    during the traffic.
    """
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        before = cpu_seconds(pid)
        time.sleep(sample_s)
        if cpu_seconds(pid) - before < busy_share * sample_s:
            return time.monotonic() - started
    return None


def wait_rib(proc: subprocess.Popen[bytes], url: str, expected: int, timeout: float) -> tuple[int, float | None]:
    """Until the collector's mirror is synchronised and holds `expected` prefixes; its
    prefix count and its own load-duration gauge.  RuntimeError on timeout or exit."""
    deadline = time.monotonic() + timeout
    prefixes = 0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"collector exited with {proc.returncode} while loading the RIB")
        try:
            metrics = scrape(url)
        except OSError:
            metrics = {}
        prefixes = int(metrics.get("flowenricher_rib_prefixes", 0))
        if metrics.get("flowenricher_rib_synchronized", 0) >= 1 and prefixes >= expected:
            return prefixes, metrics.get("flowenricher_rib_load_seconds")
        from_file = int(metrics.get("flowenricher_prefix_file_routes", 0))
        if from_file >= expected:
            return from_file, None
        time.sleep(0.2)
    raise RuntimeError(f"RIB mirror not synchronised after {timeout:.0f} s ({prefixes} of {expected} prefixes)")


def run_step(mode: str, rate: int, args: argparse.Namespace, work: Path, children: Children, lab_api: str,
             expected: int, gobgpd_pid: int | None) -> EnrichedStep:
    step = EnrichedStep(collector=f"flowenricher-{mode}", rate=rate, mode=mode)
    port, metrics_port, api_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM), \
        free_port(socket.SOCK_STREAM)
    where = Path(tempfile.mkdtemp(prefix=f"{mode}-{rate}-", dir=work))
    conf = where / "config.yaml"
    server = (args.standin.port, f"step_{mode}_{rate}") if args.standin is not None else None
    conf.write_text(json.dumps(collector_config(mode, where, port, metrics_port, api_port, lab_api,
                                                args.receive_buffer, server), indent=2))
    log = where / "collector.log"
    argv = ["flowenricher", "run", "--config", str(conf)]
    if mode == "rules":
        rules = bench_rules(where)
        argv += ["--rules", str(rules)]
        names = [r["name"] for r in yaml.safe_load(rules.read_text())]
        step.notes.append(f"detection: {len(names)} rules ({', '.join(names)})")
    step.command = " ".join(argv)
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    started = time.monotonic()
    proc = children.start(argv, signal.SIGTERM, log, where)
    memory = MainSampler(where, proc.pid)
    parts = PartsSampler(url)
    code = None
    paused = False
    try:
        wait_for_log(proc, log, ["listening:"], timeout=120)
        if mode in ENRICHED:
            step.rib_prefixes, step.rib_load_gauge_s = wait_rib(proc, url, expected, timeout=args.rib_timeout)
            step.rib_load_s = time.monotonic() - started
        if gobgpd_pid is not None and args.idle_timeout > 0:
            step.gobgpd_idle_wait_s = wait_idle(gobgpd_pid, args.idle_timeout)
            if step.gobgpd_idle_wait_s is None:
                step.notes.append(f"gobgpd still busy {args.idle_timeout:.0f} s after the RIB load; measured anyway")
        gobgpd_cpu = cpu_seconds(gobgpd_pid) if gobgpd_pid is not None else 0.0
        if gobgpd_pid is not None and args.pause_gobgpd:
            os.kill(gobgpd_pid, signal.SIGSTOP)  # resumed below, failures included
            paused = True
        capture = replay_capture(rate, args, where) if args.sender == "replay" else None
        memory.start()
        parts.start()
        step.recv_buffer = socket_buffers(port)
        target = f"127.0.0.1:{port}"
        exporter_port = warm_up(target, args.protocol, args.seed)
        if capture is not None:
            time.sleep(max(0.0, capture.start_s - time.time()))
        cpu_before = CpuSnapshot(where, proc.pid)
        sender_before = resource.getrusage(resource.RUSAGE_CHILDREN)
        step.sent = send(target, rate, args, capture, exporter_port)
        sender_after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the sender is the one child reaped meanwhile
        sender_cpu = (sender_after.ru_utime + sender_after.ru_stime) - (sender_before.ru_utime + sender_before.ru_stime)
        step.lag_s = wait_stored(url, step.sent.flows, limit_s=max(60.0, 3 * args.duration))
        step.cpu = f"{CpuSnapshot(where, proc.pid).since(cpu_before)}; the sender {sender_cpu:.1f} s"
        if gobgpd_pid is not None:
            step.gobgpd_cpu_s = cpu_seconds(gobgpd_pid) - gobgpd_cpu
        if paused and gobgpd_pid is not None:
            os.kill(gobgpd_pid, signal.SIGCONT)
            paused = False
            if mode in ENRICHED and scrape(url).get("flowenricher_rib_synchronized", 0) < 1:
                step.notes.append("the RIB mirror lost its synchronisation while gobgpd was paused")
        time.sleep(WORKER_STATS_S + 0.5)  # a fresh counter snapshot from every worker
        final = scrape(url)
        step.decoder_drops = int(final.get("flowenricher_decoder_dropped_total", 0))
        step.kernel_drops = kernel_drops({port})[port]  # before stopping: the counter lives on the socket
        step.main_hwm_kb = _status_kb(proc.pid, "VmHWM:")
    except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as err:
        step.notes.append(str(err))
    finally:
        if paused and gobgpd_pid is not None:
            os.kill(gobgpd_pid, signal.SIGCONT)
        code = children.stop(proc, timeout=120)
        if memory.is_alive():
            memory.finish()
        if parts.is_alive():
            step.parts_mb = parts.finish()
    step.peak_rss_kb, step.peak_pss_kb, step.main_rss_kb = memory.peak_rss_kb, memory.peak_pss_kb, memory.main_rss_kb
    step.memory = memory.by_process()
    if code != 0:
        step.notes.append(f"flowenricher exited with {code}")
    step.notes.extend(_log_problems(log))
    if step.sent is not None:
        _count_rows(conf, step)
    shutil.rmtree(where / "data", ignore_errors=True)
    (where / "stream.pcap").unlink(missing_ok=True)
    judge(step, args.max_lag)
    return step


@dataclass(frozen=True)
class TimedCapture(Capture):
    start_s: float = 0.0  # the wall time its first flow is dated: send no earlier


REPLAY_LEAD_S = 30.0
"""How far ahead of now a step's capture dates its flows; building 3M flows takes about
10 s here.  The engine slides its windows with the wall clock (DetectionEngine.tick), so
flows dated minutes back would be late for the rules and skipped: the capture is built
for each step and sent when its first flow's time comes."""


def replay_capture(rate: int, args: argparse.Namespace, where: Path) -> TimedCapture:
    start_s = time.time() + REPLAY_LEAD_S
    built = build_capture(where / "stream.pcap", args.protocol, rate, args.duration, args.seed,
                          start_ms=int(start_s * 1000))
    if time.time() > start_s:
        raise RuntimeError(f"building the capture took more than {REPLAY_LEAD_S:.0f} s; its flows would be late")
    return TimedCapture(built.path, built.flows, built.packets, start_s)


def _log_problems(log: Path, limit: int = 3) -> list[str]:
    if not log.exists():
        return []
    found = [line.strip() for line in log.read_text(errors="replace").splitlines()
             if "ERROR" in line or "Traceback" in line]
    return [f"log: {line[:200]}" for line in found[:limit]]


def _count_rows(conf: Path, step: EnrichedStep) -> None:
    """Rows kept, and how many carry BGP, ASN and GeoIP columns (read from the stopped store)."""
    database = json.loads(conf.read_text()).get("clickhouse", {}).get("database", "flowenricher")
    argv = ["flowenricher", "sql", COUNT_SQL.replace("flowenricher.flows", f"{database}.flows"), "--config", str(conf),
            "--format", "tsv"]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)
    try:
        kept, dst_path, src_path, dst_as, country = (int(v) for v in done.stdout.split()[-5:])
    except ValueError:
        step.notes.append(f"count failed: {done.stdout.strip()[-200:]} {done.stderr.strip()[-300:]}")
        return
    step.kept, step.with_dst_path, step.with_src_as, step.with_dst_as, step.with_country = \
        kept, dst_path, src_path, dst_as, country


# --------------------------------------------------------------------------- report
def _mb(kb: int) -> str:
    return f"{kb / 1024:.0f}" if kb else "-"


def _share(part: int | None, whole: int | None) -> str:
    if part is None or not whole:
        return "-"
    return f"{part:,} ({100 * part / whole:.0f}%)"


def print_step(step: EnrichedStep) -> None:
    s = step.sent
    sent = f"sent {s.flows:,} flows in {s.seconds:.1f} s ({s.rate:,.0f}/s)" if s else "not sent"
    lag = f"{step.lag_s:.2f} s" if step.lag_s is not None else "-"
    print(f"{step.mode:9s} {step.rate:>9,}/s: {sent}, kept {step.kept}, kernel drops {step.kernel_drops}, "
          f"decoder drops {step.decoder_drops}, lag {lag}, peak RSS {_mb(step.peak_rss_kb)} MB "
          f"(main {_mb(step.main_rss_kb)} MB, main lifetime peak {_mb(step.main_hwm_kb)} MB) -> {step.verdict}")
    if step.mode in ENRICHED:
        gauge = f"{step.rib_load_gauge_s:.1f} s" if step.rib_load_gauge_s is not None else "-"
        idle = f"{step.gobgpd_idle_wait_s:.0f} s" if step.gobgpd_idle_wait_s is not None else "not reached or not waited"
        cpu = f"{step.gobgpd_cpu_s:.1f} s" if step.gobgpd_cpu_s is not None else "-"
        load = f"{step.rib_load_s:.1f} s" if step.rib_load_s is not None else "-"
        print(f"    RIB: {step.rib_prefixes} prefixes, start -> synchronised {load} (mirror's load gauge {gauge}); "
              f"rows with dst_as_path {_share(step.with_dst_path, step.kept)}, src_as "
              f"{_share(step.with_src_as, step.kept)}, dst_as {_share(step.with_dst_as, step.kept)}, "
              f"a country {_share(step.with_country, step.kept)}")
        print(f"    gobgpd: idle again after the RIB load: {idle}; CPU it used during the traffic and the catch-up: {cpu}")
    if step.memory:
        print(f"    peak RSS per process (VmHWM): {step.memory}")
    if step.cpu:
        print(f"    CPU from the first flow to the last stored (or the wait's end), {step.cpu}")
    if step.parts_mb:
        listed = ", ".join(f"{part} {mb:,.1f}" for part, mb in step.parts_mb.items())
        print(f"    storing process by part, each part's peak in MB (its gauges): {listed}")
    print(f"    collector: {step.command}")
    if s:
        print(f"    sender:    {s.command}")
    for note in step.notes:
        print(f"    note: {note}")
    sys.stdout.flush()


def print_table(steps: Sequence[EnrichedStep]) -> None:
    head = ("mode", "asked/s", "sent/s", "flows sent", "kept", "kernel drops", "decoder drops", "lag s",
            "RSS MB", "main RSS MB", "with dst_as_path", "result")
    rows = []
    for s in steps:
        sent = s.sent
        rows.append((
            s.mode, f"{s.rate:,}", f"{sent.rate:,.0f}" if sent else "-", f"{sent.flows:,}" if sent else "-",
            f"{s.kept:,}" if s.kept is not None else "-", str(s.kernel_drops), str(s.decoder_drops),
            f"{s.lag_s:.1f}" if s.lag_s is not None else "-", _mb(s.peak_rss_kb), _mb(s.main_rss_kb),
            _share(s.with_dst_path, s.kept), s.verdict,
        ))
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")


def best_of_mode(steps: Sequence[EnrichedStep], mode: str) -> tuple[EnrichedStep | None, bool]:
    """bench/ingest.py's `best` for one mode: its highest zero-loss step (a rate that failed
    in any run does not count), and whether a failing step bounded the sweep."""
    mine = [s for s in steps if s.mode == mode]
    failed = {s.rate for s in mine if s.verdict != "ok"}
    ok = [s for s in mine if s.verdict == "ok" and s.rate not in failed]
    limited = any(s.verdict in ("LOSS", "behind") for s in mine)
    return (max(ok, key=lambda s: s.rate) if ok else None), limited


def summary(steps: Sequence[EnrichedStep], modes: Sequence[str]) -> str:
    parts = []
    for mode in modes:
        top, limited = best_of_mode(steps, mode)
        if top is None:
            parts.append(f"{mode}: no zero-loss step")
            continue
        bound = "" if limited else ">= "
        text = (f"{mode}: {bound}{top.rate:,} flows/s with zero loss, peak RSS {_mb(top.peak_rss_kb)} MB "
                f"(main process {_mb(top.main_rss_kb)} MB during the step, {_mb(top.main_hwm_kb)} MB lifetime peak)")
        if mode in ENRICHED:
            text += f", RIB loaded in {top.rib_load_s:.1f} s" if top.rib_load_s is not None else ""
        parts.append(text)
    return "; ".join(parts)


# --------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", type=parse_rates, default=parse_rates(DEFAULT_RATES),
                    help=f"flows/s to step through, ascending (default {DEFAULT_RATES})")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of traffic per step (default 10)")
    ap.add_argument("--v4", type=int, default=1_000_000, help="IPv4 prefixes in the RIB (default 1000000)")
    ap.add_argument("--v6", type=int, default=200_000, help="IPv6 prefixes in the RIB (default 200000)")
    ap.add_argument("--paths", type=int, default=100_000, help="distinct AS paths in the table")
    ap.add_argument("--modes", type=lambda t: [m.strip() for m in t.split(",") if m.strip()], default=list(MODES),
                    help="enriched, plain or both (default both)")
    ap.add_argument("--protocol", choices=("ipfix", "v9"), default="ipfix")
    ap.add_argument("--sender", choices=("generate", "replay"), default="generate",
                    help="synthesise the traffic live, or replay a capture of it written for each step")
    ap.add_argument("--max-lag", type=float, default=3.0,
                    help="seconds after the sender stops within which every flow must be stored")
    ap.add_argument("--receive-buffer", type=int, default=DEPLOYED_RECEIVE_BUFFER,
                    help=f"socket receive buffer the collector asks for (default {DEPLOYED_RECEIVE_BUFFER:,}, "
                         "collectors.receive_buffer_bytes' default, which the Ansible role lets the kernel grant: "
                         "roles/common sets net.core.rmem_max to it; this bench runs as root and gets it whatever "
                         f"this machine's rmem_max, now {rmem_max():,}). bench/ingest.py gives nfacctd and "
                         "flowenricher rmem_max alike instead, for a fair comparison")
    ap.add_argument("--rib-timeout", type=float, default=600.0, help="seconds for the collector to load the RIB")
    ap.add_argument("--idle-timeout", type=float, default=300.0,
                    help="seconds to wait for gobgpd to settle after the collector's RIB load (default 300)")
    ap.add_argument("--rib", choices=("gobgp", "prefix-file"), default="gobgp",
                    help="where the collector takes the table from: GoBGP (fed by BIRD; each step lists it, "
                         "minutes for a full table) or the same table as a bgp.prefix_file (tens of seconds)")
    ap.add_argument("--store", choices=("embedded", "server"), default="embedded",
                    help="embedded chDB in the collector (default), or a ClickHouse server: the HTTP stand-in "
                         "(tests/support/clickhouse_http.py, chDB in this bench's process), so the collector's "
                         "memory is measured without the engine, as on the appliance")
    ap.add_argument("--pause-gobgpd", action="store_true",
                    help="SIGSTOP gobgpd (by PID) from the RIB load until every flow is stored, so its "
                         "post-ListPath CPU burn does not compete with the collector (see wait_idle)")
    ap.add_argument("--peers", type=lambda t: [c.strip() for c in t.split(",") if c.strip()], default=[],
                    help=f"other collectors to run at each rate after the modes, as bench/ingest.py runs them: "
                         f"any of {', '.join(PEERS)} (default none)")
    ap.add_argument("--nfacctd", default=shutil.which("nfacctd") or "/usr/sbin/nfacctd")
    ap.add_argument("--goflow2", default=None, help="goflow2 binary (default: built from its Go module into .cache/)")
    ap.add_argument("--keep-going", action="store_true", help="run every rate even after a mode failed")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", default=None, help="where step directories go (default: a new temp dir, removed)")
    args = ap.parse_args(argv)
    for m in args.modes:
        if m not in MODES:
            ap.error(f"--modes: unknown mode {m!r} (known: {', '.join(MODES)})")
    for c in args.peers:
        if c not in PEERS:
            ap.error(f"--peers: unknown collector {c!r} (known: {', '.join(PEERS)})")
    if args.duration <= 0 or args.v4 < 0 or args.v6 < 0:
        ap.error("--duration must be > 0, --v4 and --v6 >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    reason = unavailable_reason()
    if reason:
        sys.exit(f"bench/ingest_enriched.py: {reason}")
    signal.signal(signal.SIGTERM, interrupt)  # unwind through the finally blocks: everything stops by PID
    sweep_stale()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="flowenricher-ingest-enriched-"))
    work.mkdir(parents=True, exist_ok=True)
    children = Children()
    steps: list[EnrichedStep] = []
    peer_steps: list[Step] = []
    lab = BgpLab(TestNetwork(work / "net"))
    gobgp_api = ""
    args.standin = ClickHouseHTTPStandIn(str(work / "server")).start() if args.store == "server" else None
    print(f"ingest with enrichment: {args.protocol}, {args.duration:g} s per step, modes {', '.join(args.modes)}, "
          f"{os.cpu_count()} CPUs, work dir {work}")
    try:
        expected = 0
        if any(m in ENRICHED for m in args.modes):
            t = time.monotonic()
            routes = synthetic_table(args.v4, args.v6, args.paths)
            expected = len(routes)
            print(f"table: {args.v4} IPv4 + {args.v6} IPv6 prefixes, {args.paths} distinct AS paths "
                  f"(generated in {time.monotonic() - t:.1f} s)")
        if expected and args.rib == "prefix-file":
            gobgp_api = str(write_prefix_file(routes, work / "prefixes.json"))
            del routes
            print(f"RIB source: the prefix file {gobgp_api} (bgp.prefix_file), no GoBGP")
        elif expected:
            t = time.monotonic()
            lab.start(routes, timeout=900)
            del routes
            lab.wait_established(timeout=300)
            took = wait_table(lab, expected, timeout=1200)
            print(f"BIRD -> gobgpd: full table in gobgpd {time.monotonic() - t:.1f} s after the lab's start "
                  f"({took:.1f} s after the sessions came up)")
            sys.stdout.flush()
            gobgp_api = f"unix://{lab.api_socket}"  # bgp.gobgp.api takes gobgpd's Unix socket
        active, peers = list(args.modes), list(args.peers)
        for rate in args.rates:
            if not active and not peers:
                break
            for mode in list(active):
                step = run_step(mode, rate, args, work, children, gobgp_api, expected,
                                lab.gobgpd.pid if mode in ENRICHED and lab.gobgpd and args.rib == "gobgp" else None)
                steps.append(step)
                print_step(step)
                if step.verdict != "ok" and not args.keep_going:
                    active.remove(mode)
            for peer in list(peers):
                peer_step = run_peer(peer, rate, args, work, children)
                peer_steps.append(peer_step)
                _print_step(peer_step)
                if peer_step.verdict != "ok" and not args.keep_going:
                    peers.remove(peer)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        children.stop_all()
        lab.close()
        if args.standin is not None:
            args.standin.close()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print_table(steps)
    if peer_steps:
        print()
        print_ingest_table(peer_steps)
    print()
    print(summary(steps, args.modes))
    if peer_steps:
        print(peer_summary(steps, peer_steps, args))
    return 0 if steps or peer_steps else 1


def run_peer(name: str, rate: int, args: argparse.Namespace, work: Path, children: Children) -> Step:
    """One step of another collector, run as bench/ingest.py runs it, on the same traffic
    (with ``--sender replay``, a capture of the same model, not dated ahead: neither peer
    slides windows on the wall clock).  The host's net.core.rmem_max is raised to the
    deployed buffer for the step, as roles/common raises it on the appliance, so the peer
    gets the buffer flowenricher gets."""
    capture = None
    if args.sender == "replay":
        capture = build_capture(work / f"{name}-{rate}.pcap", args.protocol, rate, args.duration, args.seed)
    notes: list[str] = []
    try:
        with net_core("rmem_max", max(args.receive_buffer, rmem_max()), notes):
            step = RUNNERS[name](name, rate, args, work, children, capture)
    finally:
        if capture is not None:
            capture.path.unlink(missing_ok=True)
    step.notes.extend(notes)
    return step


def peer_summary(steps: Sequence[EnrichedStep], peer_steps: Sequence[Step], args: argparse.Namespace) -> str:
    """Each peer's best zero-loss rate, and each mode's against it."""
    parts = []
    for peer in args.peers:
        top, limited = best(peer_steps, peer)
        if top is None:
            parts.append(f"{peer}: no zero-loss step")
            continue
        parts.append(f"{peer}: {'' if limited else '>= '}{top.rate:,} flows/s with zero loss, "
                     f"peak RSS {_mb(top.peak_rss_kb)} MB")
        for mode in args.modes:
            mine, _ = best_of_mode(steps, mode)
            if mine is not None:
                parts.append(f"{mode}/{peer} = {mine.rate / top.rate:.2f}")
    return "; ".join(parts)


if __name__ == "__main__":
    raise SystemExit(main())
