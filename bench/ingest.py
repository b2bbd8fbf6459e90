"""Ingest benchmark: the highest flow rate the collector stores without losing a flow, beside
pmacct's nfacctd and goflow2 fed the same stream on the same machine, and each one's peak
memory.

    python bench/ingest.py [--rates 200k,300k,400k] [--duration 10] [--protocol ipfix|v9]
                           [--sender generate|replay]
                           [--collectors flowenricher,nfacctd,nfacctd-totals,goflow2] [--quick]

Each step runs one collector alone (never two at once, so each has the whole machine), sends
it `--duration` seconds of MikroTik-like export at one rate, stops it and compares what it
kept with what was sent.  Rates go up until a collector loses flows (or the sender cannot
reach the rate), one rate at a time for every collector, so conditions stay comparable.

* flowenricher: `flowenricher run` on a temporary config (one listener on 127.0.0.1, two
  workers, embedded chDB, `insert.batch_size` 250000, my_prefixes set so the networks
  stage classifies direction).  Kept: `SELECT count()` on the stopped store.  Zero loss
  means kept == sent, no kernel drop on the port, no decoder drop, and every row inserted
  within `--max-lag` seconds of the sender's end: the service queues decoded batches in
  memory, so a collector slower than the rate hides a backlog there for a while; a step
  still catching up afterwards is not sustained ("behind").
* nfacctd (Debian pmacct), print plugin, CSV files, the `flows` counter; kept: the sum of
  the FLOWS column, and zero loss means kept == sent and no kernel drop on its port.
  `nfacctd` aggregates per flow (src/dst host and port, protocol: one line per flow, the
  nearest thing to storing every flow); `nfacctd-totals` only per protocol (see
  NFACCTD_AGGREGATES for why both).

* goflow2 (netsampler/goflow2, built from its Go module at tests/support/goflow2.py's
  VERSION into .cache/), its NetFlow/IPFIX listener on 127.0.0.1 with its defaults (one
  socket, two decoding workers, a queue of up to a million datagrams between them),
  writing every flow as a length-delimited protobuf FlowMessage (``-format bin``) to a file
  (``-transport file``, no separator).  Kept: the records in that file; zero loss means
  kept == sent, no kernel drop on its port and no datagram its queue dropped
  (``goflow2_flow_dropped_packets_total``) or its decoder refused
  (``goflow2_flow_decoder_error_total``), the last record written within ``--max-lag``
  seconds of the sender's end.

All three get the same socket receive buffer (`--receive-buffer`, default net.core.rmem_max,
the most nfacctd can get without a sysctl change), so none wins by buffering more.
goflow2 has no setting for it (its docs/performance.md: the buffer is the host's), so
for its step the bench sets net.core.rmem_default to what the kernel grants the others
(twice the size asked: the kernel doubles an SO_RCVBUF request for its bookkeeping), as
such an operator would, and puts the old value back after the step (root only;
otherwise goflow2 gets the kernel's default, and the step says so).  Each step reports
the buffer the kernel gave.

Senders: `generate` runs `flowenricher generate` (flows synthesised and encoded live, about
one core per 1M flows/s, taken from the same two cores).  `replay` first writes the same
model's datagrams to a capture and sends it with `flowenricher replay --rate` (a fraction
of a core at 1.5M flows/s), for rates where live synthesis would starve the collectors.  A
step whose sender fell short of the rate is reported as sender-limited, not as a pass.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # support.goflow2: the one way goflow2 is built

from appliance.flowenricher.collector.receiver import kernel_drops  # noqa: E402
from appliance.flowenricher.generate.encode import make_encoder  # noqa: E402
from appliance.flowenricher.generate.pcapwriter import write_pcap  # noqa: E402
from appliance.flowenricher.generate.traffic import DEFAULT_MY_PREFIXES, TrafficGenerator  # noqa: E402

DEFAULT_RATES = "200k,250k,300k,350k,400k,450k,500k,600k,800k,1M,1.5M,2M,2.5M,3M"
SAMPLE_INTERVAL_S = 0.2  # memory sampling period
WORKER_STATS_S = 1.0  # a worker sends decoder counters this often (collector/worker.py)
NFACCTD_REFRESH_S = 1  # print_refresh_time: how often nfacctd's print plugin writes its cache
SENDER_SHORTFALL = 0.97  # a sender below this fraction of the asked rate did not test the rate
CAPTURE_CHUNK = 200_000  # flows synthesised per step when building a replay capture


# --------------------------------------------------------------------------- processes
def family(directory: Path) -> list[int]:
    """Every live process working in `directory`: a collector started there and all it
    forks or spawns, which inherit the directory, including children that outlive it
    (nfacctd's cache writers) and would escape a parent-child walk."""
    target = str(directory)
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if os.readlink(f"{entry.path}/cwd") == target and is_alive(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def is_alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class Children:
    """Every collector this bench starts, each in its own step directory, so that any exit
    (error, Ctrl-C, SIGTERM) stops it and its whole family, by PID, after the signal the
    collector treats as a clean stop."""

    def __init__(self) -> None:
        self._running: dict[int, tuple[subprocess.Popen[bytes], signal.Signals, Path]] = {}

    def start(self, argv: Sequence[str], stop_signal: signal.Signals, log: Path, cwd: Path) -> subprocess.Popen[bytes]:
        with open(log, "wb") as out:
            # A session of its own: a Ctrl-C in the terminal reaches the bench only, which
            # then stops each collector the way that collector is meant to be stopped.
            proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    cwd=cwd, start_new_session=True)
        self._running[proc.pid] = (proc, stop_signal, cwd)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float) -> int:
        """Stop cleanly (the collector flushes), wait for its family, kill what is left."""
        entry = self._running.pop(proc.pid, None)
        if entry is None:  # already stopped
            return proc.wait()
        _, sig, cwd = entry
        deadline = time.monotonic() + timeout
        if proc.poll() is None:
            proc.send_signal(sig)
        while time.monotonic() < deadline and (proc.poll() is None or family(cwd)):
            time.sleep(0.1)
        left = family(cwd)
        if left:
            print(f"  {left} still running {timeout:.0f} s after {sig.name} to {proc.pid}; killing", file=sys.stderr)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return proc.wait()

    def stop_all(self) -> None:
        for proc, _sig, _cwd in list(self._running.values()):
            self.stop(proc, timeout=30)


