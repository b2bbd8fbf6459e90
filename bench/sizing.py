"""Sizing: RAM and CPU of flowenricher and gobgpd by table size and flow rate, the figures
behind docs/sizing.md and the Ansible preflight's warning.

    python bench/sizing.py [--tables 0,100k,500k,1M] [--v6-share 0.2] [--rates 0,50k,200k]
                           [--stores server,embedded] [--mode rules] [--duration 10]

As root (the BGP lab is a network namespace).  For each table size (IPv4 prefixes; IPv6
adds ``--v6-share`` of that, so 1M means 1M IPv4 + 200k IPv6):

* BIRD 2 announces bench/rib.py's synthetic table over iBGP to a fresh gobgpd (the lab of
  tests/support/bgp_lab.py, as bench/rib.py and bench/ingest_enriched.py build it).  Once
  gobgpd holds the table and is idle: its **steady RSS** with the table, and its peak
  (VmHWM) while BIRD fed it.
* For each store (``server``: the ClickHouse HTTP stand-in of
  tests/support/clickhouse_http.py, chDB in this process, so the collector holds no
  engine, as on an appliance with a ClickHouse server; ``embedded``: chDB inside the
  collector), one `flowenricher run` with bench/ingest_enriched.py's config for
  ``--mode`` (default ``rules``: GeoIP and BGP enrichment plus the detection engine with
  eleven rules, the appliance as shipped) mirrors the table from gobgpd.  gobgpd's peak
  RSS during that listing is kept (its VmHWM reset by ``clear_refs`` just before): on the
  appliance the mirror lists the table at every collector start and resync, so that peak
  is what gobgpd needs, not its steady RSS.
* The same collector then gets ``--duration`` seconds of IPFIX at each rate in turn (rate
  0: the collector idle for as long).  A window is ``ok`` when every flow was stored with
  no kernel or decoder drop, within ``--max-lag`` seconds of the sender's end, and the
  sender reached 97% of the rate (else ``LOSS``, ``behind`` or ``sender-limited``, as in
  bench/ingest.py).  Per window: the peak of the summed RSS of the
  collector's processes (sampled every 0.2 s by bench/ingest.py's sampler, from the start
  of the window until every flow is stored), the CPU seconds the collector's processes
  used per second of traffic (user + system, from the window's start until every flow is
  stored, over the traffic's seconds), the same for gobgpd, and whether every flow was
  stored with no kernel or decoder drop.  With the server store, the stand-in's CPU (this
  process's, so the figure includes the bench's own sampling) is printed apart: it is
  chDB's, not a ClickHouse server's.

The machine may be shared: each window prints the load average at its end.  A step takes
about a minute (the full table's listing about two); the default run about 25 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(HERE))

from ingest import (  # noqa: E402
    SENDER_SHORTFALL,
    Children,
    _proc_kb,
    family,
    free_port,
    interrupt,
    parse_rate,
    rmem_max,
    scrape,
    send,
    wait_for_log,
    wait_stored,
    warm_up,
)
from ingest_enriched import (  # noqa: E402
    MODES,
    EnrichedStep,
    MainSampler,
    _count_rows,
    bench_rules,
    collector_config,
    cpu_seconds,
    wait_idle,
    wait_rib,
)
from rib import synthetic_table, wait_table  # noqa: E402
from support.bgp_lab import BgpLab  # noqa: E402
from support.clickhouse_http import ClickHouseHTTPStandIn  # noqa: E402
from support.netns import TestNetwork, sweep_stale, unavailable_reason  # noqa: E402

from appliance.flowenricher.collector.receiver import kernel_drops  # noqa: E402

STORES = ("server", "embedded")


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as /proc/loadavg gives them."""
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def family_cpu(directory: Path) -> float:
    """CPU seconds used so far by every live process of a collector's family."""
    return sum(cpu_seconds(pid) for pid in family(directory))


@dataclass
class Window:
    """One rate given to a running collector."""

    rate: int
    flows: int = 0  # sent
    traffic_s: float = 0.0  # the sender's seconds (the window's length for rate 0)
    stored: int = 0  # rows the store acknowledged during the window
    kernel_drops: int = 0
    decoder_drops: int = 0
    lag_s: float | None = None
    peak_rss_mb: float = 0.0  # all the collector's processes, summed
    main_rss_mb: float = 0.0  # the storing (main) process alone
    cpu_per_s: float = 0.0  # the collector's CPU seconds per second of traffic
    gobgpd_cpu_per_s: float = 0.0
    standin_cpu_per_s: float | None = None  # server store only: chDB behind the stand-in
    loadavg: str = ""
    verdict: str = "error"


