"""Decoder counters, per exporter and reason.

Decoders never raise on bad input: they count it here, and the metrics module exports
these counters.  Plain dicts keep the hot path cheap; they are read on scrape.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict

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


class DecodeStats:
    """Counters by exporter: `counts[exporter][name]` and `dropped[exporter][reason]`.

    `dropped` holds everything lost: malformed datagrams (reason says why), sets whose
    template never came (`template_missing`), held sets evicted (`hold_overflow`,
    `hold_expired`), and so on.
    """

    def __init__(self, log_interval_s: float = 10.0) -> None:
        self.counts: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self.dropped: defaultdict[str, Counter[str]] = defaultdict(Counter)
        self._log_interval = log_interval_s
        self._last_log: dict[tuple[str, str], float] = {}

    def count(self, exporter: str, name: str, n: int = 1) -> None:
        self.counts[exporter][name] += n

    def drop(self, exporter: str, reason: str, n: int = 1, detail: str = "") -> None:
        """Count `n` lost items for `reason`; log at most once per interval per reason."""
        self.dropped[exporter][reason] += n
        key = (exporter, reason)
        now = time.monotonic()
        if now - self._last_log.get(key, -1e9) >= self._log_interval:
            self._last_log[key] = now
            log.warning("exporter %s: dropped (%s)%s; %d so far", exporter, reason,
                        f": {detail}" if detail else "", self.dropped[exporter][reason])

    def total(self, name: str) -> int:
        return sum(c[name] for c in self.counts.values())

    def total_dropped(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for c in self.dropped.values():
            out.update(c)
        return out

    def merge(self, other: DecodeStats) -> None:
        for exp, c in other.counts.items():
            self.counts[exp].update(c)
        for exp, c in other.dropped.items():
            self.dropped[exp].update(c)

    def snapshot(self) -> dict[str, dict[str, dict[str, int]]]:
        return {"counts": {e: dict(c) for e, c in self.counts.items()},
                "dropped": {e: dict(c) for e, c in self.dropped.items()}}