def free_port(kind: socket.SocketKind) -> int:
    """A port the kernel just handed out on 127.0.0.1 (free now; the collector binds it next)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_log(proc: subprocess.Popen[bytes], log: Path, needles: Sequence[str], timeout: float) -> None:
    """Until every `needles` line is in `log`; RuntimeError with the log's tail otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if all(n in text for n in needles):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    tail = "\n    ".join(log.read_text(errors="replace").splitlines()[-15:]) if log.exists() else "(no log)"
    state = f"exited with {proc.returncode}" if proc.poll() is not None else f"not ready after {timeout:.0f} s"
    raise RuntimeError(f"{proc.args!r} {state}; {log}:\n    {tail}")


class MemorySampler(threading.Thread):
    """Peak of the summed VmRSS and Pss of a collector's family, sampled every 0.2 s, and
    each process's own peak (VmHWM), to say which one holds the memory.

    RSS is what the brief asks for; Pss is reported beside it because forked processes
    (nfacctd's plugin and its cache writers) share pages that a sum of RSS counts twice.
    """

    def __init__(self, directory: Path) -> None:
        super().__init__(name=f"memory-{directory.name}", daemon=True)
        self.directory = directory
        self.peak_rss_kb = 0
        self.peak_pss_kb = 0
        self.hwm_kb: dict[int, tuple[str, int]] = {}  # pid -> (what it is, VmHWM)
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(SAMPLE_INTERVAL_S)

    def sample(self) -> None:
        rss = pss = 0
        for pid in family(self.directory):
            rss += _proc_kb(f"/proc/{pid}/status", "VmRSS:")
            pss += _proc_kb(f"/proc/{pid}/smaps_rollup", "Pss:")
            hwm = _proc_kb(f"/proc/{pid}/status", "VmHWM:")
            label = self.hwm_kb[pid][0] if pid in self.hwm_kb else _describe(pid)
            self.hwm_kb[pid] = (label, max(hwm, self.hwm_kb.get(pid, ("", 0))[1]))
        self.peak_rss_kb = max(self.peak_rss_kb, rss)
        self.peak_pss_kb = max(self.peak_pss_kb, pss)

    def finish(self) -> None:
        self._halt.set()
        self.join()

    def by_process(self, limit: int = 4) -> str:
        """The largest per-process peaks, e.g. 'flowenricher run 612 MB, spawned worker 98 MB
        (largest of 2)'."""
        groups: defaultdict[str, list[int]] = defaultdict(list)
        for label, kb in self.hwm_kb.values():
            if kb:
                groups[label].append(kb)
        top = sorted(groups.items(), key=lambda item: -max(item[1]))[:limit]
        return ", ".join(f"{label} {max(kbs) / 1024:.0f} MB" + (f" (largest of {len(kbs)})" if len(kbs) > 1 else "")
                         for label, kbs in top)


