"""Long fuzz run of the decoders: millions of mutated and random datagrams, on every core,
and not one exception may escape `FlowDecoder.decode`.

    python bench/fuzz.py [--datagrams 3000000] [--processes 2]
    python bench/fuzz.py --reproduce SEED/EPOCH:CALL    # rerun a failure: traceback, shrunk input
    python bench/fuzz.py --structured --datagrams 1000000 [--processes 2]

Seeds are valid datagrams: every capture in tests/data/pcaps (real NetFlow v5/v9, IPFIX
and sFlow exporters) plus the generator's v5, v9, IPFIX and sFlow packets.  Most inputs
are a seed through the shared mutator (decode/mutate.py: truncation, byte flips, inflated
lengths and counts, zeroed fields, duplication; the CI test uses the same one); the rest
are random bytes, half of them behind a valid version field so that they reach a
decoder rather than stopping at the dispatch ("bad_version").

The run is cut into epochs of `--epoch` inputs, spread over the worker processes.  An
epoch starts from a decoder primed with every seed's templates (so mutated data sets are
parsed, not just held), draws its inputs from a generator seeded with "SEED/EPOCH", and
feeds them `--batch` at a time, as a worker does.  Each call is checked beyond "did not
raise": the datagram counter grows by the datagrams given and every column has the
batch's length.  After a failure the epoch goes on with a freshly primed decoder, so one
frequent bug does not hide the rest; `--reproduce` replays an epoch the same way, which
rebuilds the decoder's exact state (templates learnt from mutated template packets
included) before the failing call.

A check counts an exception the decoder contained (`decode_error`) as a failure too: the
decoder no longer lets one escape, so containment must not hide bugs.

`--structured` composes NetFlow v9 and IPFIX exports instead of mutating seeds: the
hypothesis strategies of tests/support/netflow_strategies.py (the CI test's, run
longer), each composition on a fresh decoder under the same checks as the CI test.
There `--datagrams` and `--epoch` count compositions (1 to 4 datagrams each; the report
gives the datagrams).  Hypothesis shrinks a failure to a small composition and prints it.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import logging
import multiprocessing as mp
import random
import sys
import time
import traceback
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from appliance.flowenricher.decode.dispatch import Datagram, FlowDecoder
from appliance.flowenricher.decode.mutate import mutate_datagram
from appliance.flowenricher.decode.stats import DATAGRAMS, DECODE_ERROR, OPTIONS_RECORDS, RECORDS
from appliance.flowenricher.generate.encode import build_packets
from appliance.flowenricher.pcap import read_udp

PCAPS = Path(__file__).resolve().parent.parent / "tests" / "data" / "pcaps"
EXPORTER = "192.0.2.1"
VERSION_PREFIXES = (b"\x00\x05", b"\x00\x09", b"\x00\x0a", b"\x00\x00\x00\x05")
EPOCH_TIMEOUT_S = 300.0  # no epoch done for this long: reported as a hang (a decoder loop that never ends)
REPRODUCE_SHOWN = 3  # reproduce commands printed per failure signature

Task = tuple[str, int, int, float]  # epoch name, inputs, datagrams per decode call, random share


def load_seeds() -> list[bytes]:
    """Valid datagrams of every protocol, templates before the data that needs them."""
    seeds = [d.payload for p in sorted(PCAPS.glob("*.pcap")) for d in read_udp(p)]
    for protocol in ("v5", "v9", "ipfix", "sflow"):
        seeds.extend(build_packets(protocol, 240, records_per_packet=None, seed=7, now_ms=1_795_000_000_000))
    return seeds


@dataclass(frozen=True)
class Failure:
    """A decode call that raised or broke a check: where, and what."""

    epoch: str
    call: int
    signature: str  # exception type and the innermost line of our code: groups one bug's hits
    message: str


@dataclass
class EpochResult:
    datagrams: int = 0
    records: int = 0
    options_records: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, decoder: FlowDecoder, base: dict[str, dict[str, dict[str, int]]]) -> None:
        """Add what `decoder` counted since `base` (its primed state)."""
        stats = decoder.stats
        self.records += stats.total(RECORDS) - _base_total(base, RECORDS)
        self.options_records += stats.total(OPTIONS_RECORDS) - _base_total(base, OPTIONS_RECORDS)
        self.dropped.update(stats.total_dropped())
        self.dropped.subtract(Counter({r: v for c in base["dropped"].values() for r, v in c.items()}))


def _base_total(base: dict[str, dict[str, dict[str, int]]], name: str) -> int:
    return sum(c.get(name, 0) for c in base["counts"].values())


def primed_decoder(seeds: Sequence[bytes]) -> FlowDecoder:
    decoder = FlowDecoder(hold_max_sets=64)
    decoder.decode([(p, EXPORTER, 0) for p in seeds])
    return decoder


def one_input(seeds: Sequence[bytes], rnd: random.Random, random_share: float) -> bytes:
    if rnd.random() >= random_share:
        return mutate_datagram(seeds[rnd.randrange(len(seeds))], rnd)
    body = rnd.randbytes(rnd.randrange(1500))
    return rnd.choice(VERSION_PREFIXES) + body if rnd.random() < 0.5 else body


def epoch_calls(task: Task, seeds: Sequence[bytes]) -> Iterator[list[Datagram]]:
    """The epoch's decode calls, in order: the same lists on every run and machine (a str
    seed is hashed the same way everywhere)."""
    epoch, n, batch_size, random_share = task
    rnd = random.Random(epoch)
    for start in range(0, n, batch_size):
        yield [(one_input(seeds, rnd, random_share), EXPORTER, 0) for _ in range(min(batch_size, n - start))]


def check(decoder: FlowDecoder, call: Sequence[Datagram]) -> None:
    """One decode call and the decoder's contract beyond "does not raise"."""
    before = decoder.stats.total(DATAGRAMS)
    errors = decoder.stats.total_dropped()[DECODE_ERROR]
    out = decoder.decode(call)
    after = decoder.stats.total(DATAGRAMS)
    if after != before + len(call):
        raise AssertionError(f"datagram counter grew by {after - before}, {len(call)} datagrams given")
    if decoder.stats.total_dropped()[DECODE_ERROR] != errors:
        raise AssertionError("the decoder contained an exception (decode_error): a bug to fix")
    for name in out.set_columns():
        if len(out[name]) != out.n:
            raise AssertionError(f"column {name} has {len(out[name])} rows, batch has {out.n}")