@dataclass
class Run:
    """One collector (one table, one store) through every rate."""

    v4: int
    v6: int
    store: str
    rib_load_s: float | None = None
    gobgpd_listing_peak_mb: float = 0.0  # gobgpd's peak RSS while the collector listed the table
    gobgpd_after_listing_mb: float = 0.0
    windows: list[Window] = field(default_factory=list)
    kept: int | None = None  # rows in the stopped store, against every flow sent
    notes: list[str] = field(default_factory=list)


@dataclass
class Table:
    """One table size in gobgpd, and the collectors that mirrored it."""

    v4: int
    v6: int
    gobgpd_steady_mb: float = 0.0
    gobgpd_load_peak_mb: float = 0.0  # while BIRD announced the table
    gobgpd_load_s: float | None = None  # lab start -> whole table in gobgpd
    loadavg: str = ""
    runs: list[Run] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def reset_peak(pid: int) -> None:
    """Reset `pid`'s VmHWM to its current RSS (proc(5): clear_refs, value 5; root)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def run_window(rate: int, args: argparse.Namespace, where: Path, main_pid: int, port: int, url: str,
               gobgpd_pid: int, server: bool) -> Window:
    """`rate` flows/s for `args.duration` seconds into the collector working in `where`."""
    win = Window(rate)
    before = scrape(url)
    stored0 = before.get("flowenricher_store_rows_inserted_total", 0.0)
    decoder0 = before.get("flowenricher_decoder_dropped_total", 0.0)
    kernel0 = kernel_drops({port})[port]
    memory = MainSampler(where, main_pid)
    cpu0, gobgpd0, standin0 = family_cpu(where), cpu_seconds(gobgpd_pid), time.process_time()
    memory.start()
    try:
        if rate == 0:
            started = time.monotonic()
            time.sleep(args.duration)
            win.traffic_s, win.lag_s = time.monotonic() - started, 0.0
        else:
            sent = send(f"127.0.0.1:{port}", rate, args, None)
            win.flows, win.traffic_s = sent.flows, sent.seconds
            win.lag_s = wait_stored(url, int(stored0) + sent.flows, limit_s=max(60.0, 3 * args.duration))
    finally:
        memory.finish()
    cpu = family_cpu(where) - cpu0
    win.gobgpd_cpu_per_s = (cpu_seconds(gobgpd_pid) - gobgpd0) / win.traffic_s
    if server:
        win.standin_cpu_per_s = (time.process_time() - standin0) / win.traffic_s
    win.cpu_per_s = cpu / win.traffic_s
    win.peak_rss_mb = memory.peak_rss_kb / 1024
    win.main_rss_mb = memory.main_rss_kb / 1024
    time.sleep(1.5)  # a fresh counter snapshot from every worker (they report every second)
    after = scrape(url)
    win.stored = int(after.get("flowenricher_store_rows_inserted_total", 0.0) - stored0)
    win.decoder_drops = int(after.get("flowenricher_decoder_dropped_total", 0.0) - decoder0)
    win.kernel_drops = kernel_drops({port})[port] - kernel0
    win.loadavg = load_average()
    lost = win.stored != win.flows or win.kernel_drops or win.decoder_drops
    if lost:
        win.verdict = "LOSS"
    elif win.lag_s is None or win.lag_s > args.max_lag:
        win.verdict = "behind"  # stored, but not within --max-lag of the sender's end
    elif rate and win.flows / win.traffic_s < SENDER_SHORTFALL * rate:
        win.verdict = "sender-limited"  # the rate asked was not tested
    else:
        win.verdict = "ok"
    return win


def run_collector(table: Table, store: str, args: argparse.Namespace, work: Path, children: Children,
                  lab: BgpLab, expected: int) -> Run:
    """Start a collector on `lab`'s table storing into `store`, give it every rate, stop it."""
    run = Run(table.v4, table.v6, store)
    assert lab.gobgpd is not None
    gobgpd = lab.gobgpd.pid
    port, metrics_port, api_port = (free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM),
                                    free_port(socket.SOCK_STREAM))
    where = Path(tempfile.mkdtemp(prefix=f"{store}-{table.v4}-", dir=work))
    conf = where / "config.yaml"
    server = (args.standin.port, f"sizing_{table.v4}") if store == "server" else None
    conf.write_text(json.dumps(collector_config(args.mode, where, port, metrics_port, api_port, lab.api_target,
                                                args.receive_buffer, server), indent=2))
    argv = ["flowenricher", "run", "--config", str(conf)]
    if args.mode == "rules":
        argv += ["--rules", str(bench_rules(where))]
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    log = where / "collector.log"
    reset_peak(gobgpd)
    started = time.monotonic()
    proc = children.start(argv, signal.SIGTERM, log, where)
    try:
        wait_for_log(proc, log, ["listening:"], timeout=120)
        if args.mode != "plain":
            wait_rib(proc, url, expected, timeout=args.rib_timeout)
            run.rib_load_s = time.monotonic() - started
        if wait_idle(gobgpd, timeout=300) is None:
            run.notes.append("gobgpd still busy 300 s after the listing; measured anyway")
        run.gobgpd_listing_peak_mb = _proc_kb(f"/proc/{gobgpd}/status", "VmHWM:") / 1024
        run.gobgpd_after_listing_mb = _proc_kb(f"/proc/{gobgpd}/status", "VmRSS:") / 1024
        warm_up(f"127.0.0.1:{port}", args.protocol, args.seed)
        for rate in args.rates:
            win = run_window(rate, args, where, proc.pid, port, url, gobgpd, server is not None)
            run.windows.append(win)
            print_window(run, win)
    except (RuntimeError, OSError, ValueError, TimeoutError) as err:
        run.notes.append(str(err))
    finally:
        code = children.stop(proc, timeout=120)
    if code != 0:
        run.notes.append(f"flowenricher exited with {code}")
    holder = EnrichedStep(collector="flowenricher", rate=0)
    _count_rows(conf, holder)
    run.kept = holder.kept
    run.notes.extend(holder.notes)
    sent = sum(w.flows for w in run.windows)
    if run.kept is not None and run.kept != sent:
        run.notes.append(f"the stopped store holds {run.kept:,} rows of the {sent:,} flows sent")
    shutil.rmtree(where / "data", ignore_errors=True)
    for note in run.notes:
        print(f"    note: {note}")
    sys.stdout.flush()
    return run