def _describe(pid: int) -> str:
    """A short name for a collector's process: its command line, minus the interpreter."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return str(pid)
    words = [w.decode(errors="replace") for w in argv if w]
    if any("multiprocessing" in w for w in words):
        role = "resource tracker" if any("resource_tracker" in w for w in words) else "spawned worker"
        return role
    words = [w for w in words if not w.endswith(("python", "python3", "python3.11"))]
    return " ".join(Path(words[0]).name.split() + words[1:2]) if words else str(pid)


def _proc_kb(path: str, key: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def socket_buffers(port: int) -> list[int]:
    """Receive buffer (bytes, as the kernel set it) of each UDP socket bound to `port`."""
    out = subprocess.run(["ss", "-uamnH", f"sport = :{port}"], capture_output=True, text=True, check=False).stdout
    sizes: list[int] = []
    for part in out.split():
        if part.startswith("skmem:("):  # skmem:(r0,rb8388608,t0,tb212992,...)
            sizes.extend(int(f[2:]) for f in part[7:-1].split(",") if f.startswith("rb") and f[2:].isdigit())
    return sizes


# --------------------------------------------------------------------------- senders
@dataclass
class Sent:
    """What the exporter put on the wire in one step."""

    flows: int
    seconds: float
    send_errors: int
    command: str

    @property
    def rate(self) -> float:
        return self.flows / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Capture:
    """A replay capture: the model's datagrams for one rate, and the flows they hold."""

    path: Path
    flows: int
    packets: int


