"""The routing table BGP enrichment looks addresses up in: longest-prefix match over a full
table (1M IPv4 and 200k IPv6 prefixes), batched, while updates keep arriving.

Why this structure.  A batch brings tens of thousands of distinct addresses, already
sorted (they come from ``np.unique``), and the process must stay within its memory
target with the table in it.  A patricia trie (pytricia) answers about 1M lookups/s, one
Python call each, and costs about 150 bytes a prefix before any attribute (155 MB for
1M IPv4 prefixes here), plus a Python object per route for the attributes.  Here instead:

* routes are **columns** (:class:`RouteTable`): the 18-byte prefix key of
  :mod:`..bgp.route`, origin AS, neighbour AS, local preference, next-hop id (next hops
  are few and interned in :class:`NextHopTable`), and the AS path and communities as
  flat uint32 arrays with offsets.  No Python object per route: about 50 bytes a route,
  plus about 25 for the lookup intervals;
* the prefixes of each family are flattened into **sorted disjoint intervals**, each
  naming its most specific covering route (:func:`_segments`), so a lookup is one
  ``np.searchsorted`` over the batch (IPv4 as uint32, IPv6 as 16-byte big-endian
  strings, whose byte order is numeric order): about ten times pytricia's rate on a
  full table (bench/rib.py);
* updates go to a small **overlay** (changed prefixes since the last rebuild, latest
  state each, withdrawals included).  An address is answered from the base intervals
  unless a changed prefix covers it; then its answer is the longer of the most specific
  live overlay route and the most specific *unchanged* base route (walking up the base's
  parent links past changed ones).  That is exact, and cheap because the overlay is
  small.  The overlay is merged into a rebuilt base (about a second for a full table,
  in the writer's thread, off the lookup path) when it passes ``merge_rows`` routes.

Readers never lock: :meth:`RibState.view` hands out an immutable :class:`RibView`; the
view of the latest changes is built on first use after a change (by the reader that
asks, outside the writer's lock), and a rebuilt base is swapped in by reference.
Rebuilds return their temporaries to the system (:func:`release_freed_memory`).
"""

from __future__ import annotations

import array
import ctypes
import ctypes.util
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry, Gauge

from ..batch import U8, ListColumn, addr_is_v4, str_to_addr
from .route import KEY_LEN, V4, IPNetwork, RouteAttributes, RouteParts, key_to_network, route_parts

KEY = np.dtype(f"S{KEY_LEN}")
Rows = npt.NDArray[np.int64]
U32 = npt.NDArray[np.uint32]
U64 = npt.NDArray[np.uint64]

_FIRST_V6_KEY = np.array([b"\x05"], dtype=KEY)  # keys start with the family: 4 sorts before 6
_UINT_COLUMNS = ("origin_as", "neighbor_as", "local_pref")


class NextHopTable:
    """Next hops interned to small ids: a full table has a handful of distinct next hops,
    so a route stores 4 bytes instead of 16.  Append-only, so ids stay valid for every
    table and view built with this table."""

    def __init__(self) -> None:
        self._ids: dict[bytes, int] = {}
        self._raw = bytearray()

    def id(self, hop: bytes) -> int:
        found = self._ids.get(hop)
        if found is None:
            found = self._ids[hop] = len(self._ids)
            self._raw += hop
        return found

    def __len__(self) -> int:
        return len(self._ids)

    def snapshot(self) -> U8:
        """(k, 16) next hops so far; later ids are not in it."""
        return np.frombuffer(bytes(self._raw), dtype=np.uint8).reshape(-1, 16)


