"""FlowDecoder: routes each datagram to the NetFlow/IPFIX or the sFlow decoder by content.

The version field decides, not the port: NetFlow v5/v9 and IPFIX start with a 16-bit
version (5, 9, 10), sFlow with the 32-bit version 5 (``00 00 00 05``), which no NetFlow
header can start with (its count or length would be zero).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..batch import FlowBatch
from .netflow import (
    HOLD_MAX_AGE_S,
    HOLD_MAX_SETS,
    MAX_CLOCK_SKEW_S,
    MAX_STATE,
    DecoderStateError,
    ExporterQuirks,
    NetFlowDecoder,
)
from .sflow import SFlowDecoder
from .stats import DATAGRAMS, DECODE_ERROR, MAX_EXPORTERS, OTHER, DecodeStats
from .templates import MAX_TEMPLATES

_SFLOW5 = b"\x00\x00\x00\x05"

Datagram = tuple[bytes, str, int]  # payload, exporter address, received_at (unix seconds)


class FlowDecoder:
    """All supported protocols behind one `decode(datagrams) -> FlowBatch`."""

    def __init__(self, stats: DecodeStats | None = None,
                 quirks: Mapping[str, ExporterQuirks] | None = None,
                 hold_max_sets: int = HOLD_MAX_SETS, hold_max_age_s: float = HOLD_MAX_AGE_S, *,
                 max_templates: int = MAX_TEMPLATES, max_clock_skew_s: float = MAX_CLOCK_SKEW_S,
                 max_exporters: int = MAX_EXPORTERS, max_state: int = MAX_STATE) -> None:
        self.stats = stats if stats is not None else DecodeStats(max_exporters=max_exporters)
        self.netflow = NetFlowDecoder(self.stats, quirks, hold_max_sets, hold_max_age_s,
                                      max_templates=max_templates, max_clock_skew_s=max_clock_skew_s,
                                      max_state=max_state)
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
            parts.append(self._guarded(self.netflow.decode, netflow))
        if sflow:
            parts.append(self._guarded(self.sflow.decode, sflow))
        if not parts:
            return FlowBatch(0)
        return FlowBatch.concat(parts) if len(parts) > 1 else parts[0]

    def _guarded(self, decode: Any, datagrams: list[Datagram]) -> FlowBatch:
        """Last line of defence: the decoders contain failures themselves, so reaching
        the except clause is a bug; still, the worker goes on and the loss is counted."""
        try:
            batch: FlowBatch = decode(datagrams)
        except Exception as err:  # no datagram may stop the worker
            for _, exporter, _ in datagrams:
                self.stats.drop(exporter, DECODE_ERROR, detail=f"{type(err).__name__}: {err}")
            if not datagrams:  # the periodic tick: no exporter to name
                self.stats.drop(OTHER, DECODE_ERROR, detail=f"tick: {type(err).__name__}: {err}")
            return FlowBatch(0)
        return batch

    def tick(self) -> FlowBatch:
        """Periodic work: decode held sets whose template came, expire the old ones."""
        return self._guarded(lambda _: self.netflow.release_all(), [])

    def finish(self) -> None:
        """Count whatever is still held as lost (end of a capture, shutdown)."""
        self.netflow.flush_held()

    def export_state(self) -> dict[str, Any]:
        """What the NetFlow/IPFIX decoder learnt (see NetFlowDecoder.export_state)."""
        return self.netflow.export_state()

    def import_state(self, state: Any) -> None:
        """Take a state from export_state; raises DecoderStateError, changing nothing, if bad."""
        self.netflow.import_state(state)


def save_state(decoder: FlowDecoder, path: str | Path) -> None:
    """Write the decoder's state to `path` atomically (a temp file renamed over it)."""
    path = Path(path)
    text = json.dumps(decoder.export_state(), separators=(",", ":"))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_state(decoder: FlowDecoder, path: str | Path) -> bool:
    """Load a state saved by save_state; False when there is no file.

    A file that is not JSON or not a valid state raises DecoderStateError naming the
    file and what is wrong; the decoder is then left as it was.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return False
    except (OSError, UnicodeDecodeError) as err:
        raise DecoderStateError(str(path), f"unreadable: {err}") from err
    try:
        state = json.loads(text)
    except ValueError as err:
        raise DecoderStateError(str(path), f"not JSON: {err}") from err
    try:
        decoder.import_state(state)
    except DecoderStateError as err:
        raise DecoderStateError(f"{path}: {err.path}", err.problem) from err
    return True