def build_capture(path: Path, protocol: str, rate: int, duration: float, seed: int,
                  start_ms: int | None = None) -> Capture:
    """`rate * duration` flows of the traffic model, encoded as the live sender would
    encode them (template refreshes included), flow times spread as if sent at `rate`
    from `start_ms` (now by default)."""
    gen = TrafficGenerator(seed=seed)
    encoder = make_encoder(protocol)
    total = round(rate * duration)
    start_ms = int(time.time() * 1000) if start_ms is None else start_ms
    flows = 0

    def payloads() -> Iterator[bytes]:
        nonlocal flows
        done = 0
        while done < total:
            n = min(CAPTURE_CHUNK, total - done)
            t0 = start_ms + done * 1000 // rate
            span = max(1, n * 1000 // rate)
            batch = gen.batch(n, t0, span)
            done += len(batch)
            packets = encoder.encode(batch, t0 + span)
            flows += int(encoder.last_record_counts.sum())
            yield from packets

    packets = write_pcap(path, payloads())
    return Capture(path, flows, packets)


def send(target: str, rate: int, args: argparse.Namespace, capture: Capture | None,
         source_port: int | None = None) -> Sent:
    """Run the sender to completion (from `source_port`: warm_up's); its JSON result says
    what it sent."""
    if capture is None:
        argv = ["flowenricher", "generate", "--to", target, "--fps", str(rate), "--duration", str(args.duration),
                "--protocol", args.protocol, "--seed", str(args.seed)]
    else:
        pps = capture.packets / args.duration
        argv = ["flowenricher", "replay", str(capture.path), "--to", target, "--rate", f"{pps:.1f}"]
    if source_port is not None:
        argv += ["--source-port", str(source_port)]
    done = subprocess.run(argv, capture_output=True, check=False, timeout=args.duration * 4 + 120)
    if done.returncode != 0:
        raise RuntimeError(f"sender failed ({done.returncode}): {' '.join(argv)}\n{done.stderr.decode(errors='replace')}")
    stats = json.loads(done.stdout)
    if capture is not None and int(stats["packets"]) != capture.packets:
        raise RuntimeError(f"replay sent {stats['packets']} of the capture's {capture.packets} packets")
    flows = int(stats["flows"]) if capture is None else capture.flows
    return Sent(flows, float(stats["elapsed_s"]), int(stats["send_errors"]), " ".join(argv))


def warm_up(target: str, protocol: str, seed: int) -> int:
    """Send one template packet (no flow records) before the measured stream; the UDP port
    it came from, for the sender to export from too (send's `source_port`).

    nfacctd 1.7.7 ignores the first datagram it receives after it starts (seen here in its
    debug log: no "Received" line for it), which would be the stream's first template and
    cost it the flows of every data packet before the next refresh.  goflow2 keys
    templates by exporter address and port, and decodes on two workers: the stream's first
    data datagrams raced its own first template there and were dropped as
    ``template_not_found`` (20 datagrams at 100k flows/s, seen here).  Every collector gets
    this packet, from the port the stream then comes from, as a router's export does, so
    each starts the stream knowing the templates.
    """
    encoder = make_encoder(protocol)
    packets = encoder.encode(TrafficGenerator(seed=seed).batch(1))
    template = packets[list(encoder.last_record_counts).index(0)]
    host, port = target.rsplit(":", 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        s.sendto(template, (host, int(port)))
        source_port: int = s.getsockname()[1]
    time.sleep(0.3)
    return source_port


# --------------------------------------------------------------------------- steps
@dataclass
class Step:
    """One collector at one rate."""

    collector: str
    rate: int
    sent: Sent | None = None
    kept: int | None = None
    kernel_drops: int | None = None
    decoder_drops: int | None = None
    lag_s: float | None = None
    peak_rss_kb: int = 0
    peak_pss_kb: int = 0
    recv_buffer: list[int] = field(default_factory=list)
    memory: str = ""  # the largest per-process peaks
    command: str = ""
    notes: list[str] = field(default_factory=list)
    verdict: str = "error"


def judge(step: Step, max_lag: float | None) -> None:
    """Set `step.verdict`: ok, LOSS, behind, sender-limited or error."""
    s = step.sent
    if s is None or step.kept is None:
        step.verdict = "error"
    elif s.send_errors or s.flows == 0:
        step.verdict = "error"
        step.notes.append(f"sender: {s.send_errors} send errors, {s.flows} flows")
    elif step.kept != s.flows or step.kernel_drops or step.decoder_drops:
        step.verdict = "LOSS"
    elif max_lag is not None and (step.lag_s is None or step.lag_s > max_lag):
        step.verdict = "behind"
    elif s.rate < SENDER_SHORTFALL * step.rate:
        step.verdict = "sender-limited"
    else:
        step.verdict = "ok"


def scrape(url: str) -> dict[str, float]:
    """Every sample of the /metrics page, summed over labels, by sample name."""
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    totals: defaultdict[str, float] = defaultdict(float)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            totals[sample.name] += sample.value
    return dict(totals)


def wait_stored(url: str, target: int, limit_s: float) -> float | None:
    """Seconds from now until the collector reports `target` rows inserted; None if it
    never does (it stops progressing, or `limit_s` passes)."""
    start = last_change = time.monotonic()
    last = -1.0
    while True:
        now = time.monotonic()
        try:
            rows = scrape(url).get("flowenricher_store_rows_inserted_total", 0.0)
        except OSError:
            return None
        if rows >= target:
            return now - start
        if rows != last:
            last, last_change = rows, now
        if now - start > limit_s or now - last_change > 10:
            return None
        time.sleep(0.25)


def run_flowenricher(name: str, rate: int, args: argparse.Namespace, work: Path, children: Children,
                     capture: Capture | None) -> Step:
    """One step of `flowenricher run`: start, warm up, send, wait for the store, read the
    counters, stop (SIGTERM flushes), count the rows in the stopped store."""
    step = Step(name, rate)
    port, metrics_port, api_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM), \
        free_port(socket.SOCK_STREAM)
    where = Path(tempfile.mkdtemp(prefix=f"{name}-{rate}-", dir=work))  # one per run: --repeat
    config = {
        "collectors": {
            "listeners": [{"address": "127.0.0.1", "port": port, "protocol": "netflow"}],
            "workers": 2,
            "receive_buffer_bytes": args.receive_buffer,
        },
        "storage": {"path": str(where / "data")},
        "insert": {"batch_size": 250_000},
        "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
        "api": {"listen": f"127.0.0.1:{api_port}"},
        # The generator's own prefixes: direction and network classification do real work.
        "my_prefixes": list(DEFAULT_MY_PREFIXES),
        "log_level": "info",
    }
    conf = where / "config.yaml"
    conf.write_text(json.dumps(config, indent=2))  # JSON is YAML
    log = where / "collector.log"
    argv = ["flowenricher", "run", "--config", str(conf)]
    step.command = " ".join(argv)
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    proc = children.start(argv, signal.SIGTERM, log, where)
    memory = MemorySampler(where)
    try:
        wait_for_log(proc, log, ["listening:"], timeout=120)
        memory.start()
        step.recv_buffer = socket_buffers(port)
        target = f"127.0.0.1:{port}"
        exporter_port = warm_up(target, args.protocol, args.seed)
        step.sent = send(target, rate, args, capture, exporter_port)
        step.lag_s = wait_stored(url, step.sent.flows, limit_s=max(60.0, 3 * args.duration))
        time.sleep(WORKER_STATS_S + 0.5)  # a fresh counter snapshot from every worker
        final = scrape(url)
        step.decoder_drops = int(final.get("flowenricher_decoder_dropped_total", 0))
        # Read before stopping: the counter lives on the sockets, which close on stop.
        step.kernel_drops = kernel_drops({port})[port]
    except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as err:
        step.notes.append(str(err))
    finally:
        code = children.stop(proc, timeout=120)
        _close_step(step, memory, code, "flowenricher", _log_problems(log, ("ERROR", "Traceback")))
    if step.sent is not None:
        step.kept = _count_rows(conf, step)
    shutil.rmtree(where / "data", ignore_errors=True)
    judge(step, args.max_lag)
    return step


def _count_rows(conf: Path, step: Step) -> int | None:
    argv = ["flowenricher", "sql", "SELECT count() FROM flowenricher.flows", "--config", str(conf)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=300)
    try:
        return int(done.stdout.split()[-1])
    except (IndexError, ValueError):
        step.notes.append(f"count failed: {done.stderr.strip()[-300:]}")
        return None


PER_FLOW = "src_host, dst_host, src_port, dst_port, proto, flows"
TOTALS = "proto, flows"
NFACCTD_LOSS_SIGNS = ("missing data detected", "finished cache entries", "maximum number of writer", "ERROR")
"""Log lines with which nfacctd admits losing flows (plugin queue full, cache full, too
many cache writers); reported with the step, the FLOWS sum decides."""
NFACCTD_AGGREGATES = {"nfacctd": PER_FLOW, "nfacctd-totals": TOTALS}
"""The two nfacctd set-ups.  `nfacctd` keeps one line per flow (the 5-tuple), the nearest
thing to storing every flow.  `nfacctd-totals` decodes and accounts every flow but keeps
only per-protocol totals: its print plugin writes a few lines a second, so it measures
the core (receive, decode) and the plugin queue, which is what nfacctd's usual 1.5M
flows/s here refers to; with per-flow output the plugin's cache writers are the limit."""


def nfacctd_config(where: Path, port: int, rate: int, receive_buffer: int, aggregate: str) -> str:
    """nfacctd tuned for throughput, with room for `aggregate` at `rate`.

    The print plugin keeps every aggregate of a refresh period in a hash of
    `print_cache_entries` buckets about 10 deep (CONFIG-KEYS); per-flow aggregates are
    nearly all distinct, so it is sized for two periods of flows at the rate, lest it
    fill ("Finished cache entries") and drop them.  A refresh every second keeps each
    purge small: tried here, 5 s and 60 s purges took far longer per line and lost more.
    The core-to-plugin queue gets 64 MB in 64 kB transfers instead of the default 4 MB in
    record-sized ones (CONFIG-KEYS advises a 1:100 to 1:1000 ratio for high rates).
    """
    entries = 2 * rate * NFACCTD_REFRESH_S // 10 if aggregate == PER_FLOW else 0
    buckets = _next_prime(max(16411, entries))
    return "\n".join([
        "daemonize: false",
        f"logfile: {where / 'nfacctd.log'}",
        "nfacctd_ip: 127.0.0.1",
        f"nfacctd_port: {port}",
        f"nfacctd_pipe_size: {receive_buffer}",
        "plugins: print",
        f"aggregate: {aggregate}",
        "print_output: csv",
        f"print_output_file: {where / 'flows-%s.csv'}",
        "print_output_file_append: true",
        f"print_refresh_time: {NFACCTD_REFRESH_S}",
        f"print_cache_entries: {buckets}",
        "plugin_pipe_size: 67108864",
        "plugin_buffer_size: 65536",
        "",
    ])


def _next_prime(n: int) -> int:
    def prime(k: int) -> bool:
        return k > 1 and all(k % d for d in range(2, int(k**0.5) + 1))

    while not prime(n):
        n += 1
    return n


def run_nfacctd(name: str, rate: int, args: argparse.Namespace, work: Path, children: Children,
                capture: Capture | None) -> Step:
    """One step of nfacctd set up as `name` says: start, warm up, send, let the plugin take
    the last flows, read the kernel's drops, stop (SIGINT purges), sum the CSV files."""
    step = Step(name, rate)
    port = free_port(socket.SOCK_DGRAM)
    where = Path(tempfile.mkdtemp(prefix=f"{name}-{rate}-", dir=work))
    conf = where / "nfacctd.conf"
    conf.write_text(nfacctd_config(where, port, rate, args.receive_buffer, NFACCTD_AGGREGATES[name]))
    log = where / "nfacctd.log"
    argv = [args.nfacctd, "-f", str(conf)]
    step.command = " ".join(argv)
    proc = children.start(argv, signal.SIGINT, where / "stdout.log", where)  # SIGINT: pmacct's clean stop
    memory = MemorySampler(where)
    try:
        wait_for_log(proc, log, ["waiting for NetFlow/IPFIX data", "cache entries="], timeout=60)
        memory.start()
        step.recv_buffer = socket_buffers(port)
        target = f"127.0.0.1:{port}"
        exporter_port = warm_up(target, args.protocol, args.seed)
        step.sent = send(target, rate, args, capture, exporter_port)
        time.sleep(2 * NFACCTD_REFRESH_S + 1)  # the last flows reach the plugin's cache
        step.kernel_drops = kernel_drops({port})[port]
    except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as err:
        step.notes.append(str(err))
    finally:
        # Returns once the plugin's cache writers are gone too: then the files are complete.
        code = children.stop(proc, timeout=120)
        _close_step(step, memory, code, "nfacctd", _log_problems(log, NFACCTD_LOSS_SIGNS))
    if step.sent is not None:
        step.kept, bad = _sum_flows(where.glob("flows-*.csv"))
        if bad:
            step.notes.append(f"{bad} lines of nfacctd's CSV output are not records")
    for csv in where.glob("flows-*.csv"):
        csv.unlink()
    judge(step, None)
    return step


def _sum_flows(files: Iterator[Path]) -> tuple[int, int]:
    """Sum of the FLOWS column (the next-to-last one: ..., PACKETS, FLOWS, BYTES), and the
    number of lines that are neither a header (one per writer) nor a record."""
    total = bad = 0
    for path in files:
        with open(path, "rb") as f:
            for line in f:
                parts = line.rstrip(b"\n").rsplit(b",", 2)
                if len(parts) == 3 and parts[1].isdigit():
                    total += int(parts[1])
                elif not line.rstrip(b"\n").endswith(b"PACKETS,FLOWS,BYTES"):
                    bad += 1
    return total, bad


def _close_step(step: Step, memory: MemorySampler, code: int | None, who: str, problems: list[str]) -> None:
    """After a collector stopped: its memory peaks, exit code and log problems into `step`."""
    if memory.is_alive():
        memory.finish()
    step.peak_rss_kb, step.peak_pss_kb = memory.peak_rss_kb, memory.peak_pss_kb
    step.memory = memory.by_process()
    if code not in (0, None):  # None: it never started (the notes say why)
        step.notes.append(f"{who} exited with {code}")
    step.notes.extend(problems)


def _log_problems(log: Path, needles: Sequence[str], limit: int = 3) -> list[str]:
    if not log.exists():
        return []
    lowered = [n.lower() for n in needles]
    found = [line.strip() for line in log.read_text(errors="replace").splitlines()
             if any(n in line.lower() for n in lowered)]
    more = f" (+{len(found) - limit} more)" if len(found) > limit else ""
    return [f"log: {line[:200]}" for line in found[:limit]] + ([more.strip()] if more else [])


GOFLOW2_DROPS = ("goflow2_flow_dropped_packets_total", "goflow2_flow_decoder_error_total")
"""goflow2's own counters of datagrams it did not turn into flows: its queue full (the
listener is non-blocking by default) and datagrams its decoders refused."""


def run_goflow2(name: str, rate: int, args: argparse.Namespace, work: Path, children: Children,
                capture: Capture | None) -> Step:
    """One step of goflow2 (see the module docstring): start, warm up, send, wait until its
    output stops growing, read the kernel's and its own drops, stop (SIGTERM), count the
    records in its output."""
    from support.goflow2 import binary

    step = Step(name, rate)
    port, http_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
    where = Path(tempfile.mkdtemp(prefix=f"{name}-{rate}-", dir=work))
    out = where / "flows.bin"
    argv = [str(args.goflow2 or binary()), "-listen", f"netflow://127.0.0.1:{port}", "-transport", "file",
            "-transport.file", str(out), "-transport.file.sep=", "-format", "bin",
            "-addr", f"127.0.0.1:{http_port}", "-loglevel", "warn"]
    step.command = " ".join(argv)
    url = f"http://127.0.0.1:{http_port}/metrics"
    memory = MemorySampler(where)
    proc = None
    try:
        # goflow2 asks for no buffer: a socket then gets rmem_default as it is, where a size
        # asked with SO_RCVBUF (nfacctd, flowenricher) is doubled by the kernel for its overhead.
        with net_core("rmem_default", 2 * args.receive_buffer, step.notes):
            proc = children.start(argv, signal.SIGTERM, where / "goflow2.log", where)
            _wait_http(proc, url, where / "goflow2.log", timeout=60)  # its socket is open: the buffer is set
        memory.start()
        step.recv_buffer = socket_buffers(port)
        target = f"127.0.0.1:{port}"
        exporter_port = warm_up(target, args.protocol, args.seed)
        step.sent = send(target, rate, args, capture, exporter_port)
        step.lag_s = _wait_still(out, quiet_s=1.0, limit_s=max(60.0, 3 * args.duration))
        final = scrape(url)
        step.decoder_drops = int(sum(final.get(k, 0.0) for k in GOFLOW2_DROPS))
        step.kernel_drops = kernel_drops({port})[port]
    except (RuntimeError, OSError, subprocess.SubprocessError, ValueError) as err:
        step.notes.append(str(err))
    finally:
        code = children.stop(proc, timeout=60) if proc is not None else None
        _close_step(step, memory, code, "goflow2", _log_problems(where / "goflow2.log", ("level=ERROR",)))
    if step.sent is not None and out.exists():
        step.kept, rest = count_delimited(out.read_bytes())
        if rest:
            step.notes.append(f"{rest} bytes at the end of goflow2's output are not a whole record")
    out.unlink(missing_ok=True)
    judge(step, args.max_lag)
    return step


@contextlib.contextmanager
def net_core(name: str, value: int, notes: list[str]) -> Iterator[None]:
    """The sysctl net.core.`name` at `value` inside the block, its previous value back
    after it (root only: otherwise unchanged, and `notes` says so)."""
    path = Path("/proc/sys/net/core") / name
    try:
        before = path.read_text().strip()
        path.write_text(str(value))
    except OSError as err:
        notes.append(f"net.core.{name} not set to {value} ({err.strerror})")
        yield
        return
    try:
        yield
    finally:
        path.write_text(before)


def _wait_http(proc: subprocess.Popen[bytes], url: str, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    tail = log.read_text(errors="replace")[-1500:] if log.exists() else "(no log)"
    state = f"exited with {proc.returncode}" if proc.poll() is not None else f"not serving {url} after {timeout:.0f} s"
    raise RuntimeError(f"{proc.args!r} {state}; {log}:\n{tail}")


def _wait_still(path: Path, quiet_s: float, limit_s: float) -> float | None:
    """Seconds from now until `path` last grew, once it has not grown for `quiet_s`; None
    if it still grows after `limit_s`."""
    start = last_change = time.monotonic()
    size = -1
    while True:
        now = time.monotonic()
        current = path.stat().st_size if path.exists() else 0
        if current != size:
            size, last_change = current, now
        elif now - last_change >= quiet_s:
            return last_change - start
        if now - start > limit_s:
            return None
        time.sleep(0.05)


def count_delimited(data: bytes) -> tuple[int, int]:
    """(records, bytes left over) in `data`: messages each behind its length as a varint
    (protobuf's delimited form, goflow2's ``-format bin``)."""
    records = at = 0
    end = len(data)
    while at < end:
        length = shift = 0
        start = at
        while at < end:
            byte = data[at]
            at += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        else:
            return records, end - start
        if at + length > end:
            return records, end - start
        at += length
        records += 1
    return records, 0


# --------------------------------------------------------------------------- report
def parse_rate(text: str) -> int:
    """'300k', '1.5M' or '250000' -> flows/s."""
    t = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(t[-1:], 1)
    try:
        value = float(t[:-1] if scale > 1 else t) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"rate {text!r}: expected a number like 300000, 300k or 1.5M") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"rate {text!r}: must be > 0")
    return round(value)


