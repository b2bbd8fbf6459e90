"""The core's commands of the `flowenricher` command line (DESIGN §2): run, decode, replay,
generate, validate, sql, lookup, spool, blackhole, backtest.

Each subcommand is a thin shell over a module that owns the work; this file only parses
arguments, wires settings and maps errors to exit codes (2: bad input, 1: failure).  The
control plane's commands (`api`, `token`) and the API inside `run` come from above the
core, as an :class:`Extension` (appliance/cli.py, the console script): the core never
imports the API.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import select
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import CaptureError, ConfigError, FlowEnricherError
from .logs import configure_logging

if TYPE_CHECKING:
    from typing import TypeAlias

    from .config import Settings
    from .wiring import RuntimeExtension

    Subcommands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]
    """Where an Extension adds its subcommands (build_parser's ``add_subparsers``)."""

log = logging.getLogger("flowenricher")

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
DESCRIPTION = """\
Collect NetFlow v5/v9, IPFIX and sFlow, enrich the flows (AS, AS path, country, interface
names, reverse DNS) and store them in ClickHouse; detect scans and floods and blackhole
them over BGP.  Exit status: 0 done, 1 failed, 2 bad input (the message names the file
and the place)."""


Command = Callable[[argparse.Namespace], int]
"""A subcommand's handler: the parsed arguments -> the exit status."""


@dataclass(frozen=True)
class Extension:
    """What a package above the core adds to `flowenricher`: subcommands (each parser
    sets ``handler``, a :data:`Command`, with ``set_defaults``) and parts of the running
    collector (wiring.RuntimeExtension, called by `run`)."""

    add_commands: Callable[[Subcommands], None]
    runtime: tuple[RuntimeExtension, ...] = ()


def add_option(parser: argparse.ArgumentParser, name: str, **kw: object) -> None:
    """An option spelled both ways: `-config` like the original Go tool, and `--config`."""
    parser.add_argument(f"-{name}", f"--{name}", dest=name.replace("-", "_"), **kw)  # type: ignore[arg-type]


def build_parser(extension: Extension | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowenricher", description=DESCRIPTION)
    parser.set_defaults(runtime_extensions=extension.runtime if extension is not None else ())
    parser.add_argument("--log-level", default=None, help="debug, info, warning, error (default: config's)")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="receive, decode and store flows until stopped")
    add_option(run, "config", default=None, help="config.yaml (default: built-in embedded defaults)")
    add_option(run, "rules", default=None, help="detection.yml (default: detection.rules_config)")

    dec = sub.add_parser("decode", help="decode captures offline")
    dec.add_argument("files", nargs="+", help="pcap or pcapng files; templates carry across files in this order")
    dec.add_argument("--format", choices=("jsonl", "table", "summary"), default="jsonl")

    rep = sub.add_parser("replay", help="send the UDP payloads of a capture to a collector")
    rep.add_argument("file", help="a pcap or pcapng capture")
    rep.add_argument("--to", required=True, metavar="HOST:PORT")
    rep.add_argument("--rate", type=float, default=None, metavar="PPS", help="packets/s (default: as fast as possible)")
    _add_source_port(rep)

    gen = sub.add_parser("generate", help="send synthetic flow export of a small AS")
    gen.add_argument("--to", required=True, metavar="HOST:PORT")
    gen.add_argument("--fps", type=int, default=10_000, help="flows per second")
    gen.add_argument("--duration", type=float, default=10.0, help="seconds")
    gen.add_argument("--protocol", choices=("v5", "v9", "ipfix", "sflow"), default="ipfix")
    gen.add_argument("--scenario", default="normal",
                     help="normal, scan, flood, horizontal_scan, vertical_scan, slow_scan, ssh_bruteforce, "
                          "rdp_bruteforce, bruteforce, syn_flood, udp_flood, attacks, low_and_slow_scan, benign "
                          "(web, DNS, NTP, backup, video, speed test and gaming mixes; each alone as benign_web ...) "
                          "or evaluation (all of them)")
    gen.add_argument("--seed", type=int, default=1)
    _add_source_port(gen)

    val = sub.add_parser("validate", help="validate config and rules against the JSON Schemas")
    add_option(val, "config", default=None)
    add_option(val, "rules", default=None)

    sql = sub.add_parser("sql", help="run a query on the configured store")
    sql.add_argument("query")
    add_option(sql, "config", default=None)
    sql.add_argument("--format", choices=("tsv", "json"), default="tsv")

    spool = sub.add_parser("spool", help="the store's spool: list blocks waiting or rejected, requeue rejected ones")
    spool_sub = spool.add_subparsers(dest="spool_command", required=True)
    spool_list = spool_sub.add_parser("list", help="queued and rejected blocks: rows, age, size, reason")
    add_option(spool_list, "config", default=None)
    spool_requeue = spool_sub.add_parser(
        "requeue", help="put rejected blocks back in the queue (once their cause is fixed); safe while running"
    )
    add_option(spool_requeue, "config", default=None)
    which = spool_requeue.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="every rejected block")
    which.add_argument("names", nargs="*", default=[], help="file names as `spool list` shows them")

    bh = sub.add_parser("blackhole", help="blackholes in the state DB: list; expire (withdraw what is due, "
                                          "also while `run` is down: the systemd timer runs it every minute)")
    bh_sub = bh.add_subparsers(dest="blackhole_command", required=True)
    bh_list = bh_sub.add_parser("list", help="active blackholes (and recent failures): a table or JSON")
    add_option(bh_list, "config", default=None)
    bh_list.add_argument("--format", choices=("text", "json"), default="text")
    bh_expire = bh_sub.add_parser("expire", help="withdraw expired blackholes from GoBGP, once even beside `run`")
    add_option(bh_expire, "config", default=None)

    bt = sub.add_parser("backtest", help="replay stored flows of a time range through the detection rules "
                                         "(blackholes in dry run): detections, tuning, two rules files compared")
    add_option(bt, "config", default=None)
    add_option(bt, "rules", required=True, help="detection.yml to backtest (A)")
    add_option(bt, "from", required=True, metavar="TIME", help="start, ISO 8601 (UTC unless it says) or unix seconds")
    add_option(bt, "to", required=True, metavar="TIME", help="end (excluded), as --from")
    bt.add_argument("--format", choices=("table", "jsonl"), default="table")
    bt.add_argument("--tune", type=int, default=None, metavar="N",
                    help="per rule, the distribution of what it thresholds and the threshold that fires on at "
                         "most N keys a day")
    bt.add_argument("--compare", default=None, metavar="B.yml", help="a second rules file, replayed beside --rules")
    bt.add_argument("--chunk", type=int, default=10, metavar="S", help="seconds of flows read per query")
    bt.add_argument("--lag", type=int, default=3600, metavar="S",
                    help="longest a flow starts before it is received (longer ones are counted, not replayed)")
    bt.add_argument("--lead", type=int, default=600, metavar="S",
                    help="longest an exporter's clock runs ahead of the collector's")

    look = sub.add_parser("lookup", help="prefix, origin AS and org, AS path, next hop, country/city, PTR of an IP")
    look.add_argument("ip")
    add_option(look, "config", default=None)
    look.add_argument("--format", choices=("text", "json"), default="text")
    if extension is not None:
        extension.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None, extension: Extension | None = None) -> int:
    """The command line, with `extension`'s commands (appliance/cli.py).  A reader that
    goes away (`flowenricher decode x.pcap | head`) ends any command quietly: exit 0,
    nothing on stderr, so scripts under `set -o pipefail` go on.  The final flush is made
    here so that it is covered too; an error already on its way out is left to show, not
    replaced by the flush's."""
    try:
        try:
            code = _run_command(argv, extension)
        except SystemExit:  # argparse exits from inside parse_args after printing --help
            sys.stdout.flush()
            raise
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        if not _stdout_reader_gone():
            raise
        # Python flushes stdout again at exit: point it at /dev/null so that flush succeeds.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe nobody reads any more (poll reports POLLERR on its write
    end), so a BrokenPipeError from a socket is not mistaken for the reader leaving."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, OSError):
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