def measure_table(v4: int, args: argparse.Namespace, work: Path, children: Children) -> Table:
    """gobgpd with a `v4`-prefix table (and its IPv6 share), then a collector per store."""
    v6 = round(v4 * args.v6_share)
    table = Table(v4, v6)
    routes = synthetic_table(v4, v6, min(args.paths, max(1, v4 + v6)))
    expected = len(routes)
    lab = BgpLab(TestNetwork(Path(tempfile.mkdtemp(prefix=f"net-{v4}-", dir=work))))
    try:
        started = time.monotonic()
        lab.start(routes, timeout=900)
        del routes
        lab.wait_established(timeout=300)
        wait_table(lab, expected, timeout=1200)
        table.gobgpd_load_s = time.monotonic() - started
        assert lab.gobgpd is not None
        gobgpd = lab.gobgpd.pid
        if wait_idle(gobgpd, timeout=300) is None:
            table.notes.append("gobgpd still busy 300 s after BIRD's table arrived")
        time.sleep(2.0)
        table.gobgpd_steady_mb = _proc_kb(f"/proc/{gobgpd}/status", "VmRSS:") / 1024
        table.gobgpd_load_peak_mb = _proc_kb(f"/proc/{gobgpd}/status", "VmHWM:") / 1024
        table.loadavg = load_average()
        print(f"table {v4:,} IPv4 + {v6:,} IPv6: in gobgpd {table.gobgpd_load_s:.1f} s after the lab's start; "
              f"gobgpd steady RSS {table.gobgpd_steady_mb:.0f} MB, peak while BIRD fed it "
              f"{table.gobgpd_load_peak_mb:.0f} MB (load average {table.loadavg})")
        sys.stdout.flush()
        for store in args.stores:
            run = run_collector(table, store, args, work, children, lab, expected)
            table.runs.append(run)
    finally:
        lab.close()
    return table


def print_window(run: Run, win: Window) -> None:
    lag = f"{win.lag_s:.1f} s" if win.lag_s is not None else "-"
    standin = f", stand-in {win.standin_cpu_per_s:.2f}" if win.standin_cpu_per_s is not None else ""
    print(f"  {run.v4 + run.v6:>9,} prefixes {run.store:8s} {win.rate:>7,}/s: sent {win.flows:,} in "
          f"{win.traffic_s:.1f} s, stored {win.stored:,} (lag {lag}), kernel drops {win.kernel_drops}, decoder "
          f"drops {win.decoder_drops} -> {win.verdict}; peak RSS {win.peak_rss_mb:.0f} MB all processes "
          f"(main {win.main_rss_mb:.0f}); CPU s/s: flowenricher {win.cpu_per_s:.2f}, gobgpd "
          f"{win.gobgpd_cpu_per_s:.2f}{standin}; load average {win.loadavg}")
    sys.stdout.flush()


