"""Sliding-window state of one rule: per-key counters over time buckets, and the distinct
values each key reached, bounded in keys and in values per key.

Layout, chosen so that a batch costs a few numpy sorts whatever the number of keys:

- A key (the rule's grouping: an address, plus destination address or port) is a keyed
  64-bit hash, looked up in a sorted index to a *slot*; per-slot arrays hold the window
  totals (flows, packets, bytes, SYN-only flows, rate-weighted packets and bytes).
- Time is cut into buckets of ``width`` seconds (a twentieth of the window, at least
  1 s).  Each bucket keeps, per slot it saw, the sums of that bucket, so when it leaves
  the window its sums are subtracted from the totals: an exact sliding window at bucket
  granularity, whose cost is the entries of the expiring bucket, not the number of keys.
- Distinct values (destination address or port, source address) are kept per bucket as
  sorted ``slot << 32 | value`` pairs, at most the rule's threshold per slot and bucket:
  the union over the window then counts min(distinct, threshold) exactly, which is all a
  rule compares, and a flood of random sources costs at most that many pairs per key.
  Ports and IPv4 addresses are their own 32-bit value; IPv6 addresses are a keyed 32-bit
  hash, so two IPv6 values of one key can collide and count once (about T²/2³³ per key
  at threshold T: one in 8,000 keys at T = 1000), an undercount no one can aim for since
  the hash key is drawn per process.
- Only keys whose totals already pass every summed threshold (candidates) have their
  distinct counts and flow-time span gathered from the buckets, at evaluation.

Slots are capped (`max_keys`): when new keys do not fit, the least active keys (fewest
flows in the window, then the longest idle) are evicted, new ones included, and counted.
A freed slot (evicted, or with nothing left in the window) gets a new generation number;
bucket entries of an older generation are ignored, and dropped whenever a bucket is
compacted: when it closes, every eight batches while it is open, and in all buckets
once as many slots were freed as are held.  Memory therefore follows the keys held and
their activity, never the flow rate alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ..batch import U8, addr_to_str
from .rules import Rule

I64 = npt.NDArray[np.int64]
U64 = npt.NDArray[np.uint64]
U32 = npt.NDArray[np.uint32]
F64 = npt.NDArray[np.float64]
Bool = npt.NDArray[np.bool_]

BUCKETS_PER_WINDOW = 20
_SHIFT = np.uint64(32)
_INITIAL_SLOTS = 1024


def bucket_width(window_s: float) -> int:
    """Seconds per bucket: a twentieth of the window, at least one second."""
    return max(1, math.ceil(window_s / BUCKETS_PER_WINDOW))


# Columns of Rows.data: what is summed first, then the times (min over start and time,
# max over time and end), so that each reduction reads one contiguous slice.
PACKETS, BYTES, SYN_ONLY, START, TIME, END = range(6)
ROW_COLUMNS = 6


@dataclass
class Rows:
    """The flows of one batch a rule looks at, in the shape the window reads.

    `data` holds, per flow, packets, bytes, SYN-only (0/1), flow start, receipt time and
    flow end (unix seconds) as int64 columns (PACKETS ... END).  `index` are the rows'
    positions in the batch; `key_addr`, `dst_addr` and `dst_port` are the batch's whole
    columns (the window copies only one row per new key).
    """

    index: npt.NDArray[np.intp]
    group: U64  # keyed hash of the rule's grouping
    data: I64  # (n, ROW_COLUMNS)
    values: dict[str, U32]  # distinct kind -> 32-bit value per row
    key_addr: U8
    dst_addr: U8 | None
    dst_port: npt.NDArray[np.uint16] | None

    @property
    def time(self) -> I64:
        column: I64 = self.data[:, TIME]
        return column


@dataclass
class _Sums:
    """Per-slot sums of one bucket, sorted by slot (each slot once per chunk).

    Compact types (about 56 bytes an entry): a bucket sum of flows or SYN-only flows fits
    32 bits, times are unix seconds as in the flow columns, rates are float32 (the
    totals add and later subtract the same float32 values).
    """

    slot: npt.NDArray[np.int32]
    gen: U32
    flows: npt.NDArray[np.int32]
    packets: I64
    bytes: I64
    syn: npt.NDArray[np.int32]
    rate_packets: npt.NDArray[np.float32]
    rate_bytes: npt.NDArray[np.float32]
    start: U32  # earliest flow start
    end: U32  # latest flow end
    first: U32  # earliest receipt
    last: U32  # latest receipt

    def __len__(self) -> int:
        return len(self.slot)

    def select(self, mask: Bool | npt.NDArray[np.intp]) -> _Sums:
        return _Sums(**{name: getattr(self, name)[mask] for name in _SUMS_FIELDS})

    @staticmethod
    def merge(parts: list[_Sums]) -> _Sums:
        """One chunk from several of the same bucket: sums added, times min/maxed per slot."""
        joined = _Sums(**{name: np.concatenate([getattr(p, name) for p in parts]) for name in _SUMS_FIELDS})
        if not len(joined):
            return joined
        order = np.argsort(joined.slot)
        slot = joined.slot[order]
        starts = np.flatnonzero(np.concatenate(([True], slot[1:] != slot[:-1])))
        merged: dict[str, Any] = {"slot": slot[starts], "gen": joined.gen[order][starts]}
        for name in _ADDED:
            column = getattr(joined, name)
            merged[name] = np.add.reduceat(column[order], starts).astype(column.dtype)
        for name in _LOWEST:
            merged[name] = np.minimum.reduceat(getattr(joined, name)[order], starts)
        for name in _HIGHEST:
            merged[name] = np.maximum.reduceat(getattr(joined, name)[order], starts)
        return _Sums(**merged)


_ADDED = ("flows", "packets", "bytes", "syn", "rate_packets", "rate_bytes")
_LOWEST = ("start", "first")
_HIGHEST = ("end", "last")
_SLOT_ARRAYS = ("hash", "gen", "active", "last_seen", "flows", "packets", "bytes", "syn", "rate_packets",
                "rate_bytes", "key_addr", "dst_addr", "dst_port", "sample_count", "measured_at")
_SUMS_FIELDS = ("slot", "gen", "flows", "packets", "bytes", "syn", "rate_packets", "rate_bytes", "start", "end",
                "first", "last")
_MAX_CHUNKS = 8  # chunks a bucket collects (one per batch) before they are merged


@dataclass
class _Pairs:
    """Distinct ``slot << 32 | value`` pairs of one bucket, sorted, with the slot's generation."""

    keys: U64
    gen: U32