def signature(err: BaseException) -> str:
    """`OverflowError at decode/netflow.py:524`: the innermost frame in the package."""
    frames = [f for f in traceback.extract_tb(err.__traceback__) if "/appliance/" in f.filename]
    where = f" at {frames[-1].filename.split('/appliance/flowenricher/')[-1]}:{frames[-1].lineno}" if frames else ""
    return f"{type(err).__name__}{where}"


_SEEDS: list[bytes] = []


def _init_worker(seeds: list[bytes]) -> None:
    global _SEEDS
    _SEEDS = seeds
    # Each drop reason is logged once per 10 s per decoder: a new decoder per epoch would
    # print thousands of lines.  The counts are in the report.
    logging.getLogger("appliance").setLevel(logging.ERROR)


def run_epoch(task: Task) -> EpochResult:
    """Decode one epoch's inputs; a failure is recorded and the epoch goes on afresh."""
    started = time.perf_counter()
    result = EpochResult()
    decoder = primed_decoder(_SEEDS)
    base = decoder.stats.snapshot()
    for index, call in enumerate(epoch_calls(task, _SEEDS)):
        result.datagrams += len(call)
        try:
            check(decoder, call)
        except Exception as err:  # the point of the run: anything escaping is a finding
            result.failures.append(Failure(task[0], index, signature(err), f"{type(err).__name__}: {err}"))
            result.count(decoder, base)
            decoder = primed_decoder(_SEEDS)
            base = decoder.stats.snapshot()
    decoder.finish()  # held sets are dropped now and counted (template_missing)
    result.count(decoder, base)
    result.seconds = time.perf_counter() - started
    return result


