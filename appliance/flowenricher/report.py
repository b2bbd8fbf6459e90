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


def print_rows(batch: FlowBatch, fmt: str, out: TextIO) -> None:
    """jsonl: one JSON object per flow, keys are the flow column names; table: aligned text."""
    if fmt == "jsonl":
        for row in batch.rows():
            out.write(json.dumps(row, separators=(",", ":")) + "\n")
        return
    rows = [[str(row[c]) for c in TABLE_COLUMNS] for row in batch.rows()]
    if not rows:
        return
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(TABLE_COLUMNS)]
    out.write("  ".join(c.ljust(w) for c, w in zip(TABLE_COLUMNS, widths, strict=True)).rstrip() + "\n")
    for r in rows:
        out.write("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() + "\n")


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