@dataclass
class _Bucket:
    sums: list[_Sums] = field(default_factory=list)
    pairs: dict[str, list[_Pairs]] = field(default_factory=dict)

    @property
    def chunks(self) -> int:
        return max([len(self.sums), *(len(parts) for parts in self.pairs.values())])


@dataclass
class Candidates:
    """Exact window statistics of the keys that passed the summed thresholds."""

    slot: I64
    flows: I64
    packets: I64
    bytes: I64
    syn: I64
    pps: F64
    bps: F64
    first: I64
    last: I64
    distinct: dict[str, I64]

    def __len__(self) -> int:
        return len(self.slot)


def _ranges(lo: npt.NDArray[np.intp], counts: npt.NDArray[np.intp]) -> npt.NDArray[np.intp]:
    """Concatenated ``arange(lo[i], lo[i] + counts[i])`` for all i, without a Python loop."""
    total = int(counts.sum())
    if not total:
        return np.zeros(0, dtype=np.intp)
    offsets = np.cumsum(counts) - counts
    return (np.repeat(lo - offsets, counts) + np.arange(total)).astype(np.intp)


def _sorted_unique(values: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """np.unique for 1-D integers by sort and compare (numpy 2's hashing unique is
    several times slower on these sizes)."""
    if len(values) < 2:
        return values.copy()
    ordered = np.sort(values)
    keep = np.empty(len(ordered), dtype=bool)
    keep[0] = True
    np.not_equal(ordered[1:], ordered[:-1], out=keep[1:])
    return ordered[keep]


def _cap_per_slot(keys: U64, cap: int) -> U64:
    """Sorted unique pairs limited to the first `cap` values of each slot."""
    if not len(keys):
        return keys
    slot = keys >> _SHIFT
    first = np.concatenate(([True], slot[1:] != slot[:-1]))
    starts = np.flatnonzero(first)
    run_start = np.repeat(starts, np.diff(np.append(starts, len(keys))))
    rank = np.arange(len(keys)) - run_start
    capped: U64 = keys[rank < cap]
    return capped


class RuleWindow:
    """The sliding-window state of one rule (not thread-safe: the engine serialises calls)."""

    def __init__(self, rule: Rule, max_keys: int, on_evict: Callable[[int], None] | None = None) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, not {max_keys}")
        self.rule = rule
        self.max_keys = max_keys
        self.width = bucket_width(rule.window_s)
        self.span = max(1, math.ceil(rule.window_s / self.width))  # buckets in the window
        self._on_evict = on_evict or (lambda n: None)
        self.head: int | None = None  # newest bucket index
        self.buckets: dict[int, _Bucket] = {}
        self.late = 0  # flows older than the window when they arrived
        # Sample flows per slot, as (small batch of sampled rows, row); `sample_count`
        # mirrors their number so that finding keys short of samples is vectorised.
        self.samples: dict[int, list[tuple[Any, int]]] = {}
        self._capacity = 0
        self._released = 0  # slots released since the last purge
        self._index_hash = np.zeros(0, dtype=np.uint64)
        self._index_slot = np.zeros(0, dtype=np.int64)
        self._free = np.zeros(0, dtype=np.int64)
        self._nfree = 0
        self.hash = np.zeros(0, dtype=np.uint64)
        self.gen = np.zeros(0, dtype=np.uint32)
        self.active = np.zeros(0, dtype=bool)
        self.last_seen = np.zeros(0, dtype=np.int64)
        self.flows = np.zeros(0, dtype=np.int64)
        self.packets = np.zeros(0, dtype=np.int64)
        self.bytes = np.zeros(0, dtype=np.int64)
        self.syn = np.zeros(0, dtype=np.int64)
        self.rate_packets = np.zeros(0, dtype=np.float64)
        self.rate_bytes = np.zeros(0, dtype=np.float64)
        self.key_addr = np.zeros((0, 16), dtype=np.uint8)
        self.dst_addr = np.zeros((0, 16), dtype=np.uint8)
        self.dst_port = np.zeros(0, dtype=np.uint16)
        self.sample_count = np.zeros(0, dtype=np.uint8)
        self.measured_at = np.zeros(0, dtype=np.int64)  # when measure() last looked at the slot
        self._grow(min(_INITIAL_SLOTS, max_keys))

    # ------------------------------------------------------------------ slots

    @property
    def tracked(self) -> int:
        """Keys held now."""
        return len(self._index_hash)

    def active_slots(self) -> I64:
        """The slots of the keys held now (unsorted)."""
        return self._index_slot.copy()

    def memory_bytes(self) -> int:
        """Bytes held in numpy arrays (slots, index, buckets); samples not included."""
        total: int = sum(int(getattr(self, name).nbytes) for name in _SLOT_ARRAYS)
        total += self._index_hash.nbytes + self._index_slot.nbytes + self._free.nbytes
        for bucket in self.buckets.values():
            total += sum(int(getattr(sums, name).nbytes) for sums in bucket.sums for name in _SUMS_FIELDS)
            total += sum(p.keys.nbytes + p.gen.nbytes for parts in bucket.pairs.values() for p in parts)
        return total

    def _grow(self, capacity: int) -> None:
        old = self._capacity
        if capacity <= old:
            return
        extra = capacity - old

        def widen(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
            shape = (extra, *array.shape[1:])
            return np.concatenate([array, np.zeros(shape, dtype=array.dtype)])

        for name in _SLOT_ARRAYS:
            setattr(self, name, widen(getattr(self, name)))
        # New slots go on the free stack (lowest numbers popped first, for locality).
        free = np.empty(self._nfree + extra, dtype=np.int64)
        free[:extra] = np.arange(capacity - 1, old - 1, -1)
        free[extra:] = self._free[:self._nfree]
        self._free, self._nfree, self._capacity = free, len(free), capacity

    def _release(self, slots: I64) -> None:
        """Forget `slots` (expired or evicted): new generation, zero totals, out of the index."""
        if not len(slots):
            return
        positions = np.searchsorted(self._index_hash, self.hash[slots])
        self._index_hash = np.delete(self._index_hash, positions)
        self._index_slot = np.delete(self._index_slot, positions)
        self.active[slots] = False
        self.gen[slots] += np.uint32(1)
        for name in ("flows", "packets", "bytes", "syn", "rate_packets", "rate_bytes", "last_seen", "measured_at"):
            getattr(self, name)[slots] = 0
        for slot in slots[self.sample_count[slots] > 0].tolist():
            del self.samples[slot]
        self.sample_count[slots] = 0
        if self._nfree + len(slots) > len(self._free):
            self._free = np.concatenate([self._free, np.zeros(len(slots), dtype=np.int64)])
        self._free[self._nfree:self._nfree + len(slots)] = slots
        self._nfree += len(slots)
        self._released += len(slots)
        if self._released > max(self.tracked, 4096):
            self._purge()

    def _purge(self) -> None:
        """Drop the bucket entries of released slots once as many were released as are
        held: memory stays proportional to the keys held, at amortised constant cost."""
        self._released = 0
        for bucket in self.buckets.values():
            self._compact(bucket)

    def _slots_for(self, groups: U64, flows: I64, last: I64, rep: npt.NDArray[np.intp], rows: Rows) -> I64:
        """The slot of each group hash (sorted unique), creating slots for new keys;
        -1 for new keys that lost to more active ones when the table is full."""
        slots = np.full(len(groups), -1, dtype=np.int64)
        if len(self._index_hash):
            pos = np.searchsorted(self._index_hash, groups)
            inside = pos < len(self._index_hash)
            found = np.zeros(len(groups), dtype=bool)
            found[inside] = self._index_hash[pos[inside]] == groups[inside]
            slots[found] = self._index_slot[pos[found]]
        else:
            found = np.zeros(len(groups), dtype=bool)
        new = np.flatnonzero(~found)
        if not len(new):
            return slots
        overflow = self.tracked + len(new) - self.max_keys
        if overflow > 0:
            new = self._make_room(new, overflow, flows, last)
        if not len(new):
            return slots
        if self._nfree < len(new):
            self._grow(min(self.max_keys, max(2 * self._capacity, self.tracked + len(new))))
        taken = self._free[self._nfree - len(new):self._nfree][::-1].copy()
        self._nfree -= len(new)
        slots[new] = taken
        self.hash[taken] = groups[new]
        self.active[taken] = True
        source = rows.index[rep[new]]
        self.key_addr[taken] = rows.key_addr[source]
        if rows.dst_addr is not None:
            self.dst_addr[taken] = rows.dst_addr[source]
        if rows.dst_port is not None:
            self.dst_port[taken] = rows.dst_port[source]
        at = np.searchsorted(self._index_hash, groups[new])
        self._index_hash = np.insert(self._index_hash, at, groups[new])
        self._index_slot = np.insert(self._index_slot, at, taken)
        return slots

    def _make_room(self, new: npt.NDArray[np.intp], overflow: int, flows: I64, last: I64) -> npt.NDArray[np.intp]:
        """Evict the `overflow` least active keys, old or new (new ones are not taken).

        Least active: fewest flows in the window, then idle the longest.
        """
        held = self._index_slot
        activity = np.concatenate([self.flows[held], flows[new]])
        seen = np.concatenate([self.last_seen[held], last[new]])
        # One int64 order: flows first, then last seen (relative, so it fits 32 bits).
        rank = (np.minimum(activity, 0x7FFFFFFF) << 32) + np.clip(seen - seen.min(), 0, 0xFFFFFFFF)
        # Take a little more than needed at once (held keys no busier than the last key
        # that had to go), so that a table at its cap is not partitioned on every batch.
        wanted = min(len(rank), overflow + self.max_keys // 8)
        picked = np.argpartition(rank, wanted - 1)[:wanted] if wanted < len(rank) else np.arange(len(rank))
        picked = picked[np.argsort(rank[picked], kind="stable")]
        losers, spare = picked[:overflow], picked[overflow:]
        if len(spare):
            spare = spare[(spare < len(held)) & (activity[spare] <= activity[losers[-1]])]
        old_losers = np.concatenate([losers[losers < len(held)], spare])
        new_losers = losers[losers >= len(held)] - len(held)
        evicted = held[old_losers]
        self._release(np.sort(evicted))
        self._on_evict(len(evicted) + len(new_losers))
        keep = np.ones(len(new), dtype=bool)
        keep[new_losers] = False
        kept: npt.NDArray[np.intp] = new[keep]
        return kept

    # ------------------------------------------------------------------ time

    def advance(self, now_s: int) -> None:
        """Move the window's head to the bucket of `now_s`: buckets that left the window
        are subtracted and freed, closed ones compacted."""
        head = now_s // self.width
        if self.head is not None and head <= self.head:
            return
        self.head = head
        oldest = head - self.span + 1
        for index in sorted(self.buckets):
            if index < oldest:
                self._expire(self.buckets.pop(index))
            elif index < head and self.buckets[index].chunks > 1:
                self._compact(self.buckets[index])

    def _expire(self, bucket: _Bucket) -> None:
        touched = []
        for sums in bucket.sums:
            live = sums.gen == self.gen[sums.slot]
            chunk = sums.select(live)
            slots = chunk.slot
            for name in _ADDED:
                getattr(self, name)[slots] -= getattr(chunk, name)
            touched.append(slots)
        if touched:
            held: I64 = _sorted_unique(np.concatenate(touched).astype(np.int64))
            self._release(held[self.active[held] & (self.flows[held] <= 0)])

    def _compact(self, bucket: _Bucket) -> None:
        """One chunk per bucket: entries of released slots dropped, sums merged per slot,
        pairs deduplicated and re-capped."""
        if bucket.sums:
            live = [sums.select(sums.gen == self.gen[sums.slot]) for sums in bucket.sums]
            bucket.sums = [_Sums.merge(live) if len(live) > 1 else live[0]]
        for kind, parts in bucket.pairs.items():
            keys = np.concatenate([p.keys[p.gen == self.gen[(p.keys >> _SHIFT).astype(np.int64)]] for p in parts])
            if len(parts) > 1:
                keys = _cap_per_slot(_sorted_unique(keys), self.rule.distinct[kind])
            bucket.pairs[kind] = [_Pairs(keys, self.gen[(keys >> _SHIFT).astype(np.int64)])]

    # ------------------------------------------------------------------ input

    def add(self, rows: Rows) -> I64:
        """Count `rows` into the window; returns the slots they touched (sorted)."""
        nothing = np.zeros(0, dtype=np.int64)
        if not len(rows.time):
            return nothing
        self.advance(int(rows.time.max()))
        assert self.head is not None
        bucket = rows.time // self.width
        oldest = self.head - self.span + 1
        late = bucket < oldest
        if late.any():
            self.late += int(late.sum())
            keep = np.flatnonzero(~late)
            rows = _take(rows, keep)
            bucket = bucket[keep]
            if not len(keep):
                return nothing
        low, high = int(bucket.min()), int(bucket.max())
        if low == high:
            return np.sort(self._add_bucket(low, rows))
        parts = [self._add_bucket(index, _take(rows, np.flatnonzero(bucket == index)))
                 for index in np.unique(bucket).tolist()]
        touched: I64 = _sorted_unique(np.concatenate(parts))
        return touched

    def _add_bucket(self, index: int, rows: Rows) -> I64:
        n = len(rows.time)
        order = np.argsort(rows.group)
        hashes = rows.group[order]
        first = np.empty(n, dtype=bool)
        first[0] = True
        np.not_equal(hashes[1:], hashes[:-1], out=first[1:])
        starts = np.flatnonzero(first)
        groups = hashes[starts]
        flows = np.diff(np.append(starts, n)).astype(np.int64)
        last = np.maximum.reduceat(rows.data[order, TIME], starts)
        slots = self._slots_for(groups, flows, last, order[starts], rows)
        group_of_row = np.empty(n, dtype=np.intp)
        group_of_row[order] = np.cumsum(first) - 1
        kept = slots >= 0
        if not kept.all():
            row_kept = kept[group_of_row][order]
            order = order[row_kept]
            group_ids = np.flatnonzero(kept)
            if not len(group_ids):
                return np.zeros(0, dtype=np.int64)
            remap = np.full(len(slots), -1, dtype=np.intp)
            remap[group_ids] = np.arange(len(group_ids))
            sorted_groups = remap[group_of_row[order]]
            starts = np.flatnonzero(np.concatenate(([True], sorted_groups[1:] != sorted_groups[:-1])))
            slots, flows, last = slots[group_ids], flows[group_ids], last[group_ids]
            row_slot = np.full(n, -1, dtype=np.int64)
            row_slot[order] = slots[sorted_groups]
        else:
            row_slot = slots[group_of_row]

        data = rows.data[order]
        added = np.add.reduceat(data[:, PACKETS:SYN_ONLY + 1], starts, axis=0)
        lowest = np.minimum.reduceat(data[:, START:TIME + 1], starts, axis=0)
        highest = np.maximum.reduceat(data[:, TIME:END + 1], starts, axis=0)
        # A flow longer than the window counts the window's share of its packets in rates.
        share = np.minimum(1.0, self.rule.window_s / np.maximum(data[:, END] - data[:, START], 1))
        rates = np.add.reduceat(data[:, PACKETS:BYTES + 1] * share[:, None], starts, axis=0).astype(np.float32)
        sums = _Sums(
            slot=slots.astype(np.int32), gen=self.gen[slots], flows=flows.astype(np.int32),
            packets=added[:, 0], bytes=added[:, 1], syn=added[:, 2].astype(np.int32),
            rate_packets=rates[:, 0], rate_bytes=rates[:, 1],
            start=lowest[:, 0].astype(np.uint32), end=highest[:, 1].astype(np.uint32),
            first=lowest[:, 1].astype(np.uint32), last=last.astype(np.uint32),
        )
        for name in _ADDED:
            getattr(self, name)[slots] += getattr(sums, name)
        self.last_seen[slots] = np.maximum(self.last_seen[slots], last)
        bucket = self.buckets.setdefault(index, _Bucket())
        bucket.sums.append(sums.select(np.argsort(slots)))
        if self.rule.distinct:
            valid = row_slot >= 0
            owner = row_slot[valid].astype(np.uint64) << _SHIFT
            for kind, cap in self.rule.distinct.items():
                keys = _cap_per_slot(_sorted_unique(owner | rows.values[kind][valid].astype(np.uint64)), cap)
                bucket.pairs.setdefault(kind, []).append(_Pairs(keys, self.gen[(keys >> _SHIFT).astype(np.int64)]))
        if bucket.chunks >= _MAX_CHUNKS:
            self._compact(bucket)
        return slots

    # ------------------------------------------------------------------ evaluation

    def screen(self, slots: I64 | None = None) -> I64:
        """Keys (of `slots`, or all held) whose totals pass every summed threshold: the
        only ones worth an exact look.  Rates are bounded with a 1 s span here."""
        rule = self.rule
        if slots is None:
            slots = np.sort(self._index_slot)
        if not len(slots):
            return slots
        ok = self.active[slots] & (self.flows[slots] >= rule.least_flows)
        if rule.min_packets:
            ok &= self.packets[slots] >= rule.min_packets
        if rule.min_bytes:
            ok &= self.bytes[slots] >= rule.min_bytes
        if rule.min_pps:
            ok &= self.rate_packets[slots] >= rule.min_pps
        if rule.min_bps:
            ok &= self.rate_bytes[slots] * 8 >= rule.min_bps
        if rule.min_syn_ratio:
            ok &= self.syn[slots] >= rule.min_syn_ratio * self.flows[slots]
        selected: I64 = slots[ok]
        return selected

    def warm(self, slots: I64) -> I64:
        """Keys half way to the summed thresholds: they start keeping sample flows."""
        rule = self.rule
        ok = self.flows[slots] * 2 >= rule.least_flows
        if rule.min_packets:
            ok &= self.packets[slots] * 2 >= rule.min_packets
        if rule.min_bytes:
            ok &= self.bytes[slots] * 2 >= rule.min_bytes
        if rule.min_pps:
            ok &= self.rate_packets[slots] * 2 >= rule.min_pps
        if rule.min_bps:
            ok &= self.rate_bytes[slots] * 16 >= rule.min_bps
        selected: I64 = slots[ok]
        return selected

    def measure(self, slots: I64) -> Candidates:
        """Exact statistics of `slots` (sorted, unique) over the window."""
        k = len(slots)
        start = np.full(k, np.iinfo(np.int64).max, dtype=np.int64)
        end = np.zeros(k, dtype=np.int64)
        first = np.full(k, np.iinfo(np.int64).max, dtype=np.int64)
        last = np.zeros(k, dtype=np.int64)
        gens = self.gen[slots]
        distinct_keys: dict[str, list[U64]] = {kind: [] for kind in self.rule.distinct}
        low_keys = slots.astype(np.uint64) << _SHIFT
        high_keys = (slots + 1).astype(np.uint64) << _SHIFT
        for bucket in self.buckets.values():
            for sums in bucket.sums:
                lo = np.searchsorted(sums.slot, slots, "left")
                counts = np.searchsorted(sums.slot, slots, "right") - lo
                at = _ranges(lo, counts)
                if not len(at):
                    continue
                owner = np.repeat(np.arange(k), counts)
                live = sums.gen[at] == gens[owner]
                at, owner = at[live], owner[live]
                np.minimum.at(start, owner, sums.start[at])
                np.maximum.at(end, owner, sums.end[at])
                np.minimum.at(first, owner, sums.first[at])
                np.maximum.at(last, owner, sums.last[at])
            for kind, parts in bucket.pairs.items():
                for pairs in parts:
                    lo = np.searchsorted(pairs.keys, low_keys, "left")
                    counts = np.searchsorted(pairs.keys, high_keys, "left") - lo
                    at = _ranges(lo, counts)
                    if len(at):
                        owner = np.repeat(np.arange(k), counts)
                        distinct_keys[kind].append(pairs.keys[at[pairs.gen[at] == gens[owner]]])
        distinct: dict[str, I64] = {}
        for kind, found in distinct_keys.items():
            keys = _sorted_unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.uint64)
            owner_slots = (keys >> _SHIFT).astype(np.int64)
            distinct[kind] = np.bincount(np.searchsorted(slots, owner_slots), minlength=k).astype(np.int64)[:k]
        window = self.rule.window_s
        span = np.clip(np.minimum(end - np.minimum(start, end), window), 1.0, window)
        return Candidates(
            slot=slots, flows=self.flows[slots].copy(), packets=self.packets[slots].copy(),
            bytes=self.bytes[slots].copy(), syn=self.syn[slots].copy(),
            pps=self.rate_packets[slots] / span, bps=self.rate_bytes[slots] * 8 / span,
            first=np.where(first == np.iinfo(np.int64).max, last, first), last=last, distinct=distinct,
        )

    def describe(self, slot: int) -> tuple[str, str | None, int | None]:
        """The key of `slot`: its address, and the destination address and port when the
        rule groups by them."""
        rule = self.rule
        dst = addr_to_str(self.dst_addr[slot]) if rule.same_dst_ip and rule.key == "src" else None
        port = int(self.dst_port[slot]) if rule.same_dst_port else None
        return addr_to_str(self.key_addr[slot]), dst, port


def _take(rows: Rows, keep: npt.NDArray[np.intp]) -> Rows:
    return Rows(
        index=rows.index[keep], group=rows.group[keep], data=rows.data[keep],
        values={kind: values[keep] for kind, values in rows.values.items()},
        key_addr=rows.key_addr, dst_addr=rows.dst_addr, dst_port=rows.dst_port,
    )
