"""Text renderings of decoded flows and decoder counters for `flowenricher decode`."""

from __future__ import annotations

import json
from typing import TextIO

from .batch import FlowBatch
from .decode import stats as S
from .decode.stats import DecodeStats

# The columns a person reads first; jsonl carries every column.
TABLE_COLUMNS = ("timestamp_start", "exporter_address", "flow_protocol", "src_addr", "src_port", "dst_addr",
                 "dst_port", "proto", "tcpflags", "packets", "bytes", "sampling_rate", "input_interface",
                 "output_interface")


class RowPrinter:
    """Decoded flows as text, batch after batch.

    jsonl: one JSON object per flow, keys are the flow column names.  table: aligned
    text under one header; the first batch with flows sets the column widths and a
    longer value later only widens its own line, so a capture decoded a slice at a time
    still reads as one table.
    """

    def __init__(self, fmt: str, out: TextIO) -> None:
        self.fmt = fmt
        self.out = out
        self._widths: list[int] | None = None

    def print(self, batch: FlowBatch) -> None:
        if self.fmt == "jsonl":
            for row in batch.rows():
                self.out.write(json.dumps(row, separators=(",", ":")) + "\n")
            return
        rows = [[str(row[c]) for c in TABLE_COLUMNS] for row in batch.rows()]
        if not rows:
            return
        if self._widths is None:
            self._widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(TABLE_COLUMNS)]
            self._line(list(TABLE_COLUMNS))
        for r in rows:
            self._line(r)

    def _line(self, values: list[str]) -> None:
        assert self._widths is not None
        self.out.write("  ".join(v.ljust(w) for v, w in zip(values, self._widths, strict=True)).rstrip() + "\n")


def print_summary(stats: DecodeStats, records: int, out: TextIO) -> None:
    """Counts: records, options records, held and decoded later, dropped by reason."""
    dropped = stats.total_dropped()
    out.write(f"datagrams: {stats.total(S.DATAGRAMS)}\n")
    out.write(f"records: {records}\n")
    out.write(f"options_records: {stats.total(S.OPTIONS_RECORDS)}\n")
    out.write(f"templates: {stats.total(S.TEMPLATES)}\n")
    out.write(f"held: {stats.total(S.HELD)} (decoded later: {stats.total(S.HELD_DECODED)})\n")
    if stats.total(S.COUNTER_SAMPLES):
        out.write(f"sflow_counter_samples: {stats.total(S.COUNTER_SAMPLES)}\n")
    if stats.total(S.ENTERPRISE_FIELDS):
        out.write(f"enterprise_fields_skipped: {stats.total(S.ENTERPRISE_FIELDS)}\n")
    out.write(f"dropped: {sum(dropped.values())}\n")
    for reason, n in sorted(dropped.items()):
        out.write(f"  {reason}: {n}\n")