def run_structured_epoch(task: Task) -> EpochResult:
    """Compose the epoch's count of exports (each 1 to 4 datagrams) with hypothesis;
    each is decoded twice, in order and reversed."""
    from hypothesis import HealthCheck, Phase, given, seed, settings

    sys.path.insert(0, str(PCAPS.parents[1]))  # tests/ (no package): the strategies the CI test uses
    strategies = importlib.import_module("support.netflow_strategies")

    epoch, n, _, _ = task
    started = time.perf_counter()
    result = EpochResult()

    @seed(int.from_bytes(epoch.encode(), "big") % 2**32)
    @settings(max_examples=n, deadline=None, database=None,
              phases=[Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck))
    @given(strategies.exports)
    def one(composed: Any) -> None:
        for stats in strategies.check_composed(composed):  # in order, then reversed
            result.datagrams += stats.total(DATAGRAMS)
            result.records += stats.total(RECORDS)
            result.options_records += stats.total(OPTIONS_RECORDS)
            result.dropped.update(stats.total_dropped())

    try:
        one()
    except Exception as err:  # the point of the run: a finding, shrunk by hypothesis
        note = "".join(getattr(err, "__notes__", []))[-2000:]
        result.failures.append(Failure(epoch, 0, signature(err), f"{type(err).__name__}: {err}\n{note}"))
    result.seconds = time.perf_counter() - started
    return result


def reproduce(spec: str, args: argparse.Namespace, seeds: list[bytes]) -> int:
    """Replay epoch SEED/EPOCH as the run did, up to the first failure at or after CALL;
    print its traceback, then shrink the call: drop each datagram in turn while the
    failure stays (on copies of the decoder as it was before the call)."""
    epoch, _, call_text = spec.partition(":")
    target = int(call_text) if call_text.isdigit() else 0
    _init_worker(seeds)
    decoder = primed_decoder(seeds)
    for index, call in enumerate(epoch_calls((epoch, args.epoch, args.batch, args.random_share), seeds)):
        state = copy.deepcopy(decoder) if index >= target else decoder
        try:
            check(decoder, call)
            continue
        except Exception:
            if index < target:  # an earlier failure: the run went on with a fresh decoder
                decoder = primed_decoder(seeds)
                continue
            print(f"epoch {epoch}, decode call {index} ({len(call)} datagrams):")
            traceback.print_exc(file=sys.stdout)
        needed = list(call)
        for position in reversed(range(len(needed))):
            if len(needed) > 1 and _fails(state, needed[:position] + needed[position + 1:]):
                del needed[position]
        print(f"{len(needed)} datagram(s) of the call still fail, fed after the epoch's earlier calls (hex):")
        for datagram in needed:
            print(" ", datagram[0].hex())
        return 1
    print(f"epoch {epoch}: no failure from call {target} on (--epoch, --batch and --random-share must match the run)")
    return 0


def _fails(state: FlowDecoder, call: list[Datagram]) -> bool:
    try:
        check(copy.deepcopy(state), call)
    except Exception:
        return True
    return False


