"""Keep every flow insert within the store's partitions per insert.

ClickHouse refuses an insert whose block spans more than ``max_partitions_per_insert_block``
partitions of a table (and chDB's streaming insert used to drop such a block while
answering OK): 101 distinct days in one batch, from an exporter with a bad clock or a
replayed archive, would cost every row of it.  The writer therefore cuts its inserts so
each holds at most :data:`DAYS_PER_INSERT` UTC days of each column that decides a
partition (:func:`~.schema.partition_columns`, derived from the tables' PARTITION BY).
Why half the store's limit: see :data:`~.schema.DAY_OR_COARSER`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..batch import FlowBatch
from .schema import DAY_S

MAX_PARTITIONS_PER_INSERT = 100
"""The store's ``max_partitions_per_insert_block`` (ClickHouse's default), set on every insert."""

DAYS_PER_INSERT = MAX_PARTITIONS_PER_INSERT // 2
"""UTC days of each partition column one insert may hold."""

Days = tuple[frozenset[int], ...]
"""The UTC days (unix seconds // DAY_S) a block holds, one set per partition column."""


def days_of(batch: FlowBatch, columns: Sequence[str]) -> Days:
    """The UTC days of each of `columns` in `batch`.

    The usual batch covers one day or two adjacent ones, which its minimum and maximum
    show without a sort; only a wider batch pays for ``np.unique``.  A column the batch
    never set is stored as its default, 0: day 0.
    """
    out = []
    for name in columns:
        if name not in batch or batch.n == 0:
            out.append(frozenset({0}))
            continue
        ts = batch[name]
        lo, hi = int(ts.min()) // DAY_S, int(ts.max()) // DAY_S
        if hi - lo <= 1:
            out.append(frozenset({lo, hi}))
        else:
            out.append(frozenset(np.unique(ts // DAY_S).tolist()))
    return tuple(out)


def fits(days: Days, limit: int = DAYS_PER_INSERT) -> bool:
    return all(len(d) <= limit for d in days)


def union(a: Days, b: Days) -> Days:
    return tuple(x | y for x, y in zip(a, b, strict=True))


def split(batch: FlowBatch, columns: Sequence[str], limit: int = DAYS_PER_INSERT) -> list[tuple[FlowBatch, Days]]:
    """`batch` cut into parts holding at most `limit` days of each column, with their days.

    Returns ``[(batch, days)]`` when it already fits (no copy).  Otherwise rows are grouped
    by their combination of days, in day order, and combinations are packed greedily
    into parts; each part keeps its rows in their original order.  Deterministic: the
    same rows give the same parts, so a block cut again after a restart is cut the same.
    """
    days = days_of(batch, columns)
    if fits(days, limit):
        return [(batch, days)]
    present = [name for name in columns if name in batch]
    key = np.zeros(batch.n, dtype=np.int64)
    for name in present:
        # Days since 1970 stay below 2**16 for any DateTime (UInt32 seconds).
        key = key * (1 << 16) + (batch[name] // DAY_S).astype(np.int64)
    combos, inverse = np.unique(key, return_inverse=True)
    part_of_combo = np.empty(len(combos), dtype=np.int64)
    part = 0
    current: list[set[int]] = [set() for _ in present]
    for i, combo in enumerate(combos.tolist()):
        values = [(combo >> (16 * (len(present) - 1 - j))) & 0xFFFF for j in range(len(present))]
        if any(v not in seen and len(seen) >= limit for v, seen in zip(values, current, strict=True)):
            part += 1
            current = [set() for _ in present]
        for v, seen in zip(values, current, strict=True):
            seen.add(v)
        part_of_combo[i] = part
    rows_part = part_of_combo[inverse.reshape(-1)]
    out = []
    for p in range(part + 1):
        piece = batch.take(np.flatnonzero(rows_part == p))
        out.append((piece, days_of(piece, columns)))
    return out
