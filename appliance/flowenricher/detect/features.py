"""Per-source feature vectors over tumbling time windows, for the anomaly scorer.

Each flow counts in the window ``floor(t / window_s)`` of its time (receipt time, falling
back to the flow's end, as the rule engine counts it).  A batch is reduced at once, with
numpy only, to a *partial*: per source its sums (flows, packets, bytes, SYN-only flows,
flows per protocol) and its (source, destination address) and (source, destination
port) pairs with flow counts.  Closing a window merges its partials and derives the
vectors.  What a window holds therefore follows its distinct sources and pairs, not the
flow rate: a busy web client adds one pair per server, not one row per flow.

The features (FEATURE_NAMES, in vector order) are what separates scans, floods and odd
mixes from ordinary sources: rates, distinct destinations and ports, their Shannon
entropies (a sweep spreads evenly over many addresses; a client talks mostly to a few),
the share of connection attempts, packet sizes and protocol shares, and the distinct
destinations and ports of connection attempts alone (SYN without ACK): a client's few
unanswered attempts go to one or two servers, a scanner's to every host it probes.
docs/detection-quality.md measures what these last two add.  The last feature looks
further back: the distinct destinations of a source's connection attempts over this
window and the ones before it (``history_windows`` in all), since a scanner at three
hosts a minute looks like a client within one minute but reaches thirty new hosts in
ten, where a client whose SYNs a firewall drops keeps retrying the same few; and those
destinations per flow of the source over the same windows (near 1 for a scanner, whose
every flow is an attempt at a new host; small for a busy host or a NAT whose few
unanswered attempts go to the same servers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..batch import FlowBatch, default_column
from ..enrich.base import addr_halves

__all__ = ["FEATURE_NAMES", "FeatureWindows", "WindowFeatures", "features_of_batch"]

FEATURE_NAMES: tuple[str, ...] = (
    "flows_per_s",
    "packets_per_s",
    "bytes_per_s",
    "unique_dst_ips",
    "unique_dst_ports",
    "syn_ratio",
    "dst_port_entropy",
    "dst_ip_entropy",
    "mean_packet_size",
    "packets_per_flow",
    "tcp_share",
    "udp_share",
    "icmp_share",
    "syn_dst_ips",
    "syn_dst_ports",
    "syn_dst_ips_history",
    "syn_dst_share_history",
)
"""The vector's components, in order (the model's metadata records them)."""

U8 = npt.NDArray[np.uint8]
U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

# Columns of _Partial.sums.
_FLOWS, _PACKETS, _BYTES, _SYN, _TCP, _UDP, _ICMP = range(7)
_SUMS = 7
_SYN_FLAG, _ACK_FLAG = 0x02, 0x10
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_MERGE_EVERY = 16  # partials of one window merged into one beyond this many


def _mix(values: U64) -> U64:
    """splitmix64's finaliser (64-bit keys of destination addresses)."""
    values = (values ^ (values >> np.uint64(30))) * _MIX1
    values = (values ^ (values >> np.uint64(27))) * _MIX2
    mixed: U64 = values ^ (values >> np.uint64(31))
    return mixed


@dataclass
class _Pairs:
    """(source, value) pairs with the flows each pair had; `src` indexes the partial's sources."""

    src: I64
    value: U64
    count: I64


# The pair sets of a partial: destination addresses and ports of every flow, and of the
# connection attempts (SYN without ACK) alone.
_PAIR_SETS = ("ips", "ports", "syn_ips", "syn_ports")


@dataclass
class _Partial:
    """One window's flows of one or more batches, reduced per source (sorted by address)."""

    hi: U64
    lo: U64
    addr: U8  # (k, 16) source addresses
    exporter: U8  # (k, 16) an exporter that reported the source
    sums: F64  # (k, _SUMS)
    pairs: dict[str, _Pairs]  # _PAIR_SETS


