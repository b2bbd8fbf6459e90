"""The records a `collect` process produces to Kafka: decoded flow columns, and the key
that picks their partition.

**Record format** (``kafka.format: flowenricher``, version :data:`VERSION`): one record
holds the rows of one FlowBatch as the collector decoded them (not enriched), column by
column, in the layout numpy already holds them, little-endian::

    b"FEB" version:u8 rows:u32 columns:u16
    version 2 only, the record's origin (:class:`Origin`):
        collector:16 bytes  batch:u64  partitions:u32  partition:u32  first_row:u32
    then per column: name_length:u8 name kind:u8 body_length:u32 body

    kind 1 (UINT)       rows * width bytes (the width of the column in columns.py)
    kind 2 (ADDR)       rows * 16 bytes (IPv6, IPv4 mapped)
    kind 3 (STR)        values:u32, each value length:u16 + UTF-8, width:u8 (1, 2, 4),
                        rows codes of that width
    kind 4 (UINT_LIST)  rows + 1 offsets:u64 from 0, then the values:u32

The origin names a record for the storers' deduplication (kafka/input.py): the collector
that encoded it (an id it keeps in its spool directory), the number of the decoded batch
(never reused by that collector, across restarts too), the partition count it was split
by, its partition, and the index of its first row in that partition's share (a share over
:data:`MAX_RECORD_BYTES` is cut into several records).  A record sent twice (replayed from
the spool after a crash, or purged at shutdown after it had reached a broker) carries the
same origin both times.  Version 1 records (no origin) still decode.

Columns the batch never set are left out (they read as their defaults, as in the Native
insert).  A column this version does not know is skipped by its length (a newer
collector may add columns); a known column of the wrong kind or width, a truncated or
overlong body, a code beyond its dictionary or offsets that do not rise are refused:
:func:`decode_record` raises :class:`RecordError`, which the Kafka input counts as a
malformed record.  Why this format and not Arrow IPC or the Native block is measured in
docs/performance.md and argued in docs/architecture.md.

**Partition key** (:func:`address_partitions`): rows are split by a hash of ``dst_addr``, so
every flow towards one destination lands on one partition, hence one storer, whichever
collector received it: a rule keyed by destination sees all of that key's flows.  The
detection exchange (kafka/detection.py) splits by ``src_addr`` as well, with the same
hash.  This is the one definition of the key; collectors, the exchange and tests use it,
nothing else hashes addresses for partitioning.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from ..batch import ColumnData, DictColumn, FlowBatch, ListColumn
from ..columns import BY_NAME, COLUMNS, Kind
from ..decode.stats import DecodeStats

MAGIC = b"FEB"
VERSION = 2
VERSIONS = (1, 2)
"""The versions this reader decodes; :func:`encode_record` writes 1 without an origin, 2 with one."""
_HEAD = struct.Struct("<3sBIH")
_ORIGIN = struct.Struct("<16sQIII")  # collector, batch, partitions, partition, first row
_COLUMN = struct.Struct("<BI")  # kind, body length (after the name)
_KINDS = {Kind.UINT: 1, Kind.ADDR: 2, Kind.STR: 3, Kind.UINT_LIST: 4}
_KIND_OF = {code: kind for kind, code in _KINDS.items()}
_CODE_WIDTHS = {1: "<u1", 2: "<u2", 4: "<u4"}

MAX_RECORD_BYTES = 512 * 1024
"""Records are cut below this (the producer's and the broker's default limit is about
1 MB per record)."""


class RecordError(ValueError):
    """A record that is not a flowenricher block of this version."""


@dataclass(frozen=True)
class Origin:
    """Where a version 2 record comes from (see the module docstring)."""

    collector: bytes  # 16 bytes
    batch: int
    partitions: int
    partition: int
    first_row: int = 0

    def packed(self) -> bytes:
        return _ORIGIN.pack(self.collector, self.batch, self.partitions, self.partition, self.first_row)


def record_origin(value: bytes | memoryview) -> bytes | None:
    """A record's origin as the bytes it is written as (what the storers compare), None for
    a version 1 record; only the header is read.  Raises RecordError for a header that
    is not a flowenricher block's."""
    view = memoryview(value).cast("B")
    if len(view) < _HEAD.size:
        raise RecordError("shorter than the header")
    magic, version = bytes(view[:3]), view[3]
    if magic != MAGIC:
        raise RecordError("not a flowenricher block (magic)")
    if version == 1:
        return None
    if version != 2 or len(view) < _HEAD.size + _ORIGIN.size:
        raise RecordError(f"block version {version} or its origin is not readable (this reader knows {VERSIONS})")
    return bytes(view[_HEAD.size:_HEAD.size + _ORIGIN.size])


def parse_origin(packed: bytes) -> Origin:
    """The fields of :func:`record_origin`'s bytes."""
    return Origin(*_ORIGIN.unpack(packed))


def record_rows(value: bytes | memoryview) -> int:
    """The row count in a record's header (0 for anything shorter than one)."""
    return int(_HEAD.unpack_from(value, 0)[2]) if len(value) >= _HEAD.size else 0