@dataclass(frozen=True, slots=True)
class RouteTable:
    """Routes as columns (see the module docstring); row i is one prefix and its route."""

    keys: npt.NDArray[np.bytes_]  # S18 prefix keys
    origin_as: U32
    neighbor_as: U32
    local_pref: U32
    next_hop: U32  # ids into the NextHopTable the table was built with
    path_offsets: U32  # n + 1: row i's AS path is path_values[path_offsets[i]:path_offsets[i + 1]]
    path_values: U32
    comm_offsets: U32  # n + 1, same for the standard communities
    comm_values: U32

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def nbytes(self) -> int:
        return sum(int(getattr(self, name).nbytes) for name in self.__dataclass_fields__)

    def take(self, rows: npt.NDArray[np.integer]) -> RouteTable:
        """The table of `rows` (in that order), lists copied compactly."""
        path_offsets, path_values = _take_lists(self.path_offsets, self.path_values, rows)
        comm_offsets, comm_values = _take_lists(self.comm_offsets, self.comm_values, rows)
        return RouteTable(self.keys[rows], self.origin_as[rows], self.neighbor_as[rows], self.local_pref[rows],
                          self.next_hop[rows], path_offsets.astype(np.uint32), path_values,
                          comm_offsets.astype(np.uint32), comm_values)

    @staticmethod
    def gather(n: int, parts: Sequence[tuple[npt.NDArray[np.bool_], RouteTable, Rows]]) -> RouteTable:
        """A table of `n` rows filled from several tables: each part gives the output rows
        it fills (a mask), its table and the rows of that table, in output order."""
        keys = np.zeros(n, dtype=KEY)
        uints = {name: np.zeros(n, dtype=np.uint32) for name in ("origin_as", "neighbor_as", "local_pref", "next_hop")}
        for mask, table, rows in parts:
            keys[mask] = table.keys[rows]
            for name, column in uints.items():
                column[mask] = getattr(table, name)[rows]
        path = _gather_lists(n, [(mask, t.path_offsets, t.path_values, rows) for mask, t, rows in parts])
        comm = _gather_lists(n, [(mask, t.comm_offsets, t.comm_values, rows) for mask, t, rows in parts])
        return RouteTable(keys, uints["origin_as"], uints["neighbor_as"], uints["local_pref"], uints["next_hop"],
                          path[0].astype(np.uint32), path[1], comm[0].astype(np.uint32), comm[1])

    def canonical(self) -> RouteTable:
        """Sorted by key, one row per prefix (the last one given wins, as in a stream)."""
        if not len(self.keys):
            return self
        order = np.argsort(self.keys, kind="stable")
        ordered = self.keys[order]
        last = np.ones(len(order), dtype=bool)
        last[:-1] = ordered[1:] != ordered[:-1]
        return self.take(order[last])


def _take_lists(offsets: U32, values: U32, rows: npt.NDArray[np.integer]) -> tuple[U64, U32]:
    """Offsets (m + 1) and values of the lists of `rows`, gathered without a Python loop."""
    rows = np.asarray(rows, dtype=np.int64)
    starts = offsets[rows].astype(np.int64)
    lengths = offsets[rows + 1].astype(np.int64) - starts
    out = np.zeros(len(rows) + 1, dtype=np.uint64)
    np.cumsum(lengths, out=out[1:])
    total = int(out[-1])
    if not total:
        return out, np.zeros(0, dtype=np.uint32)
    # Element k of the output is element k - out[row] of its row, at starts[row] + that.
    shift = np.repeat(starts - out[:-1].astype(np.int64), lengths)
    shift += np.arange(total)
    return out, values[shift]


def _gather_lists(n: int, parts: Sequence[tuple[npt.NDArray[np.bool_], U32, U32, Rows]]) -> tuple[U64, U32]:
    """Offsets (n + 1) and values of lists taken from several (offsets, values) pairs:
    each part fills the output rows where its mask is set from its `rows`, in order."""
    lengths = np.zeros(n, dtype=np.int64)
    taken = []
    for mask, offsets, values, rows in parts:
        part_offsets, part_values = _take_lists(offsets, values, rows)
        lengths[mask] = np.diff(part_offsets).astype(np.int64)
        taken.append((mask, part_offsets, part_values))
    out = np.zeros(n + 1, dtype=np.uint64)
    np.cumsum(lengths, out=out[1:])
    values_out = np.zeros(int(out[-1]), dtype=np.uint32)
    for mask, part_offsets, part_values in taken:
        if not len(part_values):
            continue
        part_lengths = np.diff(part_offsets).astype(np.int64)
        # Element k of the part goes to its row's start in the output, plus k's place in it.
        shift = np.repeat(out[:-1][mask].astype(np.int64) - part_offsets[:-1].astype(np.int64), part_lengths)
        shift += np.arange(len(part_values))
        values_out[shift] = part_values
    return out, values_out


def empty_table() -> RouteTable:
    zero = np.zeros(0, dtype=np.uint32)
    one = np.zeros(1, dtype=np.uint32)
    return RouteTable(np.zeros(0, dtype=KEY), zero, zero, zero, zero, one, zero, one, zero)