@dataclass(frozen=True)
class WindowFeatures:
    """The vectors of one window: row i describes source ``sources[i]``.

    `start` is the window's start (unix seconds); `vectors` has one column per
    FEATURE_NAMES entry; `flows` is each source's flow count (for filtering and storage).
    """

    start: int
    window_s: float
    sources: U8
    exporters: U8
    vectors: F64
    flows: I64

    def __len__(self) -> int:
        return len(self.flows)

    @property
    def names(self) -> tuple[str, ...]:
        return FEATURE_NAMES


def _column(batch: FlowBatch, name: str) -> Any:
    return batch[name] if name in batch else default_column(name, batch.n)


def _group_starts(*keys: npt.NDArray[Any]) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], I64]:
    """Sort order over `keys` (last key most significant, as np.lexsort), the start of each
    group in that order, and each sorted row's group number."""
    order = np.lexsort(keys)
    n = len(order)
    if not n:
        return order, np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.int64)
    change = np.zeros(n, dtype=bool)
    change[0] = True
    for key in keys:
        ordered = key[order]
        change[1:] |= ordered[1:] != ordered[:-1]
    starts = np.flatnonzero(change)
    group = np.cumsum(change) - 1
    return order, starts, group.astype(np.int64)


def _pairs(src: I64, value: U64, count: I64) -> _Pairs:
    """Equal (src, value) pairs added together, sorted by source then value."""
    order, starts, _ = _group_starts(value, src)
    if not len(order):
        return _Pairs(src, value, count)
    return _Pairs(src[order][starts], value[order][starts], np.add.reduceat(count[order], starts))


def _reduce(hi: U64, lo: U64, addr: U8, exporter: U8, sums: F64, pairs: dict[str, _Pairs]) -> _Partial:
    """Rows keyed by source (hi, lo), pair sources indexing those rows, reduced to one row
    per source; pair sources re-indexed to the reduced rows."""
    order, starts, group = _group_starts(lo, hi)
    new_index = np.empty(len(order), dtype=np.int64)
    new_index[order] = group
    first = order[starts]
    return _Partial(
        hi=hi[first], lo=lo[first], addr=addr[first], exporter=exporter[first],
        sums=np.add.reduceat(sums[order], starts, axis=0) if len(order) else sums,
        pairs={name: _pairs(new_index[p.src], p.value, p.count) for name, p in pairs.items()},
    )


def _partial_of(batch: FlowBatch, rows: npt.NDArray[np.intp]) -> _Partial:
    """The flows at `rows` of `batch`, reduced per source."""
    src = np.ascontiguousarray(_column(batch, "src_addr")[rows])
    hi, lo = addr_halves(src)
    dhi, dlo = addr_halves(np.ascontiguousarray(_column(batch, "dst_addr")[rows]))
    proto = _column(batch, "proto")[rows]
    flags = _column(batch, "tcpflags")[rows]
    n = len(rows)
    sums = np.empty((n, _SUMS), dtype=np.float64)
    sums[:, _FLOWS] = 1.0
    sums[:, _PACKETS] = _column(batch, "packets")[rows]
    sums[:, _BYTES] = _column(batch, "bytes")[rows]
    tcp = proto == 6
    sums[:, _SYN] = tcp & ((flags & _SYN_FLAG) != 0) & ((flags & _ACK_FLAG) == 0)
    sums[:, _TCP] = tcp
    sums[:, _UDP] = proto == 17
    sums[:, _ICMP] = (proto == 1) | (proto == 58)
    own = np.arange(n, dtype=np.int64)
    ones = np.ones(n, dtype=np.int64)
    dst = _mix(_mix(dhi) ^ dlo)
    port = _column(batch, "dst_port")[rows].astype(np.uint64)
    syn = np.flatnonzero(sums[:, _SYN])
    pairs = {"ips": _Pairs(own, dst, ones), "ports": _Pairs(own, port, ones),
             "syn_ips": _Pairs(own[syn], dst[syn], ones[syn]), "syn_ports": _Pairs(own[syn], port[syn], ones[syn])}
    return _reduce(hi, lo, src, np.ascontiguousarray(_column(batch, "exporter_address")[rows]), sums, pairs)


