"""Prometheus metrics of the flow store: inserts and their latency, the spool, every drop.

Each object registers on the registry it is given (the service passes its own; tests
pass a fresh ``CollectorRegistry``).  With ``registry=None`` the metrics still count
but are not exported, which is what a short-lived command or a test that does not look
at them wants.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

PREFIX = "flowenricher_store_"

# A 50k-row insert takes tens to hundreds of milliseconds; an outage, seconds.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class WriterMetrics:
    """What the batch writer did with the flows it was given."""

    def __init__(self, registry: Any = None) -> None:
        def counter(name: str, doc: str) -> Any:
            return Counter(PREFIX + name, doc, registry=registry)

        def gauge(name: str, doc: str) -> Any:
            return Gauge(PREFIX + name, doc, registry=registry)

        self.rows_inserted = counter(
            "rows_inserted", "Rows the store acknowledged as stored (synchronous inserts; new and replayed)"
        )
        self.inserts = counter("inserts", "Insert statements the store accepted")
        self.insert_errors = counter("insert_errors", "Insert statements that failed")
        self.insert_seconds = Histogram(
            PREFIX + "insert_seconds", "Time per accepted insert", buckets=_LATENCY_BUCKETS, registry=registry
        )
        self.last_insert_seconds = gauge("last_insert_seconds", "Duration of the last accepted insert")
        self.rows_spooled = counter("rows_spooled", "Rows written to the spool instead of the store")
        self.rows_replayed = counter("rows_replayed", "Spooled rows later accepted by the store")
        self.pending_rows = gauge("pending_rows", "Rows waiting in memory for the next flush")
        self.pending_bytes = gauge("pending_bytes", "Bytes of the encoded blocks (Native) waiting for the next flush")
        self.lag_seconds = gauge(
            "lag_seconds",
            "Age of the oldest flow not yet acknowledged by the store (waiting in memory or in the spool); 0 when all "
            "is stored",
        )


class SpoolMetrics:
    """The spool's size, read when scraped, and the rows it had to drop, by reason."""

    def __init__(self, registry: Any = None, prefix: str = PREFIX) -> None:
        """`prefix` names the metrics (the store's spool by default; a collector's
        Kafka spool passes its own)."""
        self.rows_dropped = Counter(
            prefix + "rows_dropped",
            "Rows lost from the spool: reason age, size (limits), write_error, or rejected (when it could not be kept)",
            ["reason"],
            registry=registry,
        )
        self.files_dropped = Counter(
            prefix + "spool_files_dropped", "Spooled blocks lost, by reason", ["reason"], registry=registry
        )
        self.blocks_rejected = Counter(
            prefix + "spool_blocks_rejected",
            "Spooled blocks the store kept refusing, moved to rejected/ (kept; spool requeue replays them)",
            registry=registry,
        )
        self.rows_rejected = Counter(
            prefix + "spool_rows_rejected", "Rows of the blocks moved to rejected/", registry=registry
        )
        self.size = Gauge(prefix + "spool_bytes", "Size of the spool (compressed)", registry=registry)
        self.files = Gauge(prefix + "spool_files", "Blocks in the spool", registry=registry)
        self.rows = Gauge(prefix + "spool_rows", "Rows in the spool", registry=registry)
        self.oldest_age_s = Gauge(
            prefix + "spool_oldest_age_seconds", "Age of the oldest spooled block", registry=registry
        )

    def watch(self, stat: Callable[[str], float]) -> None:
        """Make each gauge read ``stat(name)`` when scraped (the SpoolStats field names)."""
        for name in ("size", "files", "rows", "oldest_age_s"):
            getattr(self, name).set_function(lambda name=name: stat(name))
