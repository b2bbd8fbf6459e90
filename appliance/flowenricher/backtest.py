"""Backtests: the stored flows of a time range replayed, in the order the collector
received them, through the detection engine the service runs, with the blackhole
safety policy in dry run.  Answers "what would these rules have done?" (per rule:
detections, keys, blackholes that would have been announced or refused), "what
threshold fits my network?" (tuning) and "what changes if I replace the rules?"
(two rules files over one replay).

Replay.  The engine counts a flow at its receipt time (detect/engine.py, `flow_times`),
which is not in the flows table's sort key; the exporter's ``timestamp_start`` is.  So
the range is read in slices of ``timestamp_start`` (`chunk_s` seconds each, pruned by the
primary index), each slice's rows are held until no later slice can hold an earlier
receipt time, then handed to the engine one second at a time, followed by
``tick(second + 1)`` exactly as the service does once a second.  "No later slice can":
a flow starts at most `lag_s` before it is received and at most `lead_s` after (an
exporter clock running ahead); within those bounds, one query before the replay learns
how far ahead the flows actually start, per bucket of start times, so rows are held for
the lead the data has, not for `lead_s`.  Flows outside those bounds are counted, not
replayed.

Memory.  Nothing kept grows with the length of the range: the engine's windows are
bounded by ``detection.max_keys_per_rule``; the rows held follow the flow rate times the
exporters' clock lead and export delay (`FlowReader.peak_held`, in the report); per rule
the report keeps at most ``max_keys_per_rule`` keys and prefixes (the rest are counted,
`unlisted_detections`, `unlisted_prefixes`) and SAMPLED_DETECTIONS samples; tuning keeps a histogram of values
rounded to 4 significant digits (at most 9,000 values per power of ten) and per day at
most 2 x ``max_keys_per_rule`` keys (`RuleTuning`).

Sources.  Every rule reads raw flows: `rollup_fit` says, per rule, why none of the
rollups (storage/schema.py) gives its quantity exactly, and the report carries it.

Safety.  Blackhole requests go to a BlackholeManager of their own with the configured
policy forced into dry run, an in-memory state DB and an announcer that refuses every
call: nothing a backtest does can reach GoBGP, the state DB or blackholes.txt.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry

from .batch import DictColumn, FlowBatch, str_to_addr
from .columns import BY_NAME, Kind
from .detect.actions import request_blackhole
from .detect.detection import Detection, iso_time
from .detect.engine import (
    EVALUATED_COLUMNS,
    FLOW_TIME_SQL,
    RECORDED,
    DetectionEngine,
    TrackedKeys,
    flow_times,
)
from .detect.rules import Rule
from .detect.window import Candidates, bucket_width
from .errors import FlowEnricherError

if TYPE_CHECKING:
    from .blackhole.manager import BlackholeManager
    from .config import Settings

__all__ = ["BacktestError", "BacktestReport", "FlowReader", "ReplayWindow", "SourceFit", "rollup_fit", "run_backtest"]

log = logging.getLogger(__name__)

QueryFn = Callable[[str, str], bytes]
"""``query(sql, format)``: the store's answer (FlowStore.query, or the running service's)."""

DAY_S = 86_400
SAMPLED_DETECTIONS = 3  # detections per rule shown with their sample flows
TUNE_HEADROOM = 10  # distinct counts are observed up to this many times the rule's threshold
PROGRESS_EVERY_S = 10  # seconds of the range between two progress calls
ANOMALY_GRACE_S = 2  # how long after its end the service scores an anomaly window (detect/anomaly.py)
MARK_BUCKETS = 4096  # most buckets of start times FlowReader learns the clock lead of


class BacktestError(FlowEnricherError):
    """A backtest that cannot run (bad range, something reached the announcer)."""


# ---------------------------------------------------------------------- reading


@dataclass(frozen=True)
class ReplayWindow:
    """The range replayed, [start, end) in unix seconds of receipt time, and how it is read."""

    start: int
    end: int
    chunk_s: int = 10
    lag_s: int = 3600
    lead_s: int = 600

    def __post_init__(self) -> None:
        if self.end <= self.start:
            raise BacktestError(f"the range is empty: --to ({iso_time(self.end)}) must be after --from "
                                f"({iso_time(self.start)})")
        for name in ("chunk_s", "lag_s", "lead_s"):
            if getattr(self, name) < (1 if name == "chunk_s" else 0):
                raise BacktestError(f"{name} must be positive, not {getattr(self, name)}")


def _arrow_batch(table: Any) -> FlowBatch:
    """A FlowBatch from an Arrow table of flow columns (as ClickHouse writes ArrowStream)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = table.num_rows
    columns: dict[str, Any] = {}
    for name in table.column_names:
        col = BY_NAME[name]
        data = table.column(name).combine_chunks() if table.column(name).num_chunks != 1 else table.column(name).chunk(0)
        if col.kind is Kind.UINT:
            columns[name] = np.asarray(data.to_numpy(zero_copy_only=False), dtype=col.np_dtype)
        elif col.kind is Kind.ADDR:
            buffer = data.buffers()[1]
            raw = np.frombuffer(buffer, dtype=np.uint8, count=16 * (data.offset + n))[16 * data.offset:]
            columns[name] = raw.reshape(n, 16)
        elif col.kind is Kind.STR:
            encoded = pc.dictionary_encode(data) if not pa.types.is_dictionary(data.type) else data
            columns[name] = DictColumn(np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.uint32),
                                       [str(v) for v in encoded.dictionary.to_pylist()])
        else:
            raise BacktestError(f"column {name}: lists are not read by backtests")
    return FlowBatch(n, columns)