def _merge(parts: Sequence[_Partial]) -> _Partial:
    """Several partials of one window as one."""
    if len(parts) == 1:
        return parts[0]
    offsets = np.cumsum([0] + [len(p.hi) for p in parts[:-1]])
    pairs = {name: _Pairs(np.concatenate([p.pairs[name].src + off for p, off in zip(parts, offsets, strict=True)]),
                          np.concatenate([p.pairs[name].value for p in parts]),
                          np.concatenate([p.pairs[name].count for p in parts]))
             for name in _PAIR_SETS}
    return _reduce(
        np.concatenate([p.hi for p in parts]), np.concatenate([p.lo for p in parts]),
        np.concatenate([p.addr for p in parts]), np.concatenate([p.exporter for p in parts]),
        np.concatenate([p.sums for p in parts]), pairs,
    )


def _distinct_and_entropy(pairs: _Pairs, k: int) -> tuple[F64, F64]:
    """Per source: distinct values, and the Shannon entropy (bits) of its flows over them."""
    distinct = np.bincount(pairs.src, minlength=k).astype(np.float64)
    totals = np.bincount(pairs.src, weights=pairs.count, minlength=k)
    p = pairs.count / totals[pairs.src] if len(pairs.src) else np.zeros(0)
    entropy = np.bincount(pairs.src, weights=-p * np.log2(np.where(p > 0, p, 1.0)), minlength=k)
    return distinct, np.maximum(entropy, 0.0)


def _source_keys(part: _Partial) -> U64:
    """One 64-bit key per source of `part` (its address mixed), for the history."""
    return _mix(_mix(part.hi) ^ part.lo)


@dataclass
class _WindowHistory:
    """What the history features keep of one closed window: the distinct (source,
    destination) pairs of connection attempts (source key major), and each source's key
    with its flows."""

    src: U64
    dst: U64
    sources: U64
    flows: F64


def _history_of(part: _Partial) -> _WindowHistory:
    pairs = part.pairs["syn_ips"]
    keys = _source_keys(part)
    src, dst = keys[pairs.src], pairs.value
    order, starts, _ = _group_starts(dst, src)
    return _WindowHistory(src[order][starts], dst[order][starts], keys, part.sums[:, _FLOWS].copy())


def _per_source(own: U64, keys: U64, values: F64) -> F64:
    """The sum of `values` per key, for each key of `own` (0 where it has none)."""
    if not len(keys):
        return np.zeros(len(own))
    unique, inverse = np.unique(keys, return_inverse=True)
    sums = np.bincount(inverse, weights=values, minlength=len(unique))
    at = np.minimum(np.searchsorted(unique, own), len(unique) - 1)
    out: F64 = np.where(unique[at] == own, sums[at], 0.0)
    return out


def _history_features(part: _Partial, history: Sequence[_WindowHistory]) -> tuple[F64, F64]:
    """Per source of `part`, over this window and the `history` windows together: the
    distinct destinations of its connection attempts, and those per flow."""
    windows = [_history_of(part), *history]
    src = np.concatenate([h.src for h in windows])
    dst = np.concatenate([h.dst for h in windows])
    own = windows[0].sources
    order, starts, _ = _group_starts(dst, src)
    distinct = _per_source(own, src[order][starts], np.ones(len(starts)))
    flows = _per_source(own, np.concatenate([h.sources for h in windows]), np.concatenate([h.flows for h in windows]))
    return distinct, np.divide(distinct, flows, out=np.zeros(len(own)), where=flows > 0)


