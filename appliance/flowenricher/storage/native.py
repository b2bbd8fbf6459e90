"""Encode a FlowBatch as a ClickHouse Native format block, one numpy buffer per column.

Native is ClickHouse's own columnar wire format: the engine (chDB or a server over HTTP)
copies it into its column buffers without parsing rows, so the cost of a batch is one
``tobytes()`` per column here and a memcpy there.  Only the short LowCardinality
dictionaries are built by a Python loop.

Layout of a block (no block-info header: that belongs to the TCP protocol, not the format)::

    varint columns, varint rows, then per column: String name, String type, data

where String is a varint length followed by the bytes.  The data of each type is
described next to the function that writes it.  A stream of several blocks back to back
is itself a valid Native input, which is how the writer and the spool join batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

from ..batch import DictColumn, FlowBatch, ListColumn
from ..columns import BY_NAME, COLUMNS, Column, Kind
from ..errors import StoreError

# LowCardinality serialization (ClickHouse SerializationLowCardinality):
# the key version written once per column in the state prefix ...
_LC_KEYS_VERSION = 1  # SharedDictionariesWithAdditionalKeys
# ... then, per granule, flags = index width | these bits.
_LC_HAS_ADDITIONAL_KEYS = 1 << 9  # the dictionary travels with the data
_LC_NEED_UPDATE_DICTIONARY = 1 << 10  # replace (not extend) the reader's dictionary
_LC_INDEX_TYPES: tuple[tuple[int, str], ...] = ((1 << 8, "<u1"), (1 << 16, "<u2"), (1 << 32, "<u4"))


def varint(value: int) -> bytes:
    """ClickHouse's VarUInt: unsigned LEB128."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _string(text: str) -> bytes:
    raw = text.encode()
    return varint(len(raw)) + raw


def encode_block(batch: FlowBatch, names: Iterable[str] | None = None) -> bytes:
    """One Native block holding `names` (default: every column the batch has set).

    Columns the batch never set are left out rather than sent as zeros: an ``INSERT ...
    FORMAT Native`` matches columns by name and fills the missing ones with their
    defaults, which is what an unset column means.  Pass ``names=NAMES`` to get a
    block with every column (needed where the reader reads by position).
    """
    columns = [BY_NAME[n] for n in (names if names is not None else _set_in_order(batch))]
    parts: list[bytes] = [varint(len(columns)), varint(batch.n)]
    for col in columns:
        parts.append(_string(col.name))
        parts.append(_string(col.ch_type))
        parts.extend(encode_column(col, batch[col.name], batch.n))
    return b"".join(parts)


def _set_in_order(batch: FlowBatch) -> list[str]:
    present = set(batch.set_columns())
    return [c.name for c in COLUMNS if c.name in present]


def encode_column(col: Column, data: object, n: int) -> list[bytes]:
    """The data part of one column as a list of buffers (joined by the caller)."""
    if col.kind is Kind.UINT:
        # UInt*, DateTime: little-endian fixed width, exactly the numpy layout.
        arr = np.ascontiguousarray(data, dtype=col.np_dtype)
        return [arr.tobytes()]
    if col.kind is Kind.ADDR:
        # IPv6: 16 bytes per row in network order, as the batch holds them.
        addr = np.ascontiguousarray(data, dtype=np.uint8)
        if addr.shape != (n, 16):
            raise StoreError(f"column {col.name}: address array shape {addr.shape}, expected ({n}, 16)")
        return [addr.tobytes()]
    if col.kind is Kind.STR:
        if not isinstance(data, DictColumn):
            raise StoreError(f"column {col.name}: expected a DictColumn, got {type(data).__name__}")
        return _low_cardinality(data.codes, data.values)
    if not isinstance(data, ListColumn):
        raise StoreError(f"column {col.name}: expected a ListColumn, got {type(data).__name__}")
    return _array_uint32(col.name, data)


def _low_cardinality(codes: npt.NDArray[np.uint32], values: Sequence[str]) -> list[bytes]:
    """LowCardinality(String): key version, then one granule carrying its own dictionary.

    Granule: UInt64 flags (index width 0/1/2 for UInt8/16/32 plus the two bits above),
    UInt64 number of keys and the keys as Strings, UInt64 number of rows and the indexes
    at that width.  The narrowest width that can address the dictionary is used.
    """
    width, dtype = next((i, dt) for i, (limit, dt) in enumerate(_LC_INDEX_TYPES) if len(values) <= limit)
    flags = width | _LC_HAS_ADDITIONAL_KEYS | _LC_NEED_UPDATE_DICTIONARY
    keys = b"".join(_string(v) for v in values)
    head = np.array([_LC_KEYS_VERSION, flags, len(values)], dtype="<u8").tobytes()
    return [head, keys, np.array([len(codes)], dtype="<u8").tobytes(), codes.astype(dtype).tobytes()]


def _array_uint32(name: str, data: ListColumn) -> list[bytes]:
    """Array(UInt32): UInt64 end offset of every row (no leading zero), then the flat values."""
    offsets = data.offsets
    start, stop = int(offsets[0]), int(offsets[-1])
    if stop > len(data.values) or start > stop:
        raise StoreError(f"column {name}: offsets run from {start} to {stop}, with {len(data.values)} values")
    # A ListColumn cut out of a bigger one may not start at zero: rebase it.
    ends = np.ascontiguousarray(offsets[1:] - offsets[0], dtype="<u8")
    return [ends.tobytes(), np.ascontiguousarray(data.values[start:stop], dtype="<u4").tobytes()]