# --------------------------------------------------------------------------- encoding


def encode_record(batch: FlowBatch, origin: Origin | None = None) -> bytes:
    """`batch` (every column it has set) as one record value: version 2 with `origin`,
    version 1 without."""
    names = [c.name for c in COLUMNS if c.name in set(batch.set_columns())]
    parts: list[bytes] = [_HEAD.pack(MAGIC, 1 if origin is None else 2, batch.n, len(names))]
    if origin is not None:
        parts.append(origin.packed())
    for name in names:
        col = BY_NAME[name]
        body = _encode_body(col.kind, batch[name], batch.n, name)
        raw_name = name.encode()
        parts += [bytes([len(raw_name)]), raw_name, _COLUMN.pack(_KINDS[col.kind], sum(len(b) for b in body)), *body]
    return b"".join(parts)


def _encode_body(kind: Kind, data: Any, n: int, name: str) -> list[bytes]:
    if kind is Kind.UINT:
        return [np.ascontiguousarray(data, dtype=BY_NAME[name].np_dtype).tobytes()]
    if kind is Kind.ADDR:
        return [np.ascontiguousarray(data, dtype=np.uint8).reshape(n, 16).tobytes()]
    if kind is Kind.STR:
        assert isinstance(data, DictColumn)
        values = [v.encode() for v in data.values]
        width = 1 if len(values) <= 1 << 8 else 2 if len(values) <= 1 << 16 else 4
        out = [struct.pack("<I", len(values))]
        out += [struct.pack("<H", len(v)) + v for v in values]
        out += [bytes([width]), data.codes.astype(_CODE_WIDTHS[width]).tobytes()]
        return out
    assert isinstance(data, ListColumn)
    start, stop = int(data.offsets[0]), int(data.offsets[-1])
    offsets = np.ascontiguousarray(data.offsets - data.offsets[0], dtype="<u8")
    return [offsets.tobytes(), np.ascontiguousarray(data.values[start:stop], dtype="<u4").tobytes()]


def encode_records(batch: FlowBatch, max_bytes: int = MAX_RECORD_BYTES, origin: Origin | None = None) -> list[bytes]:
    """`batch` as one or more records, each under `max_bytes` (halved by rows until it fits;
    a single row always makes a record).  With `origin`, each record's ``first_row`` is
    that of its rows (the same cuts give the same origins)."""
    record = encode_record(batch, origin)
    if len(record) <= max_bytes or batch.n <= 1:
        return [record]
    half = batch.n // 2
    idx = np.arange(batch.n)
    second = None if origin is None else replace(origin, first_row=origin.first_row + half)
    return (encode_records(batch.take(idx[:half]), max_bytes, origin)
            + encode_records(batch.take(idx[half:]), max_bytes, second))


# --------------------------------------------------------------------------- decoding


def decode_record(value: bytes | memoryview) -> FlowBatch:
    """One record value as a FlowBatch; raises RecordError for anything malformed."""
    view = memoryview(value).cast("B") if not isinstance(value, memoryview) else value.cast("B")
    if len(view) < _HEAD.size:
        raise RecordError("shorter than the header")
    magic, version, n, count = _HEAD.unpack_from(view, 0)
    if magic != MAGIC:
        raise RecordError("not a flowenricher block (magic)")
    if version not in VERSIONS:
        raise RecordError(f"block version {version}, this reader knows {VERSIONS}")
    batch = FlowBatch(n)
    pos = _HEAD.size + (_ORIGIN.size if version == 2 else 0)
    for _ in range(count):
        if pos >= len(view):
            raise RecordError("truncated column header")
        name_len = view[pos]
        pos += 1
        name = bytes(view[pos:pos + name_len]).decode("ascii", "replace")
        pos += name_len
        if pos + _COLUMN.size > len(view):
            raise RecordError("truncated column header")
        kind_code, size = _COLUMN.unpack_from(view, pos)
        pos += _COLUMN.size
        body = view[pos:pos + size]
        if len(body) != size:
            raise RecordError(f"column {name}: truncated body")
        pos += size
        col = BY_NAME.get(name)
        if col is None:
            continue  # a column of a newer collector
        if _KIND_OF.get(kind_code) is not col.kind:
            raise RecordError(f"column {name}: kind {kind_code}, expected {_KINDS[col.kind]}")
        if name in batch:
            raise RecordError(f"column {name} twice")
        batch[name] = _decode_body(col.kind, body, n, name)
    if pos != len(view):
        raise RecordError("trailing bytes after the last column")
    return batch


def _decode_body(kind: Kind, body: memoryview, n: int, name: str) -> ColumnData:
    if kind is Kind.UINT:
        dtype = BY_NAME[name].np_dtype
        if len(body) != n * dtype.itemsize:
            raise RecordError(f"column {name}: {len(body)} bytes for {n} rows of width {dtype.itemsize}")
        return np.frombuffer(body, dtype=dtype).copy()
    if kind is Kind.ADDR:
        if len(body) != n * 16:
            raise RecordError(f"column {name}: {len(body)} bytes for {n} addresses")
        return np.frombuffer(body, dtype=np.uint8).reshape(n, 16).copy()
    if kind is Kind.STR:
        return _decode_dict(body, n, name)
    return _decode_list(body, n, name)