def _vectors(part: _Partial, window_s: float, history: Sequence[_WindowHistory] = ()) -> F64:
    k = len(part.hi)
    s = part.sums
    flows = s[:, _FLOWS]
    packets = s[:, _PACKETS]
    out = np.zeros((k, len(FEATURE_NAMES)), dtype=np.float64)
    if not k:
        return out
    ips, ip_entropy = _distinct_and_entropy(part.pairs["ips"], k)
    ports, port_entropy = _distinct_and_entropy(part.pairs["ports"], k)
    out[:, 0] = flows / window_s
    out[:, 1] = packets / window_s
    out[:, 2] = s[:, _BYTES] / window_s
    out[:, 3] = ips
    out[:, 4] = ports
    out[:, 5] = s[:, _SYN] / flows
    out[:, 6] = port_entropy
    out[:, 7] = ip_entropy
    out[:, 8] = np.divide(s[:, _BYTES], packets, out=np.zeros(k), where=packets > 0)
    out[:, 9] = packets / flows
    out[:, 10] = s[:, _TCP] / flows
    out[:, 11] = s[:, _UDP] / flows
    out[:, 12] = s[:, _ICMP] / flows
    out[:, 13] = np.bincount(part.pairs["syn_ips"].src, minlength=k)
    out[:, 14] = np.bincount(part.pairs["syn_ports"].src, minlength=k)
    if history:
        out[:, 15], out[:, 16] = _history_features(part, history)
    else:
        out[:, 15], out[:, 16] = out[:, 13], out[:, 13] / flows
    return out


def _features(part: _Partial, start: int, window_s: float,
              history: Sequence[_WindowHistory] = ()) -> WindowFeatures:
    return WindowFeatures(start=start, window_s=window_s, sources=part.addr, exporters=part.exporter,
                          vectors=_vectors(part, window_s, history), flows=part.sums[:, _FLOWS].astype(np.int64))


def flow_times(batch: FlowBatch) -> I64:
    """When each flow counts: its receipt time, or its end where that is 0 (as the engine)."""
    received = _column(batch, "received_at").astype(np.int64)
    end = _column(batch, "timestamp_end").astype(np.int64)
    times: I64 = np.where(received > 0, received, end)
    return times


def features_of_batch(batch: FlowBatch, window_s: float, start: int = 0) -> WindowFeatures:
    """Every flow of `batch` as one window of `window_s` seconds (tests, the evaluation);
    no earlier window, so the history features are this window's."""
    if window_s <= 0:
        raise ValueError(f"window_s must be positive, not {window_s}")
    return _features(_partial_of(batch, np.arange(batch.n)), start, window_s)


class FeatureWindows:
    """Tumbling windows of per-source features, fed batches, closed by time.

    `add(batch)` reduces the batch into the partials of the windows its flows fall in;
    `close(now)` returns the features of every window that ended at or before `now`
    (oldest first) and forgets them, but for the connection attempts and flow counts
    per source of the last `history_windows` windows (the history features count over
    them).  Flows of a window already closed are refused and counted in `late`.  Not
    thread-safe: the caller serialises add and close.
    """

    def __init__(self, window_s: int, history_windows: int = 1) -> None:
        if window_s < 1:
            raise ValueError(f"window_s must be at least 1 second, not {window_s}")
        if history_windows < 1:
            raise ValueError(f"history_windows must be at least 1, not {history_windows}")
        self.window_s = int(window_s)
        self.history_windows = int(history_windows)
        self._history: dict[int, _WindowHistory] = {}  # window index -> what the history keeps
        self.late = 0
        self._open: dict[int, list[_Partial]] = {}
        self._closed_before = 0  # window index: every window below it is closed

    def add(self, batch: FlowBatch) -> None:
        if not batch.n:
            return
        index = flow_times(batch) // self.window_s
        late = index < self._closed_before
        if late.any():
            self.late += int(late.sum())
        for window in np.unique(index[~late]).tolist():
            rows = np.flatnonzero(index == window)
            parts = self._open.setdefault(int(window), [])
            parts.append(_partial_of(batch, rows))
            if len(parts) > _MERGE_EVERY:
                parts[:] = [_merge(parts)]

    def close(self, now: float) -> list[WindowFeatures]:
        """Features of the windows that ended by `now`."""
        done = sorted(w for w in self._open if (w + 1) * self.window_s <= now)
        out = []
        for w in done:
            part = _merge(self._open.pop(w))
            self._history = {i: h for i, h in self._history.items() if i > w - self.history_windows}
            out.append(_features(part, w * self.window_s, float(self.window_s), list(self._history.values())))
            if self.history_windows > 1:
                self._history[w] = _history_of(part)
        self._closed_before = max(self._closed_before, int(now // self.window_s))
        return out

    @property
    def pending(self) -> int:
        """Windows still open."""
        return len(self._open)