def parse_rates(text: str) -> list[int]:
    return sorted({parse_rate(part) for part in text.split(",") if part.strip()})


def _mb(kb: int) -> str:
    return f"{kb / 1024:.0f}" if kb else "-"


def print_table(steps: Sequence[Step]) -> None:
    head = ("collector", "asked/s", "sent/s", "flows sent", "kept", "kernel drops", "decoder drops", "lag s",
            "RSS MB", "PSS MB", "result")
    rows = []
    for s in steps:
        sent, ours = s.sent, s.collector == "flowenricher"
        rows.append((
            s.collector, f"{s.rate:,}", f"{sent.rate:,.0f}" if sent else "-", f"{sent.flows:,}" if sent else "-",
            f"{s.kept:,}" if s.kept is not None else "-",
            str(s.kernel_drops) if s.kernel_drops is not None else "-",
            str(s.decoder_drops) if s.decoder_drops is not None else "-" if ours else "n/a",
            f"{s.lag_s:.1f}" if s.lag_s is not None else "-" if ours else "n/a",
            _mb(s.peak_rss_kb), _mb(s.peak_pss_kb), s.verdict,
        ))
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")


def best(steps: Sequence[Step], collector: str) -> tuple[Step | None, bool]:
    """The highest zero-loss step of `collector`, and whether the sweep found its limit
    (a failing step above it) rather than running out of rates or sender."""
    mine = [s for s in steps if s.collector == collector]
    failed_rates = {s.rate for s in mine if s.verdict != "ok"}
    ok = [s for s in mine if s.verdict == "ok" and s.rate not in failed_rates]
    top = max(ok, key=lambda s: s.rate) if ok else None
    limited = any(s.verdict in ("LOSS", "behind") for s in mine)
    return top, limited