def print_tables(tables: Sequence[Table], rates: Sequence[int]) -> None:
    print("| prefixes (IPv4 + IPv6) | gobgpd steady RSS MB | gobgpd peak MB (BIRD load / collector listing) "
          "| store | RIB load s | " + " | ".join(f"{r // 1000}k/s: RSS MB, CPU s/s" for r in rates) + " |")
    print("|---|---|---|---|---|" + "---|" * len(rates))
    for t in tables:
        for run in t.runs:
            cells = []
            for rate in rates:
                win = next((w for w in run.windows if w.rate == rate), None)
                cells.append("-" if win is None else
                             f"{win.peak_rss_mb:.0f}, {win.cpu_per_s:.2f}" + ("" if win.verdict == "ok" else
                                                                             f" ({win.verdict})"))
            load = f"{run.rib_load_s:.0f}" if run.rib_load_s is not None else "-"
            print(f"| {t.v4:,} + {t.v6:,} | {t.gobgpd_steady_mb:.0f} | {t.gobgpd_load_peak_mb:.0f} / "
                  f"{run.gobgpd_listing_peak_mb:.0f} | {run.store} | {load} | " + " | ".join(cells) + " |")


def parse_sizes(text: str) -> list[int]:
    """'0,100k,1M' -> [0, 100000, 1000000] (0 allowed: no table)."""
    sizes = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        sizes.append(0 if part == "0" else parse_rate(part))
    return sizes


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tables", type=parse_sizes, default=parse_sizes("0,100k,500k,1M"),
                    help="IPv4 prefixes in each table (default 0,100k,500k,1M)")
    ap.add_argument("--v6-share", type=float, default=0.2, help="IPv6 prefixes per IPv4 prefix (default 0.2)")
    ap.add_argument("--paths", type=int, default=100_000, help="distinct AS paths in a table (default 100000)")
    ap.add_argument("--rates", type=parse_sizes, default=parse_sizes("0,50k,200k"),
                    help="flows/s given in turn to each collector (default 0,50k,200k)")
    ap.add_argument("--stores", type=lambda t: [s.strip() for s in t.split(",") if s.strip()], default=list(STORES))
    ap.add_argument("--mode", choices=MODES, default="rules",
                    help="bench/ingest_enriched.py's collector mode (default rules: enrichment + 11 rules)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of traffic per rate (default 10)")
    ap.add_argument("--protocol", choices=("ipfix", "v9"), default="ipfix")
    ap.add_argument("--receive-buffer", type=int, default=rmem_max())
    ap.add_argument("--rib-timeout", type=float, default=600.0)
    ap.add_argument("--max-lag", type=float, default=3.0,
                    help="seconds after the sender stops within which every flow must be stored (default 3)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", default=None, help="also write every figure to this JSON file")
    args = ap.parse_args(argv)
    for s in args.stores:
        if s not in STORES:
            ap.error(f"--stores: unknown store {s!r} (known: {', '.join(STORES)})")
    if args.duration <= 0 or args.v6_share < 0:
        ap.error("--duration must be > 0 and --v6-share >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    reason = unavailable_reason()
    if reason:
        sys.exit(f"bench/sizing.py: {reason}")
    signal.signal(signal.SIGTERM, interrupt)  # unwind through the finally blocks: everything stops by PID
    sweep_stale()
    work = Path(tempfile.mkdtemp(prefix="flowenricher-sizing-"))
    children = Children()
    args.standin = ClickHouseHTTPStandIn(str(work / "server")).start() if "server" in args.stores else None
    tables: list[Table] = []
    print(f"sizing: mode {args.mode}, tables {args.tables} IPv4 (+{args.v6_share:g} IPv6 each), rates {args.rates}, "
          f"{args.duration:g} s each, stores {', '.join(args.stores)}, {os.cpu_count()} CPUs, "
          f"load average {load_average()}")
    try:
        for v4 in args.tables:
            tables.append(measure_table(v4, args, work, children))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        children.stop_all()
        if args.standin is not None:
            args.standin.close()
        shutil.rmtree(work, ignore_errors=True)
    print()
    print_tables(tables, args.rates)
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(t) for t in tables], indent=1))
    return 0 if tables else 1


if __name__ == "__main__":
    raise SystemExit(main())
