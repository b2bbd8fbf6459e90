"""FlowBatch: a set of flows held as one array per column (see :mod:`.columns`).

Every stage (decode, enrich, store, detect) works on whole batches so that per-flow work
is done by numpy, never by a Python loop per record.  A column missing from a batch means
"all defaults"; it is materialised only when something reads it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from .columns import BY_NAME, COLUMNS, Kind
from .common.addresses import row_text, rows_are_v4, stored_bytes, v4_rows

U8 = npt.NDArray[np.uint8]
UIntArray = npt.NDArray[np.unsignedinteger[Any]]


@dataclass
class DictColumn:
    """A string column, dictionary-encoded (ClickHouse LowCardinality): values[codes[i]]."""

    codes: npt.NDArray[np.uint32]
    values: list[str] = field(default_factory=lambda: [""])

    def __len__(self) -> int:
        return len(self.codes)

    @classmethod
    def constant(cls, n: int, value: str = "") -> DictColumn:
        return cls(np.zeros(n, dtype=np.uint32), [value])

    @classmethod
    def from_strings(cls, items: Sequence[str]) -> DictColumn:
        index: dict[str, int] = {}
        codes = np.fromiter((index.setdefault(s, len(index)) for s in items), np.uint32, len(items))
        return cls(codes, list(index))

    def take(self, idx: npt.NDArray[np.intp] | slice) -> DictColumn:
        return DictColumn(self.codes[idx], self.values)

    def strings(self) -> list[str]:
        vals = self.values
        return [vals[c] for c in self.codes.tolist()]

    @property
    def nbytes(self) -> int:
        """The codes' bytes and the dictionary's text (its Python objects not counted)."""
        return int(self.codes.nbytes) + sum(len(v) for v in self.values)


@dataclass
class ListColumn:
    """A column of uint32 lists: row i is values[offsets[i]:offsets[i+1]]."""

    offsets: npt.NDArray[np.uint64]  # length n + 1, offsets[0] == 0
    values: npt.NDArray[np.uint32]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @classmethod
    def empty(cls, n: int) -> ListColumn:
        return cls(np.zeros(n + 1, dtype=np.uint64), np.zeros(0, dtype=np.uint32))

    @classmethod
    def from_lists(cls, rows: Sequence[Sequence[int]]) -> ListColumn:
        lengths = np.fromiter((len(r) for r in rows), np.uint64, len(rows))
        offsets = np.zeros(len(rows) + 1, dtype=np.uint64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.fromiter((v for r in rows for v in r), np.uint32, int(offsets[-1]))
        return cls(offsets, flat)

    def row(self, i: int) -> list[int]:
        values: list[int] = self.values[int(self.offsets[i]) : int(self.offsets[i + 1])].tolist()
        return values

    def take(self, idx: npt.NDArray[np.intp]) -> ListColumn:
        return ListColumn.from_lists([self.row(int(i)) for i in idx])

    @property
    def nbytes(self) -> int:
        return int(self.offsets.nbytes + self.values.nbytes)


ColumnData = np.ndarray | DictColumn | ListColumn


def default_column(name: str, n: int) -> ColumnData:
    """The all-defaults column `name` for `n` flows."""
    col = BY_NAME[name]
    if col.kind is Kind.UINT:
        return np.zeros(n, dtype=col.np_dtype)
    if col.kind is Kind.ADDR:
        return np.zeros((n, 16), dtype=np.uint8)
    if col.kind is Kind.STR:
        return DictColumn.constant(n)
    return ListColumn.empty(n)


# The batch's names for the address helpers (one definition: common/addresses.py).
ipv4_to_addr = v4_rows
addr_is_v4 = rows_are_v4
addr_to_str = row_text
str_to_addr = stored_bytes


class FlowBatch:
    """Flows as columns.  `n` rows; columns not set read as their defaults."""

    __slots__ = ("_cols", "n")

    def __init__(self, n: int, columns: dict[str, ColumnData] | None = None) -> None:
        self.n = n
        self._cols: dict[str, ColumnData] = {}
        for name, data in (columns or {}).items():
            self[name] = data

    def __len__(self) -> int:
        return self.n

    def __contains__(self, name: str) -> bool:
        return name in self._cols

    def __getitem__(self, name: str) -> Any:
        data = self._cols.get(name)
        if data is None:
            data = default_column(name, self.n)
            self._cols[name] = data
        return data

    def __setitem__(self, name: str, data: ColumnData) -> None:
        col = BY_NAME.get(name)
        if col is None:
            raise KeyError(f"unknown flow column {name!r}")
        if len(data) != self.n:
            raise ValueError(f"column {name}: {len(data)} rows, batch has {self.n}")
        if col.kind is Kind.UINT and isinstance(data, np.ndarray) and data.dtype != col.np_dtype:
            data = data.astype(col.np_dtype)
        self._cols[name] = data

    def set_columns(self) -> list[str]:
        return list(self._cols)

    @property
    def nbytes(self) -> int:
        """Bytes of the columns set so far (an unset column reads as its default and holds
        nothing until read): what a queued batch keeps in memory."""
        return sum(int(data.nbytes) for data in self._cols.values())

    def take(self, idx: npt.NDArray[np.intp]) -> FlowBatch:
        out = FlowBatch(len(idx))
        for name, data in self._cols.items():
            out._cols[name] = data.take(idx) if not isinstance(data, np.ndarray) else data[idx]
        return out

    @staticmethod
    def concat(batches: Sequence[FlowBatch]) -> FlowBatch:
        """One batch holding all rows of `batches`, in order."""
        batches = [b for b in batches if b.n]
        if not batches:
            return FlowBatch(0)
        if len(batches) == 1:
            return batches[0]
        total = sum(b.n for b in batches)
        out = FlowBatch(total)
        names = {name for b in batches for name in b._cols}
        for name in names:
            parts = [b[name] for b in batches]
            out._cols[name] = _concat_column(parts)
        return out

    def rows(self) -> Iterator[dict[str, Any]]:
        """Plain-Python rows (for jsonl and tables: not a hot path)."""
        rendered: dict[str, list[Any]] = {}
        for col in COLUMNS:
            data = self[col.name]
            if col.kind is Kind.UINT:
                rendered[col.name] = data.tolist()
            elif col.kind is Kind.ADDR:
                rendered[col.name] = [addr_to_str(r) for r in data]
            elif col.kind is Kind.STR:
                rendered[col.name] = data.strings()
            else:
                rendered[col.name] = [data.row(i) for i in range(self.n)]
        keys = list(rendered)
        for i in range(self.n):
            yield {k: rendered[k][i] for k in keys}


def _concat_column(parts: list[Any]) -> ColumnData:
    first = parts[0]
    if isinstance(first, np.ndarray):
        return np.concatenate(parts)
    if isinstance(first, DictColumn):
        index: dict[str, int] = {}
        codes = []
        for p in parts:
            remap = np.fromiter((index.setdefault(v, len(index)) for v in p.values), np.uint32, len(p.values))
            codes.append(remap[p.codes])
        return DictColumn(np.concatenate(codes), list(index))
    offsets = [np.zeros(1, dtype=np.uint64)]
    base = np.uint64(0)
    for p in parts:
        offsets.append(p.offsets[1:] + base)
        base = base + p.offsets[-1]
    return ListColumn(np.concatenate(offsets), np.concatenate([p.values for p in parts]))