def summary(steps: Sequence[Step], args: argparse.Namespace) -> str:
    parts = []
    found: dict[str, tuple[Step | None, bool]] = {c: best(steps, c) for c in args.collectors}
    for name, (top, limited) in found.items():
        if top is None:
            parts.append(f"{name}: no zero-loss step")
            continue
        bound = "" if limited else ">= "
        mem = f", peak RSS {top.peak_rss_kb / 1024:.0f} MB"
        parts.append(f"{name}: {bound}{top.rate:,} flows/s with zero loss{mem}")
    fe = found.get("flowenricher", (None, False))
    for name in PEERS:
        nf = found.get(name, (None, False))
        if fe[0] is not None and nf[0] is not None:
            ratio = fe[0].rate / nf[0].rate
            qualifier = "" if fe[1] and nf[1] else " (bound: a sweep ended before its collector lost flows)"
            parts.append(f"flowenricher/{name} = {ratio:.2f}{qualifier}")
    return "; ".join(parts)


# --------------------------------------------------------------------------- main
Runner = Callable[[str, int, argparse.Namespace, Path, Children, "Capture | None"], Step]
RUNNERS: dict[str, Runner] = {"flowenricher": run_flowenricher, "nfacctd": run_nfacctd, "nfacctd-totals": run_nfacctd,
                               "goflow2": run_goflow2}
