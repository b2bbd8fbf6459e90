"""Decoder counters, per exporter and reason.

Decoders never raise on bad input: they count it here, and the metrics module exports
these counters.  Plain dicts keep the hot path cheap; they are read on scrape.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict

from ..common.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)

# Counter names every decoder uses (per exporter).
DATAGRAMS = "datagrams"
RECORDS = "records"  # flow records decoded
OPTIONS_RECORDS = "options_records"
TEMPLATES = "templates"  # template and options template records received
TEMPLATE_WITHDRAWALS = "template_withdrawals"
HELD = "held_sets"  # data sets parked until their template arrives
HELD_DECODED = "held_sets_decoded"
ENTERPRISE_FIELDS = "enterprise_fields_skipped"  # per template field, counted once per template
COUNTER_SAMPLES = "sflow_counter_samples"
# Hostile or broken input that is survived: counted, and logged at a limited rate.
VALUE_OUT_OF_RANGE = "value_out_of_range"  # a field wider than its column: clamped to the column's max
SAMPLING_IGNORED = "sampling_rate_ignored"  # a sampling rate of 0 or above MAX_SAMPLING_RATE
TIME_IMPLAUSIBLE = "time_implausible"  # flow times too far from reception: reception time used
DECODE_ERROR = "decode_error"  # drop reason: an unexpected exception, contained and state reset
DECODE_ERROR_RECORDS = "decode_error_records"  # drop reason: records lost to a decode_error
STATE_RESETS = "state_resets"  # exporter+domain state forgotten after a decode_error
SEQUENCE_LOST = "sequence_lost"  # records (v5, IPFIX) or datagrams (v9, sFlow) never received
SEQUENCE_RESETS = "sequence_resets"  # a restart or a jump too large to be loss
TEMPLATES_EVICTED = "templates_evicted"  # least recently used templates over TemplateCache's bound
STATE_EVICTED = "state_evicted"  # per-exporter entries (sampling, names, ...) over their bound
OTHER = "other"  # the exporter label beyond DecodeStats.max_exporters
# Distinct exporters counted under OTHER (on OTHER), as far as a memory of max_exporters
# folded addresses reaches: beyond that, a lower bound.
EXPORTERS_FOLDED = "exporters_folded"
# Default bound of exporter labels: above the exporter count of the largest networks we
# know (a few thousand routers), low enough that a source-spoofing flood cannot grow the
# metrics by more than this many label sets.
MAX_EXPORTERS = 10_000


class DecodeStats:
    """Counters by exporter: `counts[exporter][name]` and `dropped[exporter][reason]`.

    `dropped` holds everything lost: malformed datagrams (reason says why), sets whose
    template never came (`template_missing`), held sets evicted (`hold_overflow`,
    `hold_expired`), failures contained (`decode_error`), and so on.  `counts` also
    holds what was survived rather than lost (`note`: values clamped, rates ignored,
    times replaced) and what sequence numbers say went missing on the way.

    Exporter labels are bounded: beyond `max_exporters` distinct ones, counts go to the
    label OTHER, so a sender spoofing source addresses cannot grow the metrics.
    """

    def __init__(self, log_interval_s: float = 10.0, max_exporters: int = MAX_EXPORTERS) -> None:
        self.counts: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.dropped: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.max_exporters = max_exporters
        # One key per (exporter label, reason): labels are bounded, reasons a fixed set.
        self._log = RateLimitedLog(log, log_interval_s, max_keys=64 * (max_exporters + 1))
        self._labels: set[str] = set()
        self._folded: set[str] = set()  # exporters seen beyond the bound (bounded too)

    def label(self, exporter: str) -> str:
        """The exporter's label: itself, or OTHER once `max_exporters` labels exist."""
        if exporter in self._labels or exporter == OTHER:
            return exporter
        if len(self._labels) < self.max_exporters:
            self._labels.add(exporter)
            return exporter
        if exporter not in self._folded and len(self._folded) < self.max_exporters:
            self._folded.add(exporter)
            self.counts[OTHER][EXPORTERS_FOLDED] += 1
        return OTHER

    def count(self, exporter: str, name: str, n: int = 1) -> None:
        if exporter not in self._labels:  # the label lookup, inlined on this hot path
            exporter = self.label(exporter)
        self.counts[exporter][name] += n

    def drop(self, exporter: str, reason: str, n: int = 1, detail: str = "") -> None:
        """Count `n` lost items for `reason`; log at most once per interval per reason."""
        exporter = self.label(exporter)
        self.dropped[exporter][reason] += n
        self._log.warning("exporter %s: dropped (%s)%s; %d so far", exporter, reason,
                          f": {detail}" if detail else "", self.dropped[exporter][reason], key=(exporter, reason))

    def note(self, exporter: str, name: str, n: int = 1, detail: str = "") -> None:
        """Count `n` items survived under `name` (not lost), logged like drops."""
        exporter = self.label(exporter)
        self.counts[exporter][name] += n
        self._log.warning("exporter %s: %s%s; %d so far", exporter, name,
                          f": {detail}" if detail else "", self.counts[exporter][name], key=(exporter, name))

    def total(self, name: str) -> int:
        return sum(c[name] for c in self.counts.values())

    def total_dropped(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for c in self.dropped.values():
            out.update(c)
        return out

    def merge(self, other: DecodeStats) -> None:
        for exp, c in other.counts.items():
            self.counts[self.label(exp)].update(c)
        for exp, c in other.dropped.items():
            self.dropped[self.label(exp)].update(c)

    def snapshot(self) -> dict[str, dict[str, dict[str, int]]]:
        return {"counts": {e: dict(c) for e, c in self.counts.items()},
                "dropped": {e: dict(c) for e, c in self.dropped.items()}}
