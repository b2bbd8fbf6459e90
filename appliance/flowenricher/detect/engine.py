"""The detection engine: every enriched batch goes through each rule's sliding window,
and keys that reach a rule's thresholds become detections handed to the actions.

It runs in the storing process, after enrichment, so it sees the flows of every worker
(one window per rule over all exporters).  Per batch and rule the work is vectorised
(a filter, a keyed hash of the grouping, one sort, reductions); Python loops only over
keys that pass a rule's summed thresholds.  `tick(now)` (the service calls it about
once a second) expires what left the windows and evaluates every rule; `process` also
evaluates the keys a batch touched, so a detection does not wait for the next tick.

Time: a flow counts at ``received_at``, when the collector got it, falling back to
``timestamp_end`` where that is 0 (offline decoding, generated batches).  The receipt
time shares the clock of `tick(now)`, so windows expire consistently; the exporter's
clock (RouterOS without NTP is often minutes off) and its export delays (a flow cut by
the active timeout is exported long after it started) would put flows outside their
window or in the future.  Flow start and end still measure how long a key's flows last,
for its packet and bit rates (differences on one clock).
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Counter, Gauge

from ..batch import FlowBatch, addr_to_str, default_column
from ..columns import BY_NAME, Kind
from ..common.addresses import V4_MAPPED
from ..enrich.base import addr_halves
from ..enrich.networks import PrefixMatcher
from .detection import Detection
from .rules import Rule
from .settings import DetectionSettings
from .window import BYTES, END, PACKETS, ROW_COLUMNS, START, SYN_ONLY, TIME, Candidates, Rows, RuleWindow

__all__ = ["EVALUATED_COLUMNS", "FLOW_TIME_SQL", "INPUT_COLUMNS", "RECORDED", "SAMPLE_COLUMNS", "Action", "AnomalyScorer",
           "DetectionEngine", "DetectionListener", "TrackedKeys", "flow_times"]

log = logging.getLogger(__name__)
_DETECTION = DetectionSettings()  # the detection block's defaults, for an engine built without a config

SYN, ACK = 0x02, 0x10

SAMPLE_COLUMNS = (
    "received_at", "timestamp_start", "timestamp_end", "exporter_address", "src_addr", "dst_addr", "src_port",
    "dst_port", "proto", "tcpflags", "packets", "bytes", "input_interface", "output_interface", "flow_direction",
    "src_as", "dst_as", "src_host_country", "dst_host_country",
)
"""The columns of the sample flows a detection carries (enough to recognise the traffic)."""

INPUT_COLUMNS = (
    "received_at", "timestamp_start", "timestamp_end", "tcpflags", "proto", "packets", "bytes", "src_addr",
    "dst_addr", "dst_port", "flow_direction",
)
"""The flow columns the rules read (_BatchView); with SAMPLE_COLUMNS, all a batch needs to be
evaluated as the service evaluates it: EVALUATED_COLUMNS."""

EVALUATED_COLUMNS = tuple(dict.fromkeys((*INPUT_COLUMNS, *SAMPLE_COLUMNS)))
"""What a batch must carry to be evaluated as the service evaluates it: what a backtest
reads from the store, and what a storer produces to the detection topic
(kafka/detection.py)."""

_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
# The IPv4-mapped prefix split as addr_halves splits an address: the high half, and
# the 32 bits above the IPv4 address in the low half.
_V4_HIGH = np.uint64(int.from_bytes(V4_MAPPED[:8], "big"))
_V4_MARK = np.uint64(int.from_bytes(V4_MAPPED[8:], "big"))
_LOW32 = np.uint64(0xFFFFFFFF)


class Action(Protocol):
    """Something a detection does (alert, clickhouse, slack, webhook, blackhole).

    `name` is the rule action it serves.  `handle` must return quickly and never raise:
    slow work (HTTP, SQL, gRPC) belongs in a background thread of the action.
    """

    name: str

    def handle(self, rule: Rule, detection: Detection) -> None: ...

    def close(self) -> None: ...


AnomalyScorer = Callable[[str, Sequence[str]], Sequence[float | None]]
"""``scorer(key, addresses)``: the anomaly score (0..1) of each address seen as a source
(key "src") or destination (key "dst"), None where it has none yet (detect/anomaly.py's
Isolation Forest scores sources)."""

RECORDED = "clickhouse"
"""The action every detection goes to, whatever the rule's actions: the detections table
is the appliance's record of what it found (the status page and /api/v1/detections read
it), so a rule that only alerts must appear there too.  A rule may still name
``clickhouse`` (the original's rules files do): it is accepted and changes nothing."""

DetectionListener = Callable[[Detection], None]
"""Told of every detection, whatever the rule's actions (the anomaly baseline leaves
detected sources out); must return quickly and never raise."""


def _mix(values: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """splitmix64's finaliser: every input bit moves every output bit."""
    values = (values ^ (values >> np.uint64(30))) * _MIX1
    values = (values ^ (values >> np.uint64(27))) * _MIX2
    mixed: npt.NDArray[np.uint64] = values ^ (values >> np.uint64(31))
    return mixed


class _BatchView:
    """One batch's columns as the rules read them, each derived once and shared by rules."""

    def __init__(self, batch: FlowBatch, salt: int) -> None:
        self.batch = batch
        self.n = batch.n
        self._salt = np.uint64(salt)
        end = _column(batch, "timestamp_end").astype(np.int64)
        start = _column(batch, "timestamp_start").astype(np.int64)
        time = flow_times(batch)
        end = np.where(end > 0, end, time)
        flags = _column(batch, "tcpflags")
        self.proto = _column(batch, "proto")
        self.syn = (self.proto == 6) & ((flags & SYN) != 0) & ((flags & ACK) == 0)
        self.data = np.empty((self.n, ROW_COLUMNS), dtype=np.int64)
        self.data[:, PACKETS] = _column(batch, "packets")
        self.data[:, BYTES] = _column(batch, "bytes")
        self.data[:, SYN_ONLY] = self.syn
        self.data[:, START] = np.where((start > 0) & (start <= end), start, end)
        self.data[:, TIME] = time
        self.data[:, END] = end
        self.time = time
        self.addr = {"src": _column(batch, "src_addr"), "dst": _column(batch, "dst_addr")}
        self.dst_port = _column(batch, "dst_port")
        self.direction = _column(batch, "flow_direction")
        self._cache: dict[object, Any] = {}

    def _cached(self, key: object, make: Callable[[], Any]) -> Any:
        value = self._cache.get(key)
        if value is None:
            value = self._cache[key] = make()
        return value

    def halves(self, side: str) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
        result: tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]] = self._cached(
            ("halves", side), lambda: addr_halves(self.addr[side]))
        return result

    def group(self, rule: Rule) -> npt.NDArray[np.uint64]:
        """Keyed 64-bit hash of each flow's key under `rule`'s grouping."""
        spec = (rule.key, rule.same_dst_ip and rule.key == "src", rule.same_dst_port)

        def make() -> npt.NDArray[np.uint64]:
            hi, lo = self.halves(rule.key)
            mixed = _mix(_mix(hi ^ self._salt) ^ lo)
            if spec[1]:
                dhi, dlo = self.halves("dst")
                mixed = _mix(_mix(mixed ^ dhi) ^ dlo)
            if spec[2]:
                mixed = _mix(mixed ^ self.dst_port.astype(np.uint64))
            return mixed

        result: npt.NDArray[np.uint64] = self._cached(("group", spec), make)
        return result

    def value(self, kind: str) -> npt.NDArray[np.uint32]:
        """The 32-bit value of a distinct count: a port, an IPv4 address, or a keyed hash
        of an IPv6 address."""
        def make() -> npt.NDArray[np.uint32]:
            if kind == "dst_port":
                return np.asarray(self.dst_port, dtype=np.uint32)
            hi, lo = self.halves("dst" if kind == "dst_ip" else "src")
            v4 = (hi == _V4_HIGH) & ((lo >> np.uint64(32)) == _V4_MARK)
            hashed = _mix(_mix(hi ^ ~self._salt) ^ lo) >> np.uint64(32)
            return np.where(v4, lo & _LOW32, hashed).astype(np.uint32)

        result: npt.NDArray[np.uint32] = self._cached(("value", kind), make)
        return result

    def select(self, rule: Rule, matchers: Mapping[str, PrefixMatcher]) -> npt.NDArray[np.intp]:
        """Positions of the flows `rule` looks at."""
        mask = np.ones(self.n, dtype=bool)
        if rule.proto is not None:
            mask &= self._cached(("proto", rule.proto), lambda: self.proto == rule.proto)
        if rule.directions is not None:
            directions = tuple(sorted(rule.directions))
            mask &= self._cached(("direction", directions),
                                 lambda: np.isin(self.direction, directions))
        if rule.dst_ports:
            mask &= self._cached(("ports", rule.dst_ports), lambda: np.isin(self.dst_port, rule.dst_ports))
        if rule.syn_only:
            mask &= self.syn
        index = np.flatnonzero(mask)
        if len(index) and (rule.include_prefixes or rule.exclude_prefixes):
            keys = self.addr[rule.key][index]
            keep = np.ones(len(index), dtype=bool)
            if rule.include_prefixes:
                keep &= matchers["include"].match(keys) >= 0
            if rule.exclude_prefixes:
                keep &= matchers["exclude"].match(keys) < 0
            index = index[keep]
        return index

    def rows(self, rule: Rule, index: npt.NDArray[np.intp]) -> Rows:
        return Rows(
            index=index, group=self.group(rule)[index], data=self.data[index],
            values={kind: self.value(kind)[index] for kind in rule.distinct},
            key_addr=self.addr[rule.key],
            dst_addr=self.addr["dst"] if rule.same_dst_ip and rule.key == "src" else None,
            dst_port=self.dst_port if rule.same_dst_port else None,
        )

    def sample_batch(self, positions: npt.NDArray[np.intp]) -> FlowBatch:
        """The flows at `positions`, SAMPLE_COLUMNS only (kept until a detection renders them)."""
        return FlowBatch(len(positions), {name: _take_column(_column(self.batch, name), positions)
                                               for name in SAMPLE_COLUMNS})