class RouteBuilder:
    """Collects routes one by one (array.array appends, no numpy per route) into a
    :class:`RouteTable`; rows are numbered in the order added."""

    def __init__(self, next_hops: NextHopTable) -> None:
        self.next_hops = next_hops
        self.release()

    def release(self) -> None:
        """Drop the rows collected so far (once :meth:`table` was copied from them)."""
        self._keys = bytearray()
        self._origin = array.array("I")
        self._neighbor = array.array("I")
        self._local_pref = array.array("I")
        self._hop = array.array("I")
        self._path_ends = array.array("I", [0])
        self._path = array.array("I")
        self._comm_ends = array.array("I", [0])
        self._comm = array.array("I")

    def __len__(self) -> int:
        return len(self._origin)

    @property
    def nbytes(self) -> int:
        """Bytes the rows collected so far hold (their buffers' used part)."""
        arrays = (self._origin, self._neighbor, self._local_pref, self._hop, self._path_ends, self._path,
                  self._comm_ends, self._comm)
        return len(self._keys) + sum(len(a) * a.itemsize for a in arrays)

    def keys(self, first: int = 0) -> npt.NDArray[np.void]:
        """A copy of the prefix keys of rows `first` on, one KEY_LEN-byte item a row."""
        return np.frombuffer(bytes(self._keys[first * KEY_LEN:]), dtype=f"V{KEY_LEN}")

    def add(self, key: bytes, route: RouteAttributes) -> int:
        """Append `route` for the prefix `key`; its row number."""
        self.extend(((key, route_parts(route)),))
        return len(self._origin) - 1

    def extend(self, rows: Iterable[tuple[bytes, RouteParts]]) -> int:
        """Append the routes of `rows` (prefix key, attributes); how many.  The loop of a
        full table's load: its appends are bound once, not looked up per route."""
        keys, hop_id = self._keys, self.next_hops.id
        origin, neighbor, local_pref, hop = (self._origin.append, self._neighbor.append, self._local_pref.append,
                                             self._hop.append)
        path, path_ends, comm, comm_ends = self._path, self._path_ends.append, self._comm, self._comm_ends.append
        added = 0
        for key, (as_path, origin_as, neighbor_as, next_hop, pref, communities) in rows:
            if len(key) != KEY_LEN:
                raise ValueError(f"a prefix key is {KEY_LEN} bytes, not {len(key)}")
            keys += key
            origin(origin_as)
            neighbor(neighbor_as)
            local_pref(pref)
            hop(hop_id(next_hop))
            path.extend(as_path)
            path_ends(len(path))
            comm.extend(communities)
            comm_ends(len(comm))
            added += 1
        return added

    def table(self, copy: bool = True) -> RouteTable:
        """The rows so far.  ``copy=False`` shares the builder's memory (no copy of a full
        table): the builder must then not be added to any more."""

        def arr(data: array.array[int]) -> U32:
            view = np.frombuffer(data, dtype=np.uint32) if len(data) else np.zeros(0, dtype=np.uint32)
            return view.copy() if copy else view

        keys = np.frombuffer(self._keys, dtype=KEY) if self._keys else np.zeros(0, dtype=KEY)
        return RouteTable(keys.copy() if copy else keys, arr(self._origin), arr(self._neighbor),
                          arr(self._local_pref), arr(self._hop), arr(self._path_ends), arr(self._path),
                          arr(self._comm_ends), arr(self._comm))


def _split_keys(keys: npt.NDArray[np.bytes_], family: int) -> tuple[U64, U64, npt.NDArray[np.uint8]]:
    """(network high 64 bits, low 64 bits, prefix length) of same-family keys; IPv4
    networks are the plain 32-bit number in the low word."""
    raw = np.ascontiguousarray(keys).view(np.uint8).reshape(-1, KEY_LEN)
    plen = raw[:, 17].copy()
    if family == V4:
        lo = raw[:, 13:17].copy().view(">u4").ravel().astype(np.uint64)
        return np.zeros(len(keys), dtype=np.uint64), lo, plen
    halves = raw[:, 1:17].copy().view(">u8").reshape(-1, 2).astype(np.uint64)
    return halves[:, 0].copy(), halves[:, 1].copy(), plen