def _run_command(argv: Sequence[str] | None, extension: Extension | None) -> int:
    args = build_parser(extension).parse_args(argv)
    configure_logging(args.log_level or "info")
    try:
        handler: Command = getattr(args, "handler", None) or globals()[f"_cmd_{args.command}"]
        code = handler(args)
        return code
    except ConfigError as err:
        for line in err.problems:
            print(line, file=sys.stderr)
        return EXIT_BAD_INPUT
    except FlowEnricherError as err:
        print(f"flowenricher {args.command}: {err}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED


def load_settings(path: str | None) -> Settings:
    """The config file's settings, else the built-in defaults."""
    from .config import Settings, load_config

    return load_config(path) if path else Settings.default()


def _cmd_validate(args: argparse.Namespace) -> int:
    from .config import checked_at_start, load_config, load_rules, validation_problems

    if not args.config and not args.rules:
        print("flowenricher validate: give --config and/or --rules", file=sys.stderr)
        return EXIT_BAD_INPUT
    settings, problems = validation_problems(
        (lambda: load_config(args.config)) if args.config else None,
        (lambda window: load_rules(args.rules, max_window_s=window)) if args.rules else None)
    notes = checked_at_start(settings) if settings is not None else []
    for line in problems:
        print(line, file=sys.stderr)
    if not problems:
        print("valid:", ", ".join(p for p in (args.config, args.rules) if p))
        for note in notes:
            print(f"checked when run starts, not here: {args.config}: {note}")
    return EXIT_BAD_INPUT if problems else EXIT_OK


def rules_path_of(args: argparse.Namespace, cfg: Settings) -> Path | None:
    """--rules, else the config's detection.rules_config when detection is enabled."""
    rules_path = args.rules or (cfg.detection.rules_path if cfg.detection.enabled else None)
    return Path(rules_path) if rules_path is not None else None


def _cmd_run(args: argparse.Namespace) -> int:
    from .config import load_rules, warn_in_dev_mode
    from .service import run_service
    from .wiring import runtime_factory, service_settings

    cfg = load_settings(args.config)
    if args.log_level is None:
        logging.getLogger().setLevel(cfg.log_level.upper())
    # Default secrets are refused (warned about in dev mode) whether this process serves
    # the API or not: the API's own check only runs where the API does.
    warn_in_dev_mode(cfg, args.config or "the default config")
    rules_path = rules_path_of(args, cfg)
    if rules_path is not None and not rules_path.exists():
        print(f"rules file {rules_path} does not exist", file=sys.stderr)
        return EXIT_BAD_INPUT
    if rules_path is not None:  # refused here, as `validate` refuses it, before anything starts
        load_rules(rules_path, max_window_s=cfg.detection.flow_cache_max_window_s)
    factory = runtime_factory(cfg, rules_path, Path(args.config) if args.config else None, args.runtime_extensions)
    return run_service(service_settings(cfg), factory)


def _cmd_decode(args: argparse.Namespace) -> int:
    """Captures are read and decoded a chunk of the file at a time (pcap.read_udp_batches),
    so memory stays flat on any size and `decode big.pcap | head` stops early (main()
    ends it quietly)."""
    from .decode.dispatch import FlowDecoder
    from .pcap import read_udp_batches
    from .report import RowPrinter, print_summary

    decoder = FlowDecoder()
    total = 0
    out = sys.stdout
    rows = RowPrinter(args.format, out)
    try:
        for path in args.files:
            for datagrams in read_udp_batches(path):
                batch = decoder.decode(datagrams.for_decoder())
                total += batch.n
                if args.format != "summary":
                    rows.print(batch)
        decoder.finish()
        if args.format == "summary":
            print_summary(decoder.stats, total, out)
        out.flush()
    except CaptureError as err:  # already "FILE: what is wrong [at byte N]"
        out.flush()
        print(f"flowenricher decode: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return EXIT_OK


def _add_source_port(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--source-port", type=_source_port, default=None, metavar="PORT",
                        help="send from this UDP port, as a router exports from one (default: any free port)")


def _source_port(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port from 1 to 65535")
    return int(text)


def _cmd_replay(args: argparse.Namespace) -> int:
    from .generate.sender import replay

    try:
        result = replay(args.file, args.to, rate_pps=args.rate, source_port=args.source_port)
    except CaptureError as err:  # a bad capture is bad input, as for decode
        print(f"flowenricher replay: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(json.dumps(result if isinstance(result, dict) else vars(result), default=str))
    return EXIT_OK


def _cmd_generate(args: argparse.Namespace) -> int:
    from .generate.sender import generate

    result = generate(args.to, fps=args.fps, duration=args.duration, protocol=args.protocol,
                      scenario=args.scenario, seed=args.seed, source_port=args.source_port)
    print(json.dumps(result if isinstance(result, dict) else vars(result), default=str))
    return EXIT_OK


def _cmd_sql(args: argparse.Namespace) -> int:
    from .control import query_running
    from .storage import open_store
    from .wiring import store_settings

    cfg = load_settings(args.config)
    store_cfg = store_settings(cfg)
    fmt = "JSONEachRow" if args.format == "json" else "TSVWithNames"
    result = query_running(store_cfg.path, args.query, fmt) if store_cfg.embedded else None
    if result is None:
        store = open_store(store_cfg)
        try:
            result = store.query(args.query, fmt)
        finally:
            store.close()
    sys.stdout.buffer.write(result)
    return EXIT_OK


def parse_time(text: str, option: str) -> int:
    """Unix seconds from ISO 8601 (UTC when it names no zone) or a number of seconds;
    ConfigError naming the option otherwise."""
    from datetime import UTC, datetime

    try:
        return int(float(text))
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError([f"{option}: {text!r} is not a time (ISO 8601 such as 2026-12-01T00:00:00Z, "
                           "or unix seconds)"]) from None
    return int((when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp())


def _cmd_backtest(args: argparse.Namespace) -> int:
    """The stored flows of --from..--to through the rules (backtest.py); the embedded store
    is read through the running service when there is one (it owns the directory)."""
    from .backtest import BacktestError, ReplayWindow, render_table, run_backtest, store_query
    from .detect.rules import load_rule_set
    from .wiring import store_settings

    cfg = load_settings(args.config)
    max_window = cfg.detection.flow_cache_max_window_s
    rule_sets = [(args.rules, load_rule_set(args.rules, max_window_s=max_window))]
    if args.compare:
        rule_sets.append((args.compare, load_rule_set(args.compare, max_window_s=max_window)))
    try:
        window = ReplayWindow(parse_time(getattr(args, "from"), "--from"), parse_time(args.to, "--to"), chunk_s=args.chunk,
                              lag_s=args.lag, lead_s=args.lead)
    except BacktestError as err:  # a bad range is bad input (exit 2)
        raise ConfigError([f"backtest: {err}"]) from err
    with store_query(cfg) as query:
        report = run_backtest(query, store_settings(cfg).qualified_table, cfg, rule_sets, window,
                              tune_per_day=args.tune)
    if args.format == "jsonl":
        for line in report.to_lines():
            print(json.dumps(line, default=str))
    else:
        print(render_table(report))
    return EXIT_OK


def _cmd_lookup(args: argparse.Namespace) -> int:
    import json

    from .control import lookup_running
    from .lookup import render
    from .wiring import standalone_lookup

    cfg = load_settings(args.config)
    try:
        info = lookup_running(str(cfg.storage.path), args.ip)
        if info is None:
            with standalone_lookup(cfg) as lookup:
                info = lookup(args.ip)
    except ValueError as err:
        print(err, file=sys.stderr)
        return EXIT_BAD_INPUT
    print(json.dumps(info, indent=2, default=str) if args.format == "json" else render(info))
    return EXIT_OK


def _cmd_spool(args: argparse.Namespace) -> int:
    import time

    from .storage.spool import list_files, requeue
    from .wiring import store_settings

    directory = store_settings(load_settings(args.config)).spool_path
    if args.spool_command == "requeue":
        moved = requeue(directory, None if args.all else args.names)
        print(f"requeued {len(moved)} blocks into {directory}" + "".join(f"\n  {n}" for n in moved))
        return EXIT_OK
    files = list_files(directory)
    now = time.time()
    print(f"{'STATE':8}  {'ROWS':>9}  {'AGE':>9}  {'BYTES':>11}  NAME  REASON")
    for f in files:
        print(f"{f.state:8}  {f.rows:9d}  {now - f.created:8.0f}s  {f.size:11d}  {f.name}  {f.reason}")
    queued = [f for f in files if f.state == "queued"]
    print(f"{directory}: {len(queued)} queued ({sum(f.rows for f in queued)} rows), "
          f"{len(files) - len(queued)} rejected ({sum(f.rows for f in files if f.state != 'queued')} rows)")
    return EXIT_OK


def _cmd_blackhole(args: argparse.Namespace) -> int:
    """`blackhole list` reads the state DB; `blackhole expire` withdraws what is due
    through GoBGP (each row claimed first, so it is safe beside a running collector),
    then makes GoBGP hold exactly the active set; exit 1 while GoBGP is unreachable, so
    the timer's failures show in systemctl."""
    import json
    import time

    from .blackhole.state import StateDB, recent_failures
    from .common.private import private_dir

    cfg = load_settings(args.config)
    private_dir(cfg.storage.path)
    state = StateDB(cfg.storage.state_db)
    try:
        if args.blackhole_command == "list":
            now = time.time()
            rows = state.active()
            rows += recent_failures(state.history(), rows, now)
            if args.format == "json":
                print(json.dumps([{"prefix": b.prefix, "state": b.state, "next_hop": b.next_hop,
                                   "communities": list(b.communities), "source": b.source, "rule": b.rule,
                                   "pool": b.role, "created_at": b.created_at, "expires_at": b.expires_at,
                                   "reason": b.failed_reason} for b in rows], indent=2))
                return EXIT_OK
            print(f"{'PREFIX':43}  {'STATE':9}  {'EXPIRES IN':>10}  {'SOURCE':6}  {'RULE':20}  NEXT HOP / REASON")
            for b in rows:
                left = "never" if b.expires_at is None else f"{max(0.0, b.expires_at - now):.0f}s"
                print(f"{b.prefix:43}  {b.state:9}  {left:>10}  {b.source:6}  {b.rule[:20]:20}  "
                      f"{b.failed_reason or b.next_hop + ' ' + ','.join(b.communities)}")
            return EXIT_OK
        from .blackhole.announcer import GoBgpAnnouncer
        from .wiring import blackhole_manager

        announcer = GoBgpAnnouncer(cfg.bgp.gobgp.api)
        manager = blackhole_manager(cfg, state, announcer, None)
        try:
            expired = manager.expire()
            manager.reconcile()
            stuck = manager.pending_withdrawals()
        finally:
            manager.close()
            announcer.close()
        print(f"expired {len(expired)}" + "".join(f"\n  {b.prefix} ({b.rule or b.source})" for b in expired))
        if stuck:
            print(f"GoBGP ({cfg.bgp.gobgp.api}) did not take the withdrawal of: {', '.join(stuck)}; "
                  "the next run (or `flowenricher run`) retries", file=sys.stderr)
            return EXIT_FAILED
        return EXIT_OK
    finally:
        state.close()


if __name__ == "__main__":
    raise SystemExit(main())