class FlowReader:
    """The flows of `window` from the flows table `table`, one receipt second at a time,
    in order (see the module docstring for how and what is left out)."""

    COLUMNS = EVALUATED_COLUMNS

    def __init__(self, query: QueryFn, table: str, window: ReplayWindow) -> None:
        self.query = query
        self.table = table
        self.window = window
        self.flows = 0  # replayed
        self.late = 0  # read after a later second had been replayed (exporter clock ahead by more than lead_s)
        self.queries = 0
        self.peak_held = 0  # rows held at once (read, not yet replayed), at most

    def _slice(self, lo: int, hi: int) -> FlowBatch:
        sql = (f"SELECT {', '.join(self.COLUMNS)} FROM {self.table} "
               f"WHERE {self._where(lo, hi)}")
        import pyarrow.ipc as ipc

        self.queries += 1
        data = self.query(sql, "ArrowStream")
        if not data:
            return FlowBatch(0)
        return _arrow_batch(ipc.open_stream(data).read_all())

    def _bounds(self) -> tuple[int, int]:
        """The exporter start times to read: [start - lag_s, end + lead_s) narrowed to
        those of the flows there are (one query, so an empty lag costs no slices)."""
        w = self.window
        lo, stop = w.start - w.lag_s, w.end + w.lead_s
        sql = (f"SELECT toUInt32(min(timestamp_start)), toUInt32(max(timestamp_start)), count() FROM {self.table} "
               f"WHERE {self._where(lo, stop)}")
        first, last, count = (int(v) for v in self.query(sql, "TSV").decode().split())
        if not count:
            return stop, stop
        return max(lo, first), min(stop, last + 1)

    def _where(self, lo: int, hi: int) -> str:
        w = self.window
        return (f"timestamp_start >= toDateTime({lo}) AND timestamp_start < toDateTime({hi}) "
                f"AND {FLOW_TIME_SQL} >= {w.start} AND {FLOW_TIME_SQL} < {w.end}")

    def _marks(self, lo: int, stop: int) -> Callable[[int], int]:
        """``mark(hi)``: the earliest receipt time a flow not read yet (one starting at
        `hi` or later) can have, from how far ahead of receipt the flows of the range
        actually start, per bucket of start times (one query).  Holding rows only until
        then keeps the rows held to the flow rate times the exporters' actual clock lead
        and export delay; the bound `lead_s` alone would hold lead_s seconds of flows
        (600 s at 30k flows/s: 18M rows) whatever the data."""
        w = self.window
        bucket = max(60, -(-(stop - lo) // MARK_BUCKETS))
        sql = (f"SELECT intDiv(toUInt32(timestamp_start) - {lo}, {bucket}) AS b, "
               f"max(toInt64(toUInt32(timestamp_start)) - toInt64({FLOW_TIME_SQL})) FROM {self.table} "
               f"WHERE {self._where(lo, stop)} GROUP BY b")
        self.queries += 1
        buckets = -(-(stop - lo) // bucket)
        lead = np.full(buckets, -np.inf)
        for row in self.query(sql, "TSV").decode().splitlines():
            index, ahead = (int(v) for v in row.split("\t"))
            lead[index] = min(max(ahead, 0), w.lead_s)
        starts = lo + bucket * np.arange(buckets, dtype=np.float64)
        floors = starts - lead  # +inf where the bucket holds no flow
        after = np.append(np.minimum.accumulate(floors[::-1])[::-1][1:], np.inf)  # min over later buckets

        def mark(hi: int) -> int:
            if hi >= stop:
                return w.end
            k = (hi - lo) // bucket
            return int(min(hi - lead[k], after[k], w.end))

        return mark

    def seconds(self) -> Iterator[tuple[int, FlowBatch | None]]:
        """(second, its flows or None) for every second of the range, in order."""
        w = self.window
        held: list[FlowBatch] = []
        next_second = w.start
        lo, stop = self._bounds()
        mark_of = self._marks(lo, stop) if lo < stop else (lambda hi: w.end)
        while True:
            hi = min(lo + w.chunk_s, stop)
            if lo < hi:
                part = self._slice(lo, hi)
                if part.n:
                    held.append(part)
            # Rows not read yet start at hi or later, so are received at mark or later.
            mark = mark_of(hi)
            lo = hi
            if mark <= next_second:
                continue
            pending = FlowBatch.concat(held) if len(held) > 1 else (held[0] if held else FlowBatch(0))
            held = []
            times = flow_times(pending) if pending.n else np.zeros(0, dtype=np.int64)
            late = times < next_second
            if late.any():
                self.late += int(late.sum())
            ready = np.flatnonzero((times < mark) & ~late)
            keep = np.flatnonzero(times >= mark)
            if len(keep):
                held.append(pending.take(keep) if len(keep) < pending.n else pending)
            self.peak_held = max(self.peak_held, pending.n)
            order = ready[np.argsort(times[ready], kind="stable")]
            ready_times = times[order]
            bounds = np.searchsorted(ready_times, np.arange(next_second, mark + 1))
            for i, second in enumerate(range(next_second, mark)):
                a, b = int(bounds[i]), int(bounds[i + 1])
                if a == b:
                    yield second, None
                else:
                    self.flows += b - a
                    yield second, pending.take(order[a:b])
            next_second = mark
            if next_second >= w.end:
                return

    def outside(self) -> int:
        """Flows received in the range whose exporter start time is more than lag_s before
        or lead_s after it: never read by `seconds` (one count over the range)."""
        w = self.window
        sql = (f"SELECT count() FROM {self.table} WHERE {FLOW_TIME_SQL} >= {w.start} AND {FLOW_TIME_SQL} < {w.end} "
               f"AND (timestamp_start < toDateTime({w.start - w.lag_s}) "
               f"OR timestamp_start >= toDateTime({w.end + w.lead_s}))")
        return int(self.query(sql, "TSV").decode().strip() or 0)


@contextlib.contextmanager
def store_query(cfg: Settings) -> Iterator[QueryFn]:
    """How a backtest process reads the flows of `cfg`'s store.  The embedded store
    admits one process per data directory: while the service runs, its control socket
    answers the queries (control.query_running); otherwise, and with a ClickHouse
    server, the store is opened here and closed on leaving."""
    from .control import query_running
    from .storage import open_store
    from .wiring import store_settings

    store_cfg = store_settings(cfg)
    if store_cfg.embedded and query_running(store_cfg.path, "SELECT 1", "TSV") is not None:
        def query(sql: str, fmt: str) -> bytes:
            answer = query_running(store_cfg.path, sql, fmt)
            if answer is None:
                raise FlowEnricherError(f"the service in {store_cfg.path} stopped during the backtest")
            return answer

        yield query
        return
    store = open_store(store_cfg)
    try:
        yield store.query
    finally:
        store.close()


# ---------------------------------------------------------------------- sources


@dataclass(frozen=True)
class SourceFit:
    """What a rule's flows are read from in a backtest ("flows": the raw flows table),
    and why no rollup gives its quantities exactly."""

    source: str
    reason: str


def rollup_fit(rule: Rule) -> SourceFit:
    """Whether a rollup of storage/schema.py gives every quantity `rule` thresholds, for
    the same flows and the same windows, exactly; the raw flows otherwise, with why.

    None does today, for any rule: the rollups sum whole minutes of the exporter's start
    time (ROLLUP_TIME_SOURCE), while the engine counts a flow at its receipt second in a
    window that slides in steps of a twentieth of its length, so a minute bucket cannot
    say which window a flow fell in; the aggregate rollups keep no address; the host
    rollups keep the address but at most WHO_CAP rows per insert block (a key beyond
    them loses that block's flows) and no protocol, port or TCP flags.  Reading one
    would change detections silently, so a backtest reads flows and says why."""
    from .storage.schema import ROLLUP_TIME_SOURCE, ROLLUPS, WHO_CAP, WHO_FILTERS, WHO_ROLLUPS

    key_column = f"{rule.key}_addr"
    host = next((w for w in WHO_ROLLUPS if w.summed and w.values[0] == key_column), None)
    reasons = []
    if host is None:
        reasons.append(f"no rollup keeps {key_column}")
    else:
        kept = {*WHO_FILTERS, *host.value_names()}
        needs = {"dst_addr": rule.same_dst_ip and rule.key == "src", "dst_port": rule.same_dst_port or bool(rule.dst_ports),
                 "proto": rule.proto is not None, "tcpflags": rule.syn_only or bool(rule.min_syn_ratio),
                 "each flow's start and end (for rates)": bool(rule.min_pps or rule.min_bps)}
        missing = [column for column, needed in needs.items() if needed and column not in kept]
        if missing:
            reasons.append(f"the {host.name} rollup has no {', '.join(missing)}")
        if rule.distinct:
            reasons.append(f"distinct counts ({', '.join(rule.distinct)}) need each flow's values, which rollups sum away")
        reasons.append(f"the {host.name} rollup keeps at most {WHO_CAP} rows per insert block, bucket, exporter and "
                       "direction")
    step = bucket_width(rule.window_s)
    reasons.append(f"rollups sum whole {ROLLUPS[0].suffix} buckets of {ROLLUP_TIME_SOURCE}, the engine counts each flow "
                   f"at its receipt second in a {rule.window_s:g} s window sliding by {step} s")
    return SourceFit("flows", "; ".join(reasons))


# ---------------------------------------------------------------------- recording

KeyTuple = tuple[str, str | None, int | None]


@dataclass
class KeyRecord:
    detections: int = 0
    first: float = 0.0
    last: float = 0.0


@dataclass
class RuleRecord:
    """What one rule did over the replay."""

    rule: str
    max_keys: int = 100_000  # keys and prefixes listed at most (detection.max_keys_per_rule)
    source: str = "flows"  # what the rule's flows were read from
    source_reason: str = ""  # why not a rollup
    ml_score: str = ""  # how min_ml_score was applied (ml_score_use)
    detections: int = 0
    first: float | None = None
    last: float | None = None
    keys: dict[KeyTuple, KeyRecord] = field(default_factory=dict)
    unlisted_detections: int = 0  # detections of keys beyond max_keys (counted, not listed)
    unlisted_prefixes: int = 0  # dry-run announcements and refusals of prefixes beyond max_keys
    samples: list[dict[str, Any]] = field(default_factory=list)
    below_blackhole_count: int = 0  # detections of a blackhole rule with fewer flows than blackhole_count
    would_announce: int = 0  # requests the dry-run manager accepted (first announcements and extensions)
    announced_prefixes: dict[str, int] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # prefix -> the policy's reason (latest)
    refusals: int = 0

    def to_dict(self, keys_shown: int = 20) -> dict[str, Any]:
        busiest = sorted(self.keys.items(), key=lambda item: (-item[1].detections, item[1].first))[:keys_shown]
        return {
            "rule": self.rule, "source": self.source, "source_reason": self.source_reason,
            **({"ml_score": self.ml_score} if self.ml_score else {}),
            "detections": self.detections, "keys": len(self.keys),
            "keys_capped": bool(self.unlisted_detections), "unlisted_detections": self.unlisted_detections,
            "unlisted_prefixes": self.unlisted_prefixes,
            "first": iso_time(self.first) if self.first is not None else None,
            "last": iso_time(self.last) if self.last is not None else None,
            "top_keys": [{**_key_dict(key), "detections": rec.detections, "first": iso_time(rec.first),
                          "last": iso_time(rec.last)} for key, rec in busiest],
            "blackholes": {"would_announce": self.would_announce, "prefixes": len(self.announced_prefixes),
                           "refused": self.refusals, "refused_prefixes": dict(sorted(self.refused.items())[:keys_shown]),
                           "below_blackhole_count": self.below_blackhole_count},
            "samples": self.samples,
        }


def _key_dict(key: KeyTuple) -> dict[str, Any]:
    out: dict[str, Any] = {"address": key[0]}
    if key[1] is not None:
        out["dst_addr"] = key[1]
    if key[2] is not None:
        out["dst_port"] = key[2]
    return out


def key_text(key: KeyTuple) -> str:
    text = key[0]
    if key[1] is not None:
        text += f" -> {key[1]}"
    if key[2] is not None:
        text += f" port {key[2]}"
    return text


class _Recorder:
    """The engine's ``clickhouse`` destination in a backtest: every detection is told
    here (the engine sends each one to RECORDED whatever the rule's actions)."""

    name = RECORDED

    def __init__(self, rules: Sequence[Rule], max_keys: int) -> None:
        self.max_keys = max_keys
        self.records: dict[str, RuleRecord] = {}
        for rule in rules:
            if rule.enabled:
                fit = rollup_fit(rule)
                self.records[rule.name] = RuleRecord(rule.name, max_keys, fit.source, fit.reason)

    def record_of(self, rule: str) -> RuleRecord:
        rec = self.records.get(rule)
        if rec is None:
            rec = self.records[rule] = RuleRecord(rule, self.max_keys)
        return rec

    def handle(self, rule: Rule, detection: Detection) -> None:
        rec = self.record_of(rule.name)
        at = detection.detected_at
        rec.detections += 1
        rec.first = at if rec.first is None else rec.first
        rec.last = at
        key = (detection.address, detection.dst_addr, detection.dst_port)
        entry = rec.keys.get(key)
        if entry is None and len(rec.keys) >= rec.max_keys:
            rec.unlisted_detections += 1
        else:
            if entry is None:
                entry = rec.keys[key] = KeyRecord(first=at)
            entry.detections += 1
            entry.last = at
        if len(rec.samples) < SAMPLED_DETECTIONS:
            rec.samples.append(detection.to_dict())
        if "blackhole" in rule.actions and not detection.blackhole:
            rec.below_blackhole_count += 1

    def close(self) -> None:
        pass


class _DryBlackholes:
    """The ``blackhole`` action of a backtest: each detection's request goes, at once and
    in the replay's order, to the dry-run manager (the service's action queues it)."""

    name = "blackhole"

    def __init__(self, manager: BlackholeManager, samples: int) -> None:
        self.manager = manager
        self.samples = samples

    def handle(self, rule: Rule, detection: Detection) -> None:
        if detection.blackhole:
            request_blackhole(self.manager, rule, detection, self.samples)

    def close(self) -> None:
        pass


class _PolicyOutcomes:
    """The manager's event sink: what it would have announced and what it refused, per rule."""

    def __init__(self, recorder: _Recorder) -> None:
        self.recorder = recorder

    def manager_action(self, action: str, prefix: str, next_hop: str, communities: Sequence[str], source: str,
                       rule: str, expires_at: float | None, reason: str = "", evidence: object = None) -> None:
        rec = self.recorder.record_of(rule)
        if action == "dry-run-announce":
            rec.would_announce += 1
            if prefix in rec.announced_prefixes or len(rec.announced_prefixes) < rec.max_keys:
                rec.announced_prefixes[prefix] = rec.announced_prefixes.get(prefix, 0) + 1
            else:
                rec.unlisted_prefixes += 1
        elif action == "refused":
            rec.refusals += 1
            if prefix in rec.refused or len(rec.refused) < rec.max_keys:
                rec.refused[prefix] = reason
            else:
                rec.unlisted_prefixes += 1


class _NoGoBGP:
    """The announcer of a backtest's manager: any call is a bug (the policy is in dry run,
    which announces nothing), so it fails the backtest rather than reach anything."""

    def __init__(self) -> None:
        self.calls = 0

    def _refuse(self, what: str) -> Any:
        self.calls += 1
        raise BacktestError(f"backtest: the blackhole manager tried to {what} (dry run must not)")

    def announce(self, prefix: str, next_hop: str, communities: Sequence[str]) -> None:
        self._refuse(f"announce {prefix}")

    def withdraw(self, prefix: str, next_hop: str, communities: Sequence[str]) -> None:
        self._refuse(f"withdraw {prefix}")

    def announced(self, prefixes: Any) -> set[str]:
        result: set[str] = self._refuse("read GoBGP's table")
        return result

    def confirmed(self, prefixes: Any) -> set[str]:
        result: set[str] = self._refuse("read GoBGP's adj-RIB-out")
        return result


class _Clock:
    """Replay time, for the manager's per-minute cap and expiries."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _dry_run_manager(cfg: Settings, clock: _Clock, events: _PolicyOutcomes) -> tuple[BlackholeManager, _NoGoBGP]:
    from .blackhole.manager import BlackholeManager
    from .blackhole.safety import SafetyPolicy
    from .blackhole.state import StateDB
    from .wiring import blackhole_defaults, safety_settings

    policy = SafetyPolicy(dataclasses.replace(safety_settings(cfg), dry_run=True))
    announcer = _NoGoBGP()
    manager = BlackholeManager(StateDB("sqlite://"), announcer, policy, None, blackhole_defaults(cfg),
                               CollectorRegistry(), clock=clock, events=events)
    return manager, announcer


@dataclass
class _Replay:
    """One rules file's engine with its recorder and dry-run manager."""

    name: str
    engine: DetectionEngine
    recorder: _Recorder
    manager: BlackholeManager
    announcer: _NoGoBGP


def _replay_of(name: str, rules: Sequence[Rule], cfg: Settings, clock: _Clock, query: QueryFn) -> _Replay:
    det = cfg.detection
    recorder = _Recorder(rules, det.max_keys_per_rule)
    scorer: StoredScores | None = None
    if cfg.anomaly.enabled:
        from .storage.tables import ANOMALY_SCORES
        from .wiring import store_settings

        scorer = StoredScores(query, ANOMALY_SCORES.qualified(store_settings(cfg).database), int(cfg.anomaly.window_s),
                              cfg.anomaly.store_min_score, clock)
    for rule in rules:
        if rule.name in recorder.records:
            recorder.records[rule.name].ml_score = ml_score_use(rule, cfg)
    manager, announcer = _dry_run_manager(cfg, clock, _PolicyOutcomes(recorder))
    engine = DetectionEngine(rules, [recorder, _DryBlackholes(manager, 3)], CollectorRegistry(),
                             max_keys_per_rule=det.max_keys_per_rule,
                             samples_per_detection=det.samples_per_detection, scorer=scorer)
    return _Replay(name, engine, recorder, manager, announcer)


# ---------------------------------------------------------------------- anomaly scores


class StoredScores:
    """The engine's anomaly scorer in a backtest: each source's score in the anomaly
    window the service would have scored last at replay time, read from the
    anomaly_scores table it stored them in (detect/anomaly.py, `AnomalyScoring`).

    Live, a window [w, w + W) is scored once the service's clock passes its end by
    ANOMALY_GRACE_S, and a source's score is its score in the latest scored window (None
    if absent from it).  The service stores only scores of at least
    ``anomaly.store_min_score``, so `min_ml_score` is applied exactly where it is at least
    that (a lower score and no score then both fail the rule), and where it is lower a
    source between the two passes live but not here (`exact_above`).  It also assumes
    every window had traffic and a model, as on a live appliance past its first training:
    where a window has no stored score, no source has one.  Holds one window's scores."""

    def __init__(self, query: QueryFn, table: str, window_s: int, store_min_score: float,
                 clock: Callable[[], float]) -> None:
        self.query = query
        self.table = table
        self.window_s = max(1, int(window_s))
        self.exact_above = store_min_score
        self.clock = clock
        self.windows_read = 0
        self._window: int | None = None
        self._scores: dict[bytes, float] = {}

    def _load(self, start: int) -> None:
        sql = (f"SELECT hex(src_addr), max(score) FROM {self.table} WHERE ts = toDateTime({start}) "
               f"AND window_s = {self.window_s} GROUP BY src_addr")
        rows = self.query(sql, "TSV").decode().splitlines()
        self._scores = {bytes.fromhex(addr): float(score) for addr, score in (row.split("\t") for row in rows)}
        self._window = start
        self.windows_read += 1

    def __call__(self, key: str, addresses: Sequence[str]) -> Sequence[float | None]:
        if key != "src":
            return [None] * len(addresses)
        latest = (int(self.clock() - ANOMALY_GRACE_S) // self.window_s - 1) * self.window_s
        if latest != self._window:
            self._load(latest)
        return [self._scores.get(str_to_addr(address)) for address in addresses]


def ml_score_use(rule: Rule, cfg: Settings) -> str:
    """How a backtest applies `rule`'s min_ml_score (the report says it per rule)."""
    if rule.min_ml_score is None:
        return ""
    if not cfg.anomaly.enabled:
        return "ignored, as by the service: anomaly scoring is not enabled"
    if rule.min_ml_score >= cfg.anomaly.store_min_score:
        return "stored anomaly scores (exact: min_ml_score >= anomaly.store_min_score)"
    return (f"stored anomaly scores, which hold only scores >= anomaly.store_min_score "
            f"({cfg.anomaly.store_min_score:g}): sources scoring between {rule.min_ml_score:g} and it are missed")


# ---------------------------------------------------------------------- tuning


@dataclass(frozen=True)
class Quantity:
    """A thresholded quantity of a rule: its option name, the rule's threshold, and
    whether it only takes whole values."""

    option: str
    threshold: float
    integer: bool
    extract: Callable[[Candidates], npt.NDArray[np.float64]]


def quantities(rule: Rule) -> list[Quantity]:
    """The quantities `rule` thresholds (Rule's fields), each read from a window's statistics."""
    out: list[Quantity] = []

    def add(option: str, threshold: float, integer: bool, extract: Callable[[Candidates], Any]) -> None:
        if threshold:
            out.append(Quantity(option, float(threshold), integer,
                                lambda c: np.asarray(extract(c), dtype=np.float64)))

    add("min_flows", rule.min_flows, True, lambda c: c.flows)
    add("min_packets", rule.min_packets, True, lambda c: c.packets)
    add("min_bytes", rule.min_bytes, True, lambda c: c.bytes)
    add("min_pps", rule.min_pps, False, lambda c: c.pps)
    add("min_bps", rule.min_bps, False, lambda c: c.bps)
    add("min_syn_ratio", rule.min_syn_ratio, False, lambda c: c.syn / np.maximum(c.flows, 1))
    for option, kind in (("unique_dst_ips", "dst_ip"), ("unique_dst_ports", "dst_port"),
                         ("unique_src_ips", "src_ip")):
        add(option, getattr(rule, option), True, _distinct_of(kind))
    return out


def _distinct_of(kind: str) -> Callable[[Candidates], Any]:
    return lambda c: c.distinct[kind]


def observing_rule(rule: Rule) -> Rule:
    """`rule` for the tuning engine: distinct counts kept up to TUNE_HEADROOM times the
    threshold (the window stores no more than a rule's threshold), and no actions."""
    raised = {option: value * TUNE_HEADROOM for option in ("unique_dst_ips", "unique_dst_ports", "unique_src_ips")
              if (value := getattr(rule, option))}
    return dataclasses.replace(rule, actions=(), **raised)


def _idents(keys: TrackedKeys) -> npt.NDArray[Any]:
    """One fixed-width byte string per key (address, destination, port) for set operations."""
    n = len(keys.key_addr)
    dst = keys.dst_addr if keys.dst_addr is not None else np.zeros((n, 16), dtype=np.uint8)
    port = (keys.dst_port if keys.dst_port is not None else np.zeros(n, dtype=np.uint16)).astype(">u2")
    rows = np.concatenate([keys.key_addr, dst, port.view(np.uint8).reshape(n, 2)], axis=1)
    return np.ascontiguousarray(rows).view("S34").ravel()


def _ident_of(key: KeyTuple) -> bytes:
    dst = str_to_addr(key[1]) if key[1] is not None else bytes(16)
    return str_to_addr(key[0]) + dst + int(key[2] or 0).to_bytes(2, "big")


def _quantize(values: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Values rounded to 4 significant digits: the distribution is kept as counts of
    these, so its size follows the spread of the values, not how many there are."""
    out = values.copy()
    nonzero = out != 0
    if nonzero.any():
        digits = 3 - np.floor(np.log10(np.abs(out[nonzero])))
        scale = 10.0 ** digits
        out[nonzero] = np.round(out[nonzero] * scale) / scale
    return out


def _above(value: float, integer: bool) -> float:
    """The smallest round threshold strictly above `value` (3 significant digits)."""
    if integer:
        return float(math.floor(value) + 1)
    if value <= 0:
        return 0.001
    step = 10.0 ** (math.floor(math.log10(value)) - 2)
    return round((math.floor(value / step) + 1) * step, 12)


@dataclass
class QuantityTuning:
    """One quantity of one rule over the replay, for keys the rule did not fire on."""

    quantity: Quantity
    counts: Counter[float] = field(default_factory=Counter)
    day_thresholds: list[float | None] = field(default_factory=list)
    capped: bool = False

    def add(self, values: npt.NDArray[np.float64]) -> None:
        """Values into the histogram (rounded to 4 significant digits: a relative error
        under 0.05 %, at most 9,000 values per power of ten whatever their number)."""
        if len(values):
            rounded, counts = np.unique(_quantize(values), return_counts=True)
            self.counts.update(dict(zip(rounded.tolist(), counts.tolist(), strict=True)))

    def percentiles(self) -> dict[str, float]:
        if not self.counts:
            return {}
        values = np.array(sorted(self.counts), dtype=np.float64)
        weights = np.cumsum([self.counts[v] for v in values.tolist()])
        total = weights[-1]
        out = {}
        for label, p in (("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9)):
            out[label] = float(values[int(np.searchsorted(weights, math.ceil(total * p / 100)))])
        out["max"] = float(values[-1])
        return out


class RuleTuning:
    """Per UTC day, each key's highest value of each quantity; at the day's end, keys the
    rule fired on are left out and the rest go to the distribution, and the threshold
    that leaves at most N keys of the day at or above it is noted.

    When an observation leaves more than 2 x `max_keys` keys in the day's table, keys the
    rule fired on are dropped, then every key outside the `keep` highest of each quantity
    (`max_keys` shared among the quantities, at least N + 1 each) goes to the
    distribution at once (`pruned`), leaving at most `max_keys` or so.  The suggested
    threshold stays exact while at most `keep` - N - 1 of the day's highest keys are
    fired on later that day; the
    distribution may then count a key twice (before and after it was pruned) or include
    one fired on later.  "Fired on" is what the report lists: past the report's key cap
    (`RuleRecord.unlisted_detections`), keys fired on but not listed count as not fired."""

    def __init__(self, rule: Rule, per_day: int, max_keys: int = 100_000) -> None:
        self.rule = rule
        self.per_day = per_day
        self.max_keys = max(max_keys, per_day + 1)
        self.quantities = [QuantityTuning(q) for q in quantities(rule)]
        self.observing = observing_rule(rule)
        self.keys_observed = 0
        self.pruned = 0
        self.peak_keys = 0
        self.days = 0
        self._day: int | None = None
        self._idents = np.zeros(0, dtype="S34")
        self._values = np.zeros((0, len(self.quantities)), dtype=np.float64)

    def observe(self, second: int, stats: Candidates, keys: TrackedKeys, fired: Callable[[], set[bytes]]) -> None:
        day = second // DAY_S
        if self._day is not None and day != self._day:
            self.close_day(fired())
        self._day = day
        if not len(stats) or not self.quantities:
            return
        values = np.stack([q.quantity.extract(stats) for q in self.quantities], axis=1)
        idents = np.concatenate([self._idents, _idents(keys)])
        values = np.concatenate([self._values, values])
        unique, inverse = np.unique(idents, return_inverse=True)
        highest = np.full((len(unique), values.shape[1]), -np.inf)
        np.maximum.at(highest, inverse.ravel(), values)
        self._idents, self._values = unique, highest
        self.peak_keys = max(self.peak_keys, len(unique))
        if len(unique) > 2 * self.max_keys:
            self._prune(fired())

    def _prune(self, fired: set[bytes]) -> None:
        """Back to the `keep` highest keys of each quantity (class docstring)."""
        if fired:
            mine = ~np.isin(self._idents, np.array(sorted(fired), dtype="S34"))
            self._idents, self._values = self._idents[mine], self._values[mine]
        quantities = self._values.shape[1]
        each = max(self.per_day + 1, self.max_keys // max(1, quantities))
        keep = np.zeros(len(self._idents), dtype=bool)
        for i in range(quantities):
            if len(self._idents) > each:
                keep[np.argpartition(-self._values[:, i], each - 1)[:each]] = True
            else:
                keep[:] = True
        dropped = self._values[~keep]
        self.pruned += len(dropped)
        self.keys_observed += len(dropped)
        for i, tuning in enumerate(self.quantities):
            tuning.add(dropped[:, i])
        self._idents, self._values = self._idents[keep], self._values[keep]

    def close_day(self, fired: set[bytes]) -> None:
        if self._day is None:
            return
        self.days += 1
        keep = ~np.isin(self._idents, np.array(sorted(fired), dtype="S34")) if fired else \
            np.ones(len(self._idents), dtype=bool)
        values = self._values[keep]
        self.keys_observed += len(values)
        for i, tuning in enumerate(self.quantities):
            column = values[:, i]
            q = tuning.quantity
            cap = q.threshold * TUNE_HEADROOM if q.option.startswith("unique_") else None
            tuning.add(column)
            ranked = np.sort(column)[::-1]
            if len(ranked) > self.per_day:
                nth = float(ranked[self.per_day])
                if cap is not None and nth >= cap:
                    tuning.capped = True
                tuning.day_thresholds.append(_above(nth, q.integer))
            else:
                tuning.day_thresholds.append(None)
        self._idents = np.zeros(0, dtype="S34")
        self._values = np.zeros((0, len(self.quantities)), dtype=np.float64)
        self._day = None

    def to_dicts(self) -> list[dict[str, Any]]:
        out = []
        for tuning in self.quantities:
            q = tuning.quantity
            known = [t for t in tuning.day_thresholds if t is not None]
            suggested = max(known) if known else None
            out.append({
                "rule": self.rule.name, "quantity": q.option, "threshold": q.threshold, "days": self.days,
                "keys_not_fired": self.keys_observed, "percentiles": tuning.percentiles(),
                "per_day": self.per_day, "suggested": suggested,
                "suggested_is_lower_bound": tuning.capped, "keys_pruned": self.pruned,
                "peak_day_keys": self.peak_keys,
                "histogram_values": len(tuning.counts),
            })
        return out


# ---------------------------------------------------------------------- the run


@dataclass
class BacktestReport:
    """What a backtest found; `to_lines` is the JSON-lines form."""

    window: ReplayWindow
    rules_files: list[str]
    records: list[dict[str, RuleRecord]]
    flows: int
    late: int
    outside: int
    seconds: float
    tuning: list[dict[str, Any]] = field(default_factory=list)
    compare: dict[str, list[dict[str, Any]]] | None = None
    announcer_calls: int = 0
    peak_held: int = 0

    def summary(self) -> dict[str, Any]:
        span = self.window.end - self.window.start
        return {
            "kind": "summary", "from": iso_time(self.window.start), "to": iso_time(self.window.end),
            "rules_files": self.rules_files, "flows": self.flows, "late_flows": self.late,
            "outside_lag_flows": self.outside, "elapsed_s": round(self.seconds, 3),
            "flows_per_s": round(self.flows / self.seconds, 1) if self.seconds else None,
            "times_real_time": round(span / self.seconds, 2) if self.seconds else None,
            "announcer_calls": self.announcer_calls, "peak_held_rows": self.peak_held,
        }

    def to_lines(self) -> list[dict[str, Any]]:
        lines = [self.summary()]
        for name, records in zip(self.rules_files, self.records, strict=True):
            lines += [{"kind": "rule", "rules_file": name, **rec.to_dict()} for rec in records.values()]
        lines += [{"kind": "tuning", **item} for item in self.tuning]
        if self.compare is not None:
            lines.append({"kind": "compare", **self.compare})
        return lines

    def detected_keys(self, index: int = 0) -> set[tuple[str, KeyTuple]]:
        """(rule, key) of every detection of the `index`-th rules file."""
        return {(rule, key) for rule, rec in self.records[index].items() for key in rec.keys}


def _compare(a: dict[str, RuleRecord], b: dict[str, RuleRecord]) -> dict[str, list[dict[str, Any]]]:
    def keyed(records: dict[str, RuleRecord]) -> dict[tuple[str, KeyTuple], int]:
        return {(rule, key): rec.detections for rule, record in records.items() for key, rec in record.keys.items()}

    ka, kb = keyed(a), keyed(b)

    def listing(keys: set[tuple[str, KeyTuple]], counts: Mapping[tuple[str, KeyTuple], int]) -> list[dict[str, Any]]:
        return [{"rule": rule, **_key_dict(key), "detections": counts[(rule, key)]}
                for rule, key in sorted(keys, key=lambda item: (item[0], key_text(item[1])))]

    # Keys past a rule's cap are counted, not listed, so cannot be compared: named here.
    capped = [{"rules_file": label, "rule": rule, "unlisted_detections": record.unlisted_detections}
              for label, records in (("a", a), ("b", b)) for rule, record in records.items()
              if record.unlisted_detections]
    return {"only_a": listing(set(ka) - set(kb), ka), "only_b": listing(set(kb) - set(ka), kb),
            "both": listing(set(ka) & set(kb), ka), "not_compared": capped}


def run_backtest(query: QueryFn, table: str, cfg: Settings, rule_sets: Sequence[tuple[str, Sequence[Rule]]],
                 window: ReplayWindow, *, tune_per_day: int | None = None,
                 progress: Callable[[int, int, int], None] | None = None) -> BacktestReport:
    """Replay `window` of `table` through one engine per rules file (the first is A, a
    second is compared with it); with `tune_per_day`, tune A's rules too.  `progress`
    hears (seconds of the range replayed, seconds in it, flows replayed) every
    PROGRESS_EVERY_S seconds of the range and at the end."""
    if not rule_sets:
        raise BacktestError("no rules to backtest")
    began = time.perf_counter()
    clock = _Clock(float(window.start))
    replays = [_replay_of(name, rules, cfg, clock, query) for name, rules in rule_sets]
    tunings: list[RuleTuning] = []
    observer: DetectionEngine | None = None
    if tune_per_day is not None:
        if tune_per_day < 0:
            raise BacktestError(f"--tune must be 0 or more keys a day, not {tune_per_day}")
        tunings = [RuleTuning(rule, tune_per_day, cfg.detection.max_keys_per_rule)
                   for rule in rule_sets[0][1] if rule.enabled]
        # Its own engine: the rules with room above their distinct thresholds, and no
        # detections at all (max_detections_per_evaluation=0), so it only measures.
        observer = DetectionEngine([t.observing for t in tunings], (), CollectorRegistry(),
                                   max_keys_per_rule=cfg.detection.max_keys_per_rule, samples_per_detection=0,
                                   max_detections_per_evaluation=0)
    by_name = {t.rule.name: t for t in tunings}
    periods = {t.rule.name: max(1, math.ceil(t.rule.window_s / 4)) for t in tunings}

    def fired_of(rule: str) -> Callable[[], set[bytes]]:
        def fired() -> set[bytes]:
            record = replays[0].recorder.records.get(rule)
            return {_ident_of(key) for key in record.keys} if record else set()
        return fired

    reader = FlowReader(query, table, window)
    total = window.end - window.start
    for second, batch in reader.seconds():
        for replay in replays:
            if batch is not None:
                replay.engine.process(batch)
        now = second + 1
        clock.now = float(now)
        for replay in replays:
            replay.engine.tick(now)
            replay.manager.expire(now)
        if observer is not None:
            if batch is not None:
                observer.process(batch)
            observer.tick(now)
            due = [name for name, period in periods.items() if now % period == 0]
            if due:
                for rule, stats, keys in observer.measure_tracked():
                    if rule.name in due:
                        by_name[rule.name].observe(second, stats, keys, fired_of(rule.name))
        if progress is not None and (second - window.start) % PROGRESS_EVERY_S == PROGRESS_EVERY_S - 1:
            progress(second - window.start + 1, total, reader.flows)
    if progress is not None:
        progress(total, total, reader.flows)
    for tuning in tunings:
        tuning.close_day(fired_of(tuning.rule.name)())
    calls = sum(r.announcer.calls for r in replays)
    for replay in replays:
        replay.engine.close()
        replay.manager.close()
        replay.manager.state.close()
    report = BacktestReport(
        window=window, rules_files=[name for name, _ in rule_sets], records=[r.recorder.records for r in replays],
        flows=reader.flows, late=reader.late, outside=reader.outside(), seconds=time.perf_counter() - began,
        tuning=[item for t in tunings for item in t.to_dicts()], announcer_calls=calls, peak_held=reader.peak_held,
    )
    if len(replays) > 1:
        report.compare = _compare(report.records[0], report.records[1])
    return report


# ---------------------------------------------------------------------- output


def render_table(report: BacktestReport) -> str:
    """The report for a terminal."""
    s = report.summary()
    lines = [f"backtest {s['from']} .. {s['to']}: {s['flows']} flows replayed in {s['elapsed_s']} s "
             f"({s['flows_per_s']} flows/s, {s['times_real_time']}x real time); "
             f"{s['late_flows']} late, {s['outside_lag_flows']} outside the lag bounds"]
    for name, records in zip(report.rules_files, report.records, strict=True):
        lines.append(f"\nrules {name}")
        lines.append(f"  {'RULE':24} {'DETECTIONS':>10} {'KEYS':>6} {'WOULD BH':>8} {'REFUSED':>7}  FIRST .. LAST")
        for rec in records.values():
            span = "-" if rec.first is None or rec.last is None else f"{iso_time(rec.first)} .. {iso_time(rec.last)}"
            lines.append(f"  {rec.rule[:24]:24} {rec.detections:10d} {len(rec.keys):6d} "
                         f"{len(rec.announced_prefixes):8d} {len(rec.refused):7d}  {span}")
            if rec.unlisted_detections:
                lines.append(f"      {rec.unlisted_detections} detections of keys past the cap of {rec.max_keys} "
                             "(counted, not listed)")
            if rec.ml_score:
                lines.append(f"      min_ml_score: {rec.ml_score}")
            for key, entry in sorted(rec.keys.items(), key=lambda item: -item[1].detections)[:5]:
                lines.append(f"      {key_text(key)}: {entry.detections}x, {iso_time(entry.first)} .. "
                             f"{iso_time(entry.last)}")
            for prefix, reason in sorted(rec.refused.items())[:5]:
                lines.append(f"      refused {prefix}: {reason}")
            for sample in rec.samples[:1]:
                for flow in sample["samples"][:3]:
                    lines.append(f"      flow {flow['src_addr']}:{flow['src_port']} -> {flow['dst_addr']}:"
                                 f"{flow['dst_port']} proto {flow['proto']} {flow['packets']} pkts")
    sources = {rec.source for records in report.records for rec in records.values()}
    if sources == {"flows"}:
        lines.append("\nevery rule read raw flows: no rollup gives a rule's quantities exactly "
                     "(source_reason in --format jsonl)")
    else:
        lines.append("\nsources: " + ", ".join(f"{rec.rule} {rec.source}" for rec in report.records[0].values()))
    if report.tuning:
        lines.append(f"\ntuning (keys the rule did not fire on; suggested: at most {report.tuning[0]['per_day']} "
                     "keys a day at or above it)")
        lines.append(f"  {'RULE':24} {'QUANTITY':16} {'NOW':>10} {'P50':>10} {'P99':>10} {'MAX':>10} {'SUGGESTED':>10}")
        for item in report.tuning:
            p = item["percentiles"]
            suggested = "-" if item["suggested"] is None else f"{item['suggested']:g}"
            if item["suggested_is_lower_bound"]:
                suggested = ">=" + suggested
            lines.append(f"  {item['rule'][:24]:24} {item['quantity']:16} {item['threshold']:10g} "
                         f"{p.get('p50', 0):10g} {p.get('p99', 0):10g} {p.get('max', 0):10g} {suggested:>10}")
    if report.compare is not None:
        c = report.compare
        lines.append(f"\ncompare: {len(c['only_a'])} only in A, {len(c['only_b'])} only in B, {len(c['both'])} in both")
        for label in ("only_a", "only_b"):
            for item in c[label][:20]:
                key = (item["address"], item.get("dst_addr"), item.get("dst_port"))
                lines.append(f"  {label}: {item['rule']} {key_text(key)} ({item['detections']}x)")
    return "\n".join(lines)