def _segments(hi: U64, lo: U64, plen: npt.NDArray[np.uint8], bits: int
              ) -> tuple[U64, U64, npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Flatten nested prefixes into disjoint intervals.

    Input: distinct prefixes as (hi, lo, length) in a `bits`-wide space (32: all in
    `lo`).  Output: the start (hi, lo) of each interval, sorted; the prefix (input index)
    most specific over it, -1 for a gap; and each prefix's parent (the next less
    specific prefix, -1).

    Prefixes nest or are disjoint, so a sweep over open/close events is a stack: the
    most specific prefix at a point is the last one opened at the current depth.  That
    is found for all points at once by searching (depth, event index) pairs of the
    opens, which keeps the whole build in numpy.  Event i < p opens prefix i, event
    p + i closes it (at the address just past its end, which may be 2**bits).
    """
    p = len(plen)
    host = (bits - plen.astype(np.int64)).astype(np.uint64)
    one = np.uint64(1)
    if bits == 32:
        # One sortable number per event: position (33 bits), then closes before opens,
        # then opens from the shortest prefix to the longest.
        key = np.concatenate([lo, lo + (one << host)])  # opens, then closes (just past the end)
        key <<= np.uint64(7)
        key[:p] |= np.uint64(64) | plen.astype(np.uint64)
        order = np.argsort(key)
        pos_lo = key[order]
        del key
        pos_lo >>= np.uint64(7)
        pos_c = (pos_lo >> np.uint64(32)).astype(np.uint8)
        pos_hi = None  # all zero
    else:
        low_part = host < 64
        inc_lo = np.where(low_part, one << np.where(low_part, host, 0), np.uint64(0))
        mid = (host >= 64) & (host < 128)
        inc_hi = np.where(mid, one << np.where(mid, host - np.uint64(64), 0), np.uint64(0))
        end_lo = lo + inc_lo
        end_hi = hi + inc_hi + (end_lo < lo).astype(np.uint64)
        carry = ((end_hi < hi) | (host == 128)).astype(np.uint8)
        pos_c = np.concatenate([np.zeros(p, dtype=np.uint8), carry])
        pos_hi = np.concatenate([hi, end_hi])
        pos_lo = np.concatenate([lo, end_lo])
        tie = np.concatenate([256 + plen.astype(np.uint16), np.zeros(p, dtype=np.uint16)])
        order = np.lexsort((tie, pos_lo, pos_hi, pos_c))
        pos_c, pos_hi, pos_lo = pos_c[order], pos_hi[order], pos_lo[order]
    is_open = order < p
    order[~is_open] -= p  # now the prefix of each event
    item = order.astype(np.int32)
    del order
    step = is_open.astype(np.int8)
    step *= 2
    step -= 1  # +1 opens, -1 closes
    depth = np.cumsum(step, dtype=np.int32)
    del step
    events = 2 * p + 1
    opens = np.flatnonzero(is_open)
    del is_open
    open_depth = depth[opens].astype(np.int64)
    open_item = item[opens]
    del item
    open_key = open_depth * events + opens
    by_key = np.argsort(open_key)
    sorted_key, sorted_depth, sorted_item = open_key[by_key], open_depth[by_key], open_item[by_key]
    del open_key, by_key

    def last_open(at_depth: npt.NDArray[np.int64], upto: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """The prefix opened last at `at_depth` no later than event `upto`, or -1."""
        j = np.searchsorted(sorted_key, at_depth * events + upto, side="right") - 1
        jj = np.maximum(j, 0)
        ok = (at_depth > 0) & (j >= 0) & (sorted_depth[jj] == at_depth)
        return np.where(ok, sorted_item[jj], -1).astype(np.int64)

    parent = np.full(p, -1, dtype=np.int64)
    parent[open_item] = last_open(open_depth - 1, opens)
    del open_item, open_depth, opens
    change = np.ones(2 * p, dtype=bool)
    change[:-1] = (pos_c[1:] != pos_c[:-1]) | (pos_lo[1:] != pos_lo[:-1])
    if pos_hi is not None:
        change[:-1] |= pos_hi[1:] != pos_hi[:-1]
    last = np.flatnonzero(change)  # the last event at each distinct position
    del change
    last = last[pos_c[last] == 0]  # not the position just past the end of the space
    seg_item = last_open(depth[last].astype(np.int64), last)
    keep = np.ones(len(last), dtype=bool)
    keep[1:] = seg_item[1:] != seg_item[:-1]
    last = last[keep]
    starts_hi = np.zeros(len(last), dtype=np.uint64) if pos_hi is None else pos_hi[last]
    return starts_hi, pos_lo[last], seg_item[keep], parent


class _FamilyIndex:
    """Sorted interval starts of one family and the row over each interval."""

    __slots__ = ("family", "rows", "starts")

    def __init__(self, family: int, starts: npt.NDArray[np.generic], rows: npt.NDArray[np.int32]) -> None:
        self.family = family
        self.starts = starts
        self.rows = rows

    @property
    def nbytes(self) -> int:
        return int(self.starts.nbytes + self.rows.nbytes)

    @classmethod
    def build(cls, family: int, keys: npt.NDArray[np.bytes_], rows: Rows
              ) -> tuple[_FamilyIndex, npt.NDArray[np.int32]]:
        """The index of distinct same-family `keys` whose routes are `rows`; with the
        parent row of each key (-1 for none), aligned with `keys`."""
        hi, lo, plen = _split_keys(keys, family)
        seg_hi, seg_lo, seg_item, parent = _segments(hi, lo, plen, 32 if family == V4 else 128)
        seg_rows = np.where(seg_item >= 0, rows[np.maximum(seg_item, 0)], -1) if len(rows) else seg_item
        parent_rows = np.where(parent >= 0, rows[np.maximum(parent, 0)], -1) if len(rows) else parent
        if family == V4:
            starts: npt.NDArray[np.generic] = seg_lo.astype(np.uint32)
        else:
            both = np.empty((len(seg_hi), 2), dtype=">u8")
            both[:, 0], both[:, 1] = seg_hi, seg_lo
            starts = both.view("S16").ravel()
        # int32 rows: half the memory, and a table never nears 2**31 routes.
        return cls(family, starts, seg_rows.astype(np.int32)), parent_rows.astype(np.int32)

    def lookup(self, queries: npt.NDArray[np.generic]) -> Rows:
        """Row of the most specific route over each query (same form as starts), -1."""
        if not len(self.starts):
            return np.full(len(queries), -1, dtype=np.int64)
        i = np.searchsorted(self.starts, queries, side="right") - 1
        return np.where(i >= 0, self.rows[np.maximum(i, 0)], -1).astype(np.int64)


def _queries(addrs: U8, v4: npt.NDArray[np.bool_]) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.bytes_]]:
    """The (m, 16) addresses in each family's lookup form: IPv4 uint32, IPv6 S16."""
    q4 = np.ascontiguousarray(addrs[v4, 12:]).view(">u4").ravel().astype(np.uint32)
    q6 = np.ascontiguousarray(addrs[~v4]).view("S16").ravel()
    return q4, q6