def flow_times(batch: FlowBatch) -> npt.NDArray[np.int64]:
    """When each flow counts (unix seconds): received_at, else timestamp_end (module docstring)."""
    received = _column(batch, "received_at").astype(np.int64)
    times: npt.NDArray[np.int64] = np.where(received > 0, received, _column(batch, "timestamp_end").astype(np.int64))
    return times


FLOW_TIME_SQL = "if(received_at > 0, received_at, timestamp_end)"
"""`flow_times` as a ClickHouse expression over the flows table (what a backtest selects by)."""


def _column(batch: FlowBatch, name: str) -> Any:
    """A column of `batch`, its defaults when absent (without adding them to the batch,
    which the store may still hold)."""
    return batch[name] if name in batch else default_column(name, batch.n)


def _take_column(data: Any, positions: npt.NDArray[np.intp]) -> Any:
    return data[positions] if isinstance(data, np.ndarray) else data.take(positions)


def render_samples(samples: Sequence[tuple[FlowBatch, int]]) -> tuple[dict[str, Any], ...]:
    """Sample flows as dicts of SAMPLE_COLUMNS values (addresses as text)."""
    out = []
    for batch, row in samples:
        flow: dict[str, Any] = {}
        for name in SAMPLE_COLUMNS:
            data = batch[name]
            kind = BY_NAME[name].kind
            if kind is Kind.UINT:
                flow[name] = int(data[row])
            elif kind is Kind.ADDR:
                flow[name] = addr_to_str(data[row])
            else:
                flow[name] = data.values[int(data.codes[row])]
        out.append(flow)
    return tuple(out)