def _decode_dict(body: memoryview, n: int, name: str) -> DictColumn:
    if len(body) < 4:
        raise RecordError(f"column {name}: truncated dictionary")
    (count,) = struct.unpack_from("<I", body, 0)
    if count < 1 or count > len(body):
        raise RecordError(f"column {name}: {count} dictionary values")
    pos, values = 4, []
    for _ in range(count):
        if pos + 2 > len(body):
            raise RecordError(f"column {name}: truncated dictionary")
        (length,) = struct.unpack_from("<H", body, pos)
        pos += 2
        raw = bytes(body[pos:pos + length])
        if len(raw) != length:
            raise RecordError(f"column {name}: truncated dictionary")
        try:
            values.append(raw.decode())
        except UnicodeDecodeError:
            raise RecordError(f"column {name}: a dictionary value is not UTF-8") from None
        pos += length
    if pos >= len(body) or body[pos] not in _CODE_WIDTHS:
        raise RecordError(f"column {name}: bad code width")
    width = body[pos]
    pos += 1
    if len(body) - pos != n * width:
        raise RecordError(f"column {name}: {len(body) - pos} bytes of codes for {n} rows of width {width}")
    codes = np.frombuffer(body[pos:], dtype=_CODE_WIDTHS[width]).astype(np.uint32)
    if n and int(codes.max()) >= count:
        raise RecordError(f"column {name}: a code beyond its {count} values")
    return DictColumn(codes, values)


def _decode_list(body: memoryview, n: int, name: str) -> ListColumn:
    head = (n + 1) * 8
    if len(body) < head:
        raise RecordError(f"column {name}: truncated offsets")
    offsets = np.frombuffer(body[:head], dtype="<u8").astype(np.uint64)
    rest = len(body) - head
    if offsets[0] != 0 or rest % 4 or int(offsets[-1]) != rest // 4 or (n and bool((np.diff(offsets.astype(
            np.int64)) < 0).any())):
        raise RecordError(f"column {name}: offsets do not match the values")
    return ListColumn(offsets, np.frombuffer(body[head:], dtype="<u4").astype(np.uint32))


# --------------------------------------------------------------------------- partitions

_K1, _K2, _K3 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F), np.uint64(0x94D049BB133111EB)


PARTITION_KEYS = ("src_addr", "dst_addr")
"""The address columns rows may be partitioned by (:func:`address_partitions`)."""


def address_partitions(batch: FlowBatch, partitions: int, column: str = "dst_addr") -> npt.NDArray[np.int64]:
    """The partition of each row of `batch`: a 64-bit mix of the 16 bytes of its address
    `column` (IPv4 as mapped IPv6), modulo `partitions`.  Fixed constants and
    little-endian words, so every process of any version and machine puts one address on
    the same partition.  Collectors split by ``dst_addr``; the detection exchange
    (kafka/detection.py) by either column, with this one hash."""
    if partitions < 1:
        raise ValueError("a topic has at least one partition")
    if column not in PARTITION_KEYS:
        raise ValueError(f"rows are partitioned by one of {', '.join(PARTITION_KEYS)}, not {column!r}")
    words = np.ascontiguousarray(batch[column], dtype=np.uint8).reshape(-1, 16).view("<u8").astype(np.uint64)
    with np.errstate(over="ignore"):
        h = (words[:, 0] * _K1) ^ (words[:, 1] * _K2)
        h ^= h >> np.uint64(31)
        h *= _K3
        h ^= h >> np.uint64(29)
    return (h % np.uint64(partitions)).astype(np.int64)


def split_by_partition(batch: FlowBatch, partitions: int,
                       column: str = "dst_addr") -> Iterator[tuple[int, FlowBatch]]:
    """The rows of `batch` grouped by :func:`address_partitions` of `column`, each group in
    batch order."""
    if not batch.n:
        return
    keys = address_partitions(batch, partitions, column)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    cuts = np.flatnonzero(np.diff(sorted_keys)) + 1
    for part in np.split(order, cuts):
        yield int(keys[part[0]]), batch.take(part)


MALFORMED = "flowenricher_malformed"
UNKNOWN_EXPORTER = "kafka"  # the DecodeStats label of records that do not parse


class BlockDecoder:
    """Record values of a flowenricher topic -> one FlowBatch, counting the records it
    drops in `stats` (the Kafka input's decoder for ``kafka.format: flowenricher``)."""

    def __init__(self, stats: DecodeStats | None = None) -> None:
        self.stats = stats if stats is not None else DecodeStats()

    def decode(self, records: Sequence[bytes | None]) -> FlowBatch:
        batches: list[FlowBatch] = []
        for record in records:
            try:
                if not isinstance(record, (bytes, bytearray)):
                    raise RecordError("empty record")
                batches.append(decode_record(record))
            except RecordError as err:
                self.stats.drop(UNKNOWN_EXPORTER, MALFORMED, 1, f"record is not a flowenricher block: {err}")
        return FlowBatch.concat(batches)