@dataclass(frozen=True, slots=True)
class _Base:
    """A canonical table with its family indexes and parent links (row -> row)."""

    table: RouteTable
    v4: _FamilyIndex
    v6: _FamilyIndex
    parent: npt.NDArray[np.int32]
    n_v4: int

    @classmethod
    def build(cls, table: RouteTable) -> _Base:
        """`table` must be canonical (sorted by key, distinct keys)."""
        n_v4 = int(np.searchsorted(table.keys, _FIRST_V6_KEY)[0])
        v4, parent4 = _FamilyIndex.build(V4, table.keys[:n_v4], np.arange(n_v4, dtype=np.int64))
        v6, parent6 = _FamilyIndex.build(6, table.keys[n_v4:], np.arange(n_v4, len(table), dtype=np.int64))
        return cls(table, v4, v6, np.concatenate([parent4, parent6]), n_v4)

    @property
    def nbytes(self) -> int:
        return self.table.nbytes + self.v4.nbytes + self.v6.nbytes + int(self.parent.nbytes)


@dataclass(frozen=True, slots=True)
class _Overlay:
    """Changes since the base was built, indexed: `live` finds the most specific changed
    route still present, `cover` whether any change (withdrawals too) covers an address."""

    table: RouteTable  # rows referenced by `live` (other rows are superseded changes)
    live4: _FamilyIndex
    live6: _FamilyIndex
    cover4: _FamilyIndex
    cover6: _FamilyIndex
    base_dirty: npt.NDArray[np.bool_]  # base rows whose prefix changed
    live_v4: int
    live_v6: int

    @property
    def nbytes(self) -> int:
        indexes = (self.live4, self.live6, self.cover4, self.cover6)
        return self.table.nbytes + sum(i.nbytes for i in indexes) + int(self.base_dirty.nbytes)


@dataclass(frozen=True, slots=True)
class Route:
    """One route as the CLI and API show it."""

    prefix: IPNetwork
    attributes: RouteAttributes