PEERS = ("nfacctd", "nfacctd-totals", "goflow2")

def rmem_max() -> int:
    try:
        return int(Path("/proc/sys/net/core/rmem_max").read_text())
    except (OSError, ValueError):
        return 4 << 20


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", type=parse_rates, default=parse_rates(DEFAULT_RATES),
                    help=f"flows/s to step through, ascending (default {DEFAULT_RATES})")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of traffic per step (default 10)")
    ap.add_argument("--protocol", choices=("ipfix", "v9"), default="ipfix")
    ap.add_argument("--sender", choices=("generate", "replay"), default="generate")
    ap.add_argument("--collectors", type=lambda t: [c.strip() for c in t.split(",") if c.strip()],
                    default=list(RUNNERS), help=f"any of {','.join(RUNNERS)} (default all)")
    ap.add_argument("--max-lag", type=float, default=3.0,
                    help="seconds after the sender stops within which flowenricher must have stored every flow")
    ap.add_argument("--receive-buffer", type=int, default=rmem_max(),
                    help="socket receive buffer asked by both collectors (default: net.core.rmem_max)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per collector and rate; a rate holds only if every run is zero-loss (default 1)")
    ap.add_argument("--keep-going", action="store_true", help="run every rate even after a collector failed")
    ap.add_argument("--quick", action="store_true", help="one short step per collector (smoke check)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--nfacctd", default=shutil.which("nfacctd") or "/usr/sbin/nfacctd")
    ap.add_argument("--goflow2", default=None, help="goflow2 binary (default: built from its Go module into .cache/)")
    ap.add_argument("--workdir", default=None, help="where step directories go (default: a new temp dir, removed)")
    args = ap.parse_args(argv)
    for c in args.collectors:
        if c not in RUNNERS:
            ap.error(f"--collectors: unknown collector {c!r} (known: {', '.join(RUNNERS)})")
    if set(args.collectors) & set(NFACCTD_AGGREGATES) and not os.access(args.nfacctd, os.X_OK):
        ap.error(f"--nfacctd: {args.nfacctd} is not an executable (apt-get install pmacct)")
    if args.quick:
        args.rates, args.duration = [100_000], 3.0
    if args.duration <= 0 or args.repeat <= 0:
        ap.error("--duration and --repeat must be > 0")
    return args


def interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C: the finally below stops every collector by PID, and the
    # steps done so far are still reported.
    signal.signal(signal.SIGTERM, interrupt)
    children = Children()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="flowenricher-ingest-"))
    work.mkdir(parents=True, exist_ok=True)
    steps: list[Step] = []
    active = list(args.collectors)
    print(f"ingest: {args.protocol}, {args.duration:g} s per step, sender {args.sender}, "
          f"receive buffer asked {args.receive_buffer:,} bytes, {os.cpu_count()} CPUs, work dir {work}")
    try:
        for rate in args.rates:
            if not active:
                break
            capture = None
            if args.sender == "replay":
                capture = build_capture(work / f"stream-{rate}.pcap", args.protocol, rate, args.duration, args.seed)
            for name in list(active):
                for _ in range(args.repeat):
                    step = RUNNERS[name](name, rate, args, work, children, capture)
                    steps.append(step)
                    _print_step(step)
                    if step.verdict != "ok":
                        break
                if step.verdict != "ok" and not args.keep_going:
                    active.remove(name)
            if capture is not None:
                capture.path.unlink()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        children.stop_all()
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print_table(steps)
    print()
    print(summary(steps, args))
    return 0 if steps else 1


def _secs(value: float | None) -> str:
    return f"{value:.2f} s" if value is not None else "-"


def _print_step(step: Step) -> None:
    s = step.sent
    sent = f"sent {s.flows:,} flows in {s.seconds:.1f} s ({s.rate:,.0f}/s)" if s else "not sent"
    kept = f"kept {step.kept:,}" if step.kept is not None else "kept ?"
    print(f"{step.collector:12s} {step.rate:>9,}/s: {sent}, {kept}, kernel drops {step.kernel_drops}, "
          f"decoder drops {step.decoder_drops}, lag {_secs(step.lag_s)}, peak RSS {step.peak_rss_kb // 1024} MB, "
          f"receive buffers {step.recv_buffer} -> {step.verdict}")
    print(f"    collector: {step.command}")
    if step.memory:
        print(f"    peak RSS per process (VmHWM): {step.memory}")
    if s:
        print(f"    sender:    {s.command}")
    for note in step.notes:
        print(f"    note: {note}")
    sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())