def report(total: EpochResult, wall: float, args: argparse.Namespace) -> int:
    print(f"{total.datagrams:,} datagrams in {wall:.1f} s: {total.datagrams / wall:,.0f} datagrams/s over "
          f"{args.processes} processes ({total.datagrams / total.seconds:,.0f}/s per process)")
    print(f"records decoded {total.records:,}, options records {total.options_records:,}")
    print()
    print("| drop reason | count |")
    print("|---|---|")
    for reason, value in total.dropped.most_common():
        print(f"| {reason} | {value:,} |")
    print()
    if not total.failures:
        print("no exception escaped the decoder; every call kept its counters and column lengths consistent")
        return 0
    by_signature: defaultdict[str, list[Failure]] = defaultdict(list)
    for f in sorted(total.failures, key=lambda f: (int(f.epoch.rsplit("/", 1)[1]), f.call)):
        by_signature[f.signature].append(f)
    print(f"FAILED: {len(total.failures)} decode calls raised or broke a check, {len(by_signature)} distinct:")
    for sig, hits in sorted(by_signature.items(), key=lambda kv: -len(kv[1])):
        print(f"  {sig}: {len(hits)} calls, e.g. {hits[0].message}")
        for f in hits[:REPRODUCE_SHOWN]:
            print(f"    python bench/fuzz.py --reproduce {f.epoch}:{f.call} --epoch {args.epoch} --batch {args.batch} "
                  f"--random-share {args.random_share}")
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datagrams", type=int, default=3_000_000, help="inputs in total (default 3,000,000)")
    ap.add_argument("--processes", type=int, default=mp.cpu_count(), help="worker processes (default: CPUs)")
    ap.add_argument("--epoch", type=int, default=20_000, help="inputs per epoch (default 20,000)")
    ap.add_argument("--batch", type=int, default=32, help="datagrams per decode call (default 32)")
    ap.add_argument("--random-share", type=float, default=0.05, help="share of random datagrams (default 0.05)")
    ap.add_argument("--seed", type=int, default=1, help="run seed; epoch k draws from 'SEED/k'")
    ap.add_argument("--reproduce", metavar="SEED/EPOCH:CALL", help="replay a failure named in a report")
    ap.add_argument("--structured", action="store_true",
                    help="compose v9/IPFIX exports (hypothesis) instead of mutating seeds")
    args = ap.parse_args(argv)
    if min(args.datagrams, args.processes, args.epoch, args.batch) <= 0 or not 0 <= args.random_share <= 1:
        ap.error("--datagrams, --processes, --epoch, --batch must be > 0 and --random-share in [0, 1]")
    seeds = [] if args.structured else load_seeds()
    if args.reproduce:
        return reproduce(args.reproduce, args, seeds)

    epochs: list[Task] = [(f"{args.seed}/{k}", min(args.epoch, args.datagrams - k * args.epoch), args.batch,
                           args.random_share) for k in range((args.datagrams + args.epoch - 1) // args.epoch)]
    if args.structured:
        print(f"fuzz: {args.datagrams:,} composed datagrams in {len(epochs)} epochs of {args.epoch:,}, "
              f"{args.processes} processes")
    else:
        print(f"fuzz: {args.datagrams:,} datagrams from {len(seeds)} seeds in {len(epochs)} epochs of "
              f"{args.epoch:,}, {args.processes} processes, {args.batch} per decode call, "
              f"{args.random_share:.0%} random")
    sys.stdout.flush()
    total = EpochResult()
    started = time.perf_counter()
    with mp.get_context("spawn").Pool(args.processes, initializer=_init_worker, initargs=(seeds,)) as pool:
        results = pool.imap_unordered(run_structured_epoch if args.structured else run_epoch, epochs)
        for _ in epochs:
            try:
                r = results.next(timeout=EPOCH_TIMEOUT_S)
            except mp.TimeoutError:
                print(f"HANG: no epoch finished within {EPOCH_TIMEOUT_S:.0f} s: a decoder may loop forever "
                      f"(replay the unfinished epochs with --reproduce SEED/EPOCH to find which)")
                pool.terminate()
                return 2
            total.datagrams += r.datagrams
            total.records += r.records
            total.options_records += r.options_records
            total.dropped.update(r.dropped)
            total.failures.extend(r.failures)
            total.seconds += r.seconds
    return report(total, time.perf_counter() - started, args)


if __name__ == "__main__":
    raise SystemExit(main())