class RibView:
    """The RIB at one moment, immutable: safe to use from any thread while it changes.

    :meth:`lookup` answers row ids (-1: no route) for a whole array of addresses; the
    column methods turn row ids into per-row values.
    """

    def __init__(self, base: _Base, overlay: _Overlay | None, next_hops: U8, version: int = 0) -> None:
        self._base = base
        self._overlay = overlay
        self._next_hops = next_hops
        self.version = version
        dirty4 = int(overlay.base_dirty[:base.n_v4].sum()) if overlay else 0
        dirty6 = int(overlay.base_dirty[base.n_v4:].sum()) if overlay else 0
        self.prefixes_v4 = base.n_v4 - dirty4 + (overlay.live_v4 if overlay else 0)
        self.prefixes_v6 = len(base.table) - base.n_v4 - dirty6 + (overlay.live_v6 if overlay else 0)

    @classmethod
    def empty(cls, version: int = 0) -> RibView:
        return cls(_Base.build(empty_table()), None, np.zeros((0, 16), dtype=np.uint8), version)

    def __len__(self) -> int:
        return self.prefixes_v4 + self.prefixes_v6

    @property
    def nbytes(self) -> int:
        """Bytes of this view's arrays: the base table and its lookup intervals, the overlay
        of changes and the next hops."""
        overlay = self._overlay.nbytes if self._overlay is not None else 0
        return self._base.nbytes + overlay + int(self._next_hops.nbytes)

    def lookup(self, addrs: U8) -> Rows:
        """Row of the longest-prefix match of each (m, 16) address (IPv4 mapped), -1."""
        out = np.full(len(addrs), -1, dtype=np.int64)
        if not len(addrs) or not len(self):
            return out
        v4 = addr_is_v4(addrs)
        q4, q6 = _queries(addrs, v4)
        base, ov = self._base, self._overlay
        out[v4] = self._family_lookup(q4, base.v4, ov.live4 if ov else None, ov.cover4 if ov else None)
        out[~v4] = self._family_lookup(q6, base.v6, ov.live6 if ov else None, ov.cover6 if ov else None)
        return out

    def _family_lookup(self, queries: npt.NDArray[np.generic], base_index: _FamilyIndex,
                       live: _FamilyIndex | None, cover: _FamilyIndex | None) -> Rows:
        rows = base_index.lookup(queries)
        if self._overlay is None or live is None or cover is None or not len(cover.starts):
            return rows
        covered = np.flatnonzero(cover.lookup(queries) >= 0)
        if not len(covered):
            return rows
        dirty, parent = self._overlay.base_dirty, self._base.parent
        from_base = rows[covered]
        while True:  # climb to the most specific unchanged base route (a few levels at most)
            climb = from_base >= 0
            climb[climb] = dirty[from_base[climb]]
            if not climb.any():
                break
            from_base[climb] = parent[from_base[climb]]
        from_overlay = live.lookup(queries[covered])
        base_len = _lengths(self._base.table.keys, from_base)
        ov_len = _lengths(self._overlay.table.keys, from_overlay)
        rows[covered] = np.where(ov_len > base_len, from_overlay + len(self._base.table), from_base)
        return rows

    # Columns of looked-up rows (-1 gives zeros / empty lists).

    def _parts(self, rows: Rows) -> list[tuple[npt.NDArray[np.bool_], Rows, RouteTable]]:
        n_base = len(self._base.table)
        parts = [((rows >= 0) & (rows < n_base), rows, self._base.table)]
        if self._overlay is not None:
            parts.append((rows >= n_base, rows - n_base, self._overlay.table))
        return parts

    def uint_column(self, name: str, rows: Rows) -> U32:
        """One of origin_as, neighbor_as, local_pref for each row."""
        if name not in _UINT_COLUMNS:
            raise KeyError(f"no route column {name!r}")
        out = np.zeros(len(rows), dtype=np.uint32)
        for mask, local, table in self._parts(rows):
            out[mask] = getattr(table, name)[local[mask]]
        return out

    def next_hops(self, rows: Rows) -> U8:
        """(m, 16) next hop of each row (zeros: none)."""
        ids = np.full(len(rows), -1, dtype=np.int64)
        for mask, local, table in self._parts(rows):
            ids[mask] = table.next_hop[local[mask]]
        out = np.zeros((len(rows), 16), dtype=np.uint8)
        known = ids >= 0
        out[known] = self._next_hops[ids[known]]
        return out

    def list_column(self, name: str, rows: Rows) -> ListColumn:
        """``as_path`` or ``communities`` of each row, as a flow ListColumn."""
        if name not in ("as_path", "communities"):
            raise KeyError(f"no route list {name!r}")
        prefix = "path" if name == "as_path" else "comm"
        offsets, values = _gather_lists(len(rows), [
            (mask, getattr(table, f"{prefix}_offsets"), getattr(table, f"{prefix}_values"), local[mask])
            for mask, local, table in self._parts(rows)])
        return ListColumn(offsets, values)

    def route(self, ip: str) -> Route | None:
        """The route of one address (text), for the CLI and API; None without one."""
        row = int(self.lookup(np.frombuffer(str_to_addr(ip), dtype=np.uint8).reshape(1, 16))[0])
        if row < 0:
            return None
        table, local = self._base.table, row
        if row >= len(table) and self._overlay is not None:
            table, local = self._overlay.table, row - len(table)
        path = table.path_values[table.path_offsets[local]:table.path_offsets[local + 1]]
        comms = table.comm_values[table.comm_offsets[local]:table.comm_offsets[local + 1]]
        attrs = RouteAttributes(tuple(int(a) for a in path), int(table.origin_as[local]),
                                int(table.neighbor_as[local]), bytes(self._next_hops[table.next_hop[local]]),
                                int(table.local_pref[local]), tuple(int(c) for c in comms))
        return Route(key_to_network(bytes(table.keys[local]).ljust(KEY_LEN, b"\0")), attrs)