@dataclass
class _RuleState:
    rule: Rule
    window: RuleWindow
    matchers: dict[str, PrefixMatcher]
    cooldown: dict[int, float] = field(default_factory=dict)  # key hash -> quiet until


class DetectionEngine:
    """Rules over sliding windows of all flows; detections go to the actions.

    `actions` are the configured destinations (several may serve one name, such as two
    webhooks).  `max_keys_per_rule` caps each rule's tracked keys.  `scorer` feeds
    `min_ml_score` and the anomaly_score of every detection; without one that condition
    is ignored (a rule with no other threshold then never matches).  `listeners` hear of
    every detection.  Thread-safe: `process`, `tick` and `reload` may come from different
    threads.
    """

    def __init__(self, rules: Sequence[Rule], actions: Sequence[Action] = (),
                 registry: CollectorRegistry | None = None, *, max_keys_per_rule: int = _DETECTION.max_keys_per_rule,
                 scorer: AnomalyScorer | None = None, samples_per_detection: int = 5,
                 max_detections_per_evaluation: int = 100, listeners: Sequence[DetectionListener] = ()) -> None:
        if max_keys_per_rule < 1:
            raise ValueError(f"max_keys_per_rule must be at least 1, not {max_keys_per_rule}")
        self.max_keys_per_rule = max_keys_per_rule
        self.scorer = scorer
        self.listeners = list(listeners)
        self.samples_per_detection = samples_per_detection
        self.max_detections_per_evaluation = max_detections_per_evaluation
        self._actions: dict[str, list[Action]] = {}
        for action in actions:
            self._actions.setdefault(action.name, []).append(action)
        self._lock = threading.RLock()
        self._salt = secrets.randbits(64)
        self._now = 0
        self._direction_seen = self._direction_warned = False
        self._states: list[_RuleState] = []
        self._flows = Counter("flowenricher_detection_flows", "Flows each rule looked at", ["rule"],
                              registry=registry)
        self._detections = Counter("flowenricher_detection_detections", "Detections, per rule", ["rule"],
                                   registry=registry)
        self._evicted = Counter("flowenricher_detection_keys_evicted",
                                "Keys a rule stopped tracking to stay under its cap (least active first)",
                                ["rule"], registry=registry)
        self._late = Counter("flowenricher_detection_late_flows",
                             "Flows older than a rule's window when they arrived (not counted)", ["rule"],
                             registry=registry)
        self._keys = Gauge("flowenricher_detection_keys", "Keys a rule tracks now", ["rule"], registry=registry)
        self._state_bytes = Gauge("flowenricher_detection_state_bytes",
                                  "Bytes of a rule's window state (its numpy arrays; samples not counted)", ["rule"],
                                  registry=registry)
        self._seconds = Counter("flowenricher_detection_seconds", "Time spent in the detection engine",
                                registry=registry)
        self._action_errors = Counter("flowenricher_detection_action_errors",
                                      "Actions that raised while taking a detection", ["action"], registry=registry)
        self.reload(rules)

    # ------------------------------------------------------------------ rules

    @property
    def rules(self) -> list[Rule]:
        """The rules being evaluated (enabled ones)."""
        with self._lock:
            return [state.rule for state in self._states]

    def stats(self) -> dict[str, dict[str, int]]:
        """Per rule: keys tracked, bytes of window state, flows refused as too late."""
        with self._lock:
            return {state.rule.name: {"keys": state.window.tracked, "state_bytes": state.window.memory_bytes(),
                                      "late_flows": state.window.late}
                    for state in self._states}

    def reload(self, rules: Sequence[Rule]) -> None:
        """Evaluate `rules` from now on.  A rule whose grouping, filters, window and
        distinct thresholds are unchanged keeps its window and cooldowns."""
        with self._lock:
            old = {state.rule.name: state for state in self._states}
            states: list[_RuleState] = []
            kept = 0
            for rule in rules:
                if not rule.enabled:
                    continue
                previous = old.pop(rule.name, None)
                if previous is not None and previous.rule.state_signature() == rule.state_signature():
                    previous.rule = previous.window.rule = rule
                    states.append(previous)
                    kept += 1
                else:
                    states.append(self._new_state(rule))
                self._warn_about(rule)
            for gone in old.values():
                for gauge in (self._keys, self._state_bytes):
                    with contextlib.suppress(KeyError):
                        gauge.remove(gone.rule.name)
            self._states = states
            log.info("detection: %d rule(s) active (%d kept their state)", len(states), kept)

    def _new_state(self, rule: Rule) -> _RuleState:
        counter = self._evicted.labels(rule.name)
        window = RuleWindow(rule, self.max_keys_per_rule, on_evict=counter.inc)
        matchers = {"include": PrefixMatcher(list(rule.include_prefixes)),
                    "exclude": PrefixMatcher(list(rule.exclude_prefixes))}
        return _RuleState(rule, window, matchers)

    def _warn_about(self, rule: Rule) -> None:
        missing = [name for name in rule.actions if name not in self._actions and name != RECORDED]
        if missing:
            log.warning("detection: rule %s: action %s has no destination configured; it does nothing",
                        rule.name, ", ".join(missing))
        if rule.min_ml_score is not None and self.scorer is None:
            log.warning("detection: rule %s: min_ml_score is ignored (anomaly scoring is not enabled)%s",
                        rule.name, "; with no other threshold the rule never matches" if not _thresholds(rule) else "")

    # ------------------------------------------------------------------ input

    def process(self, batch: FlowBatch, keys: Collection[str] | None = None) -> None:
        """Count a batch (after enrichment) into every rule's window and evaluate the keys
        it touched.  With `keys` (a subset of ``{"src", "dst"}``), only the rules keyed
        by one of them see the batch: the detection exchange (kafka/detection.py) hands
        each batch to the rules of the key it was partitioned by."""
        if not batch.n:
            return
        began = time.perf_counter()
        with self._lock:
            view = _BatchView(batch, self._salt)
            self._now = max(self._now, int(view.time.max()))
            if not self._direction_seen:
                self._check_direction(batch)
            for state in self._states:
                if keys is not None and state.rule.key not in keys:
                    continue
                index = view.select(state.rule, state.matchers)
                if not len(index):
                    continue
                window = state.window
                late = window.late
                rows = view.rows(state.rule, index)
                touched = window.add(rows)
                self._flows.labels(state.rule.name).inc(len(index))
                if window.late != late:
                    self._late.labels(state.rule.name).inc(window.late - late)
                self._keep_samples(state, view, rows, touched)
                # Keys that just became candidates are measured at once (detection latency);
                # the others wait for the next second, when tick measures every candidate.
                candidates = window.screen(touched)
                candidates = candidates[window.measured_at[candidates] < self._now]
                if len(candidates):
                    self._evaluate(state, candidates, self._now)
        self._seconds.inc(time.perf_counter() - began)

    def _check_direction(self, batch: FlowBatch) -> None:
        """Say once if flows carry no direction (my_prefixes empty, or enrichment off):
        rules looking at inbound or internal flows then see nothing."""
        if _column(batch, "flow_direction").any():
            self._direction_seen = True
        elif not self._direction_warned and any(state.rule.directions is not None for state in self._states):
            self._direction_warned = True
            log.warning("detection: flows carry no direction (is my_prefixes empty?); rules that look at "
                        "inbound or internal flows see nothing until they do")

    def _keep_samples(self, state: _RuleState, view: _BatchView, rows: Rows, touched: npt.NDArray[np.int64]) -> None:
        """Sample flows for keys half way to matching, a few per key: the Python work is
        bounded by the keys that look suspicious (at most 64 a batch), never by the batch."""
        wanted = self.samples_per_detection
        if not len(touched) or not wanted:
            return
        window = state.window
        warm = window.warm(touched)
        needy = warm[window.sample_count[warm] < wanted][:64]
        if not len(needy):
            return
        hashes = window.hash[needy]
        by_hash = np.argsort(hashes)
        mine = np.flatnonzero(np.isin(rows.group, hashes))
        order = mine[np.argsort(rows.group[mine], kind="stable")]
        group = rows.group[order]
        first = np.concatenate(([True], group[1:] != group[:-1])) if len(order) else np.zeros(0, dtype=bool)
        starts = np.flatnonzero(first)
        rank = np.arange(len(order)) - np.repeat(starts, np.diff(np.append(starts, len(order))))
        chosen = order[rank < wanted]
        owners = needy[by_hash[np.searchsorted(hashes[by_hash], rows.group[chosen])]]
        chunk = view.sample_batch(rows.index[chosen])
        for row, slot in enumerate(owners.tolist()):
            if window.sample_count[slot] < wanted:
                window.samples.setdefault(slot, []).append((chunk, row))
                window.sample_count[slot] += 1

    # ------------------------------------------------------------------ evaluation

    def tick(self, now: float | None = None) -> None:
        """Expire and evaluate every rule (the service calls this about once a second)."""
        self.evaluate(time.time() if now is None else now)

    def evaluate(self, now: float) -> list[Detection]:
        """Slide every window to `now` and report the keys that match (also handed to the
        actions)."""
        began = time.perf_counter()
        found: list[Detection] = []
        with self._lock:
            self._now = max(self._now, int(now))
            for state in self._states:
                state.window.advance(self._now)
                self._keys.labels(state.rule.name).set(state.window.tracked)
                self._state_bytes.labels(state.rule.name).set(state.window.memory_bytes())
                state.cooldown = {key: until for key, until in state.cooldown.items() if until > now}
                candidates = state.window.screen()
                if len(candidates):
                    found += self._evaluate(state, candidates, self._now)
        self._seconds.inc(time.perf_counter() - began)
        return found

    def _evaluate(self, state: _RuleState, slots: npt.NDArray[np.int64], now: int) -> list[Detection]:
        rule, window = state.rule, state.window
        if not _thresholds(rule) and self.scorer is None:
            return []
        if state.cooldown:
            quiet = np.fromiter((key for key, until in state.cooldown.items() if until > now), dtype=np.uint64)
            slots = slots[~np.isin(window.hash[slots], quiet)]
        if not len(slots):
            return []
        if len(slots) > self.max_detections_per_evaluation:
            # The busiest keys first; the others are reported at the next evaluation.
            busiest = np.argsort(-window.flows[slots], kind="stable")[:self.max_detections_per_evaluation]
            slots = np.sort(slots[busiest])
        stats = window.measure(slots)
        window.measured_at[slots] = now
        ok = np.ones(len(stats), dtype=bool)
        if rule.min_pps:
            ok &= stats.pps >= rule.min_pps
        if rule.min_bps:
            ok &= stats.bps >= rule.min_bps
        for kind, threshold in rule.distinct.items():
            ok &= stats.distinct[kind] >= threshold
        matched = np.flatnonzero(ok)
        if not len(matched):
            return []
        keys = [window.describe(int(stats.slot[i])) for i in matched]
        scores: list[float | None] = [None] * len(matched)
        if self.scorer is not None:
            try:
                scores = list(self.scorer(rule.key, [address for address, _, _ in keys]))
            except Exception:  # a broken scorer must not stop the rules
                log.exception("detection: the anomaly scorer failed on rule %s", rule.name)
            if rule.min_ml_score is not None:
                least = rule.min_ml_score
                chosen = [j for j, score in enumerate(scores) if score is not None and score >= least]
                matched, keys, scores = matched[chosen], [keys[j] for j in chosen], [scores[j] for j in chosen]
        detections = [self._detection(state, stats, int(i), key, score, now)
                      for i, key, score in zip(matched.tolist(), keys, scores, strict=True)]
        for detection, i in zip(detections, matched.tolist(), strict=True):
            state.cooldown[int(window.hash[stats.slot[i]])] = now + rule.cooldown
            self._detections.labels(rule.name).inc()
            log.info("detection: %s", detection.summary())
            self._dispatch(rule, detection)
            for listener in self.listeners:
                try:
                    listener(detection)
                except Exception:
                    log.exception("detection: a detection listener failed on rule %s", rule.name)
        return detections

    def _detection(self, state: _RuleState, stats: Candidates, i: int, key: tuple[str, str | None, int | None],
                   score: float | None, now: int) -> Detection:
        rule = state.rule
        address, dst_addr, dst_port = key
        flows = int(stats.flows[i])
        distinct = {kind: int(counts[i]) for kind, counts in stats.distinct.items()}
        return Detection(
            rule=rule.name, key=rule.key, address=address, detected_at=float(now), window_s=rule.window_s,
            flows=flows, packets=int(stats.packets[i]), bytes=int(stats.bytes[i]), pps=float(stats.pps[i]),
            bps=float(stats.bps[i]), syn_ratio=int(stats.syn[i]) / flows if flows else 0.0,
            first_seen=float(stats.first[i]), last_seen=float(stats.last[i]), actions=rule.actions,
            blackhole="blackhole" in rule.actions and flows >= rule.blackhole_count,
            dst_addr=dst_addr, dst_port=dst_port,
            unique_dst_ips=distinct.get("dst_ip"), unique_dst_ports=distinct.get("dst_port"),
            unique_src_ips=distinct.get("src_ip"), anomaly_score=score,
            samples=render_samples(state.window.samples.get(int(stats.slot[i]), [])[:self.samples_per_detection]),
        )

    def _dispatch(self, rule: Rule, detection: Detection) -> None:
        for name in (*[a for a in rule.actions if a != RECORDED], RECORDED):
            for action in self._actions.get(name, ()):
                try:
                    action.handle(rule, detection)
                except Exception:
                    self._action_errors.labels(name).inc()
                    log.exception("detection: action %s failed on rule %s", name, rule.name)

    def measure_tracked(self) -> list[tuple[Rule, Candidates, TrackedKeys]]:
        """Every rule's window statistics of all the keys it tracks now, matched or not,
        with the keys themselves: what a backtest's tuning reads (the distribution of
        what the rules threshold).  Costs a `measure` of every held key: not for the
        service's tick."""
        out = []
        with self._lock:
            for state in self._states:
                window = state.window
                slots = np.sort(window.active_slots())
                rule = state.rule
                keys = TrackedKeys(
                    key_addr=window.key_addr[slots].copy(),
                    dst_addr=window.dst_addr[slots].copy() if rule.same_dst_ip and rule.key == "src" else None,
                    dst_port=window.dst_port[slots].copy() if rule.same_dst_port else None)
                out.append((rule, window.measure(slots), keys))
        return out

    def close(self) -> None:
        """Close every action (they flush what they hold)."""
        for actions in self._actions.values():
            for action in actions:
                try:
                    action.close()
                except Exception:
                    log.exception("detection: closing action %s", action.name)


@dataclass(frozen=True)
class TrackedKeys:
    """The keys of `measure_tracked`, row for row with its statistics: the key's address,
    and the destination address and port where the rule groups by them (else None)."""

    key_addr: npt.NDArray[np.uint8]
    dst_addr: npt.NDArray[np.uint8] | None
    dst_port: npt.NDArray[np.uint16] | None


def _thresholds(rule: Rule) -> bool:
    """Whether `rule` sets a threshold besides min_ml_score."""
    return bool(rule.min_flows or rule.min_packets or rule.min_bytes or rule.min_pps or rule.min_bps
                or rule.min_syn_ratio or rule.distinct)
