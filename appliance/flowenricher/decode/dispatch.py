"""FlowDecoder: routes each datagram to the NetFlow/IPFIX or the sFlow decoder by content.

The version field decides, not the port: NetFlow v5/v9 and IPFIX start with a 16-bit
version (5, 9, 10), sFlow with the 32-bit version 5 (``00 00 00 05``), which no NetFlow
header can start with (its count or length would be zero).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..batch import FlowBatch
from .netflow import ExporterQuirks, NetFlowDecoder
from .sflow import SFlowDecoder
from .stats import DATAGRAMS, DecodeStats

_SFLOW5 = b"\x00\x00\x00\x05"

Datagram = tuple[bytes, str, int]  # payload, exporter address, received_at (unix seconds)


class FlowDecoder:
    """All supported protocols behind one `decode(datagrams) -> FlowBatch`."""

    def __init__(self, stats: DecodeStats | None = None,
                 quirks: Mapping[str, ExporterQuirks] | None = None,
                 hold_max_sets: int = 10_000, hold_max_age_s: float = 60.0) -> None:
        self.stats = stats if stats is not None else DecodeStats()
        self.netflow = NetFlowDecoder(self.stats, quirks, hold_max_sets, hold_max_age_s)
        self.sflow = SFlowDecoder(self.stats)

    def decode(self, datagrams: Sequence[Datagram]) -> FlowBatch:
        netflow: list[Datagram] = []
        sflow: list[Datagram] = []
        for d in datagrams:
            if d[0][:4] == _SFLOW5:
                sflow.append(d)
            elif len(d[0]) >= 2 and d[0][0] == 0 and d[0][1] in (5, 9, 10):
                netflow.append(d)
            else:
                self.stats.count(d[1], DATAGRAMS)
                self.stats.drop(d[1], "bad_version", detail=d[0][:4].hex())
        parts = []
        if netflow:
            parts.append(self.netflow.decode(netflow))
        if sflow:
            parts.append(self.sflow.decode(sflow))
        if not parts:
            return FlowBatch(0)
        return FlowBatch.concat(parts) if len(parts) > 1 else parts[0]

    def tick(self) -> FlowBatch:
        """Periodic work: decode held sets whose template came, expire the old ones."""
        return self.netflow.release_all()

    def finish(self) -> None:
        """Count whatever is still held as lost (end of a capture, shutdown)."""
        self.netflow.flush_held()