def _lengths(keys: npt.NDArray[np.bytes_], rows: Rows) -> npt.NDArray[np.int64]:
    """Prefix length of the key of each row, -1 for row -1."""
    out = np.full(len(rows), -1, dtype=np.int64)
    known = rows >= 0
    if known.any():
        raw = np.ascontiguousarray(keys[rows[known]]).view(np.uint8).reshape(-1, KEY_LEN)
        out[known] = raw[:, 17]
    return out


def _load_libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


_LIBC = _load_libc()


def release_freed_memory() -> None:
    """Give memory freed by a table rebuild back to the system.

    A rebuild frees a few hundred MB of temporaries and the previous table; glibc keeps
    much of it in its heap (its mmap threshold grows after large frees), which leaves
    the process' RSS at its peak.  ``malloc_trim`` returns it (measured here: RSS back
    from 400 to 170 MB after a full-table build).  No-op without glibc.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def rib_bytes_gauge(registry: CollectorRegistry | None, state: RibState,
                    loading: Callable[[], RouteBuilder | None]) -> Gauge:
    """``flowenricher_rib_bytes``: RibState.nbytes plus the full load in progress, if any
    (`loading`: its builder), whichever source (GoBGP's mirror, a prefix file) fills it."""
    gauge = Gauge("flowenricher_rib_bytes", "Bytes the RIB holds: its arrays, changes not yet merged and a full "
                  "load in progress", registry=registry)

    def measure() -> int:
        builder = loading()
        return state.nbytes() + (builder.nbytes if builder is not None else 0)

    gauge.set_function(measure)
    return gauge


class RibState:
    """The RIB that one writer thread updates while enrichment reads :meth:`view`.

    The writer calls :meth:`replace` with a whole table (a full load) and :meth:`apply`
    with changes; readers call :meth:`view`.  See the module docstring for how reads
    stay lock-free and exact while changes are pending.
    """

    def __init__(self, merge_rows: int = 50_000) -> None:
        self.merge_rows = merge_rows
        self._lock = threading.Lock()  # guards the writer's structures below against snapshots
        self._build_lock = threading.Lock()  # one reader builds a new view at a time
        self._next_hops = NextHopTable()
        self._base = _Base.build(empty_table())
        self._base_hops = self._next_hops.snapshot()
        self._pending: dict[bytes, int] = {}  # prefix key -> overlay row, -1 withdrawn
        self._changes = RouteBuilder(self._next_hops)
        self._version = 0
        self._view = RibView.empty()
        self.merges = 0

    def nbytes(self) -> int:
        """What the RIB holds now: the current view's arrays, the changes not yet merged
        (their rows and the prefix index: 135 bytes a prefix, measured with tracemalloc for
        50k 18-byte keys and their ints) and the next hops.  A full load in progress is its
        builder's (RouteBuilder.nbytes), not counted here."""
        pending = len(self._pending)
        return self.view().nbytes + self._changes.nbytes + pending * 135 + len(self._next_hops) * 16

    def new_builder(self) -> RouteBuilder:
        """A builder for a full table, to hand to :meth:`replace` when complete."""
        return RouteBuilder(NextHopTable())

    def replace(self, builder: RouteBuilder) -> None:
        """Make the builder's routes the whole RIB, at once for readers.  The builder is
        emptied (its memory given back)."""
        table = builder.table(copy=False).canonical()
        builder.release()  # before the index build: the peak is the table plus its temporaries
        base = _Base.build(table)
        del table
        hops = builder.next_hops.snapshot()
        with self._lock:
            self._next_hops = builder.next_hops
            self._base, self._base_hops = base, hops
            self._pending = {}
            self._changes = RouteBuilder(self._next_hops)
            self._version += 1
            self._view = RibView(base, None, hops, self._version)  # and the old table can go now
        del base
        release_freed_memory()

    def clear(self) -> None:
        """Forget every route (readers see an empty RIB)."""
        self.replace(self.new_builder())

    def apply(self, changes: Iterable[tuple[bytes, RouteAttributes | None]]) -> tuple[int, int]:
        """Apply best-path changes (attributes None: withdrawn); (announced, withdrawn)."""
        announced = withdrawn = 0
        batch = list(changes)  # decode outside the lock: readers may need it meanwhile
        with self._lock:
            for key, route in batch:
                if route is None:
                    self._pending[key] = -1
                    withdrawn += 1
                else:
                    self._pending[key] = self._changes.add(key, route)
                    announced += 1
            self._version += 1
        if len(self._changes) + len(self._pending) >= self.merge_rows:
            self.merge()
        return announced, withdrawn

    def merge(self) -> None:
        """Fold the pending changes into a rebuilt base (the writer thread calls this)."""
        keys, rows = self._pending_arrays()
        base_table = self._base.table
        pos = np.searchsorted(base_table.keys, keys)
        hit = pos < len(base_table)
        hit[hit] = base_table.keys[pos[hit]] == keys[hit]
        keep = np.ones(len(base_table), dtype=bool)
        keep[pos[hit]] = False
        kept, live = np.flatnonzero(keep), rows[rows >= 0]
        del keep, pos, hit
        changes = self._changes.table(copy=True)
        # Both parts have distinct keys and no key in common: one sort, one copy.
        order = np.argsort(np.concatenate([base_table.keys[kept], changes.keys[live]]))
        from_base = order < len(kept)
        merged = RouteTable.gather(len(order), [(from_base, base_table, kept[order[from_base]]),
                                                (~from_base, changes, live[order[~from_base] - len(kept)])])
        del order, from_base, kept, live, changes, base_table
        base = _Base.build(merged)
        del merged
        with self._lock:
            self._base, self._base_hops = base, self._next_hops.snapshot()
            self._pending = {}
            self._changes = RouteBuilder(self._next_hops)
            self._version += 1
            self._view = RibView(base, None, self._base_hops, self._version)  # and the old table can go now
            self.merges += 1
        release_freed_memory()

    def _pending_arrays(self) -> tuple[npt.NDArray[np.bytes_], Rows]:
        keys = np.array(list(self._pending), dtype=KEY) if self._pending else np.zeros(0, dtype=KEY)
        rows = np.fromiter(self._pending.values(), dtype=np.int64, count=len(self._pending))
        return keys, rows

    def view(self) -> RibView:
        """The current RIB, built on first use after a change."""
        current = self._view
        if current.version == self._version:
            return current
        with self._build_lock:
            if self._view.version == self._version:
                return self._view
            with self._lock:
                version, base = self._version, self._base
                keys, rows = self._pending_arrays()
                changes = self._changes.table(copy=True) if self._pending else None
                hops = self._next_hops.snapshot() if self._pending else self._base_hops
            overlay = _build_overlay(base, keys, rows, changes) if changes is not None else None
            self._view = RibView(base, overlay, hops, version)
            return self._view


def _build_overlay(base: _Base, keys: npt.NDArray[np.bytes_], rows: Rows, changes: RouteTable) -> _Overlay:
    order = np.argsort(keys)
    keys, rows = keys[order], rows[order]
    n_v4 = int(np.searchsorted(keys, _FIRST_V6_KEY)[0])
    live = rows >= 0
    live4, _ = _FamilyIndex.build(V4, keys[:n_v4][live[:n_v4]], rows[:n_v4][live[:n_v4]])
    live6, _ = _FamilyIndex.build(6, keys[n_v4:][live[n_v4:]], rows[n_v4:][live[n_v4:]])
    cover4, _ = _FamilyIndex.build(V4, keys[:n_v4], np.arange(n_v4, dtype=np.int64))
    cover6, _ = _FamilyIndex.build(6, keys[n_v4:], np.arange(len(keys) - n_v4, dtype=np.int64))
    base_keys = base.table.keys
    dirty = np.zeros(len(base_keys), dtype=bool)
    if len(base_keys):
        pos = np.searchsorted(base_keys, keys)
        hit = pos < len(base_keys)
        hit[hit] = base_keys[pos[hit]] == keys[hit]
        dirty[pos[hit]] = True
    return _Overlay(changes, live4, live6, cover4, cover6, dirty, int(live[:n_v4].sum()), int(live[n_v4:].sum()))
