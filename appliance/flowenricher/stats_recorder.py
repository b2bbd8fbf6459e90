"""Snapshots of the collector's own Prometheus counters into ClickHouse (``collector_stats``).

The appliance-health dashboard reads the store only, so an operator without Prometheus
still sees flows and datagrams per exporter, decoder and kernel drops, the spool and
insert latency.  Every ``interval_s`` the recorder reads the service's registry and
writes one row per (exporter, metric): counters as the increase since the previous
snapshot (so a dashboard's rate is ``sum(value) / bucket``, and a restart, which resets
the counters, is not a negative spike), gauges as their value, and the insert latency as
the mean of the inserts in the interval.  With an interface source (the SNMP poller) it
also keeps ``exporter_interfaces`` (names and speeds, for utilisation), rewritten when a
table changes and hourly.  Rows go out from a background thread with retries: a store
that is away delays them and never holds up the service's loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from prometheus_client import CollectorRegistry

from .batch import addr_to_str
from .common.addresses import stored_text
from .detect.outbox import DeliveryMetrics, Outbox
from .storage.tables import COLLECTOR_STATS, EXPORTER_INTERFACES

log = logging.getLogger(__name__)

GLOBAL = "::"
"""exporter_address of rows about the appliance as a whole (an IPv6 column needs a value)."""

PER_EXPORTER_COUNTERS = {
    "flowenricher_decoder_datagrams": "datagrams",
    "flowenricher_decoder_records": "records",
    "flowenricher_decoder_templates": "templates",
}
"""Decoder counters with an ``exporter`` label -> metric name in collector_stats."""

DROPS = "flowenricher_decoder_dropped"
"""Decoder drops by exporter and reason, recorded as ``dropped.<reason>``."""

GLOBAL_COUNTERS = {
    "flowenricher_kernel_udp_drops": "kernel_drops",
    "flowenricher_store_rows_inserted": "rows_inserted",
    "flowenricher_store_rows_spooled": "rows_spooled",
    "flowenricher_store_rows_replayed": "rows_replayed",
    "flowenricher_store_rows_dropped": "store_rows_dropped",
    "flowenricher_store_insert_errors": "insert_errors",
}
"""Counters summed over their labels (ports, reasons) -> metric name."""

GAUGES = {
    "flowenricher_store_spool_bytes": "spool_bytes",
    "flowenricher_store_spool_rows": "spool_rows",
    "flowenricher_store_pending_rows": "pending_rows",
    "flowenricher_store_last_insert_seconds": "insert_seconds_last",
    "flowenricher_worker_queue_depth": "queue_depth",
}

INSERT_LATENCY = "flowenricher_store_insert_seconds"
"""The insert latency histogram; recorded as ``insert_seconds_avg`` over each interval."""


class InterfaceInfoLike(Protocol):
    """What the recorder reads of an interface (enrich.snmp.InterfaceInfo has it)."""

    @property
    def label(self) -> str: ...

    @property
    def alias(self) -> str: ...

    @property
    def speed_mbps(self) -> int: ...


InterfaceSource = Callable[[], Mapping[str, Mapping[int, InterfaceInfoLike]]]
"""exporter address -> {ifIndex: interface}, e.g. from SnmpPoller.interfaces per target."""


@dataclass(frozen=True)
class Row:
    ts: int
    exporter: str
    metric: str
    value: float


def _v6(exporter: str) -> str:
    """The exporter label as the text of an IPv6 column value ('::' when it is not an address)."""
    try:
        return stored_text(exporter.strip("[]"))
    except ValueError:
        return GLOBAL


class StatsRecorder:
    """Give ``tick`` to the service's tickers; ``close`` at shutdown (writes what is queued)."""

    def __init__(self, registry: CollectorRegistry, execute: Callable[[str], object], database: str, *,
                 interval_s: float = 10.0, interfaces: InterfaceSource | None = None,
                 interfaces_every_s: float = 3600.0, metrics: DeliveryMetrics | None = None,
                 clock: Callable[[], float] = time.time, attempts: int = 3, backoff_s: float = 1.0) -> None:
        if interval_s <= 0:
            raise ValueError(f"stats recorder: interval_s must be positive, got {interval_s}")
        self.registry = registry
        self.database = database
        self.interval_s = interval_s
        self._execute = execute
        self._interfaces = interfaces
        self._interfaces_every_s = interfaces_every_s
        self._clock = clock
        self._next = 0.0
        self._previous: dict[tuple[str, str], float] = {}
        self._written_interfaces: dict[str, dict[int, tuple[str, str, int]]] = {}
        self._interfaces_at = 0.0
        self._outbox: Outbox[str] = Outbox("collector_stats", self._send, metrics or DeliveryMetrics(None),
                                           capacity=360, batch_size=1, attempts=attempts, backoff_s=backoff_s)

    def _send(self, statements: list[str]) -> None:
        for sql in statements:
            self._execute(sql)

    def tick(self, now: float) -> None:
        """Record a snapshot when the interval is up (the service calls this every second)."""
        if now < self._next:
            return
        self._next = now + self.interval_s
        self.record(now)

    def record(self, now: float | None = None) -> list[Row]:
        """Take one snapshot now and queue its rows; returns them."""
        now = self._clock() if now is None else now
        rows = self.snapshot(int(now))
        if rows:
            self._outbox.put(self._insert_sql(rows))
        if self._interfaces is not None:
            self._record_interfaces(now)
        return rows

    def snapshot(self, ts: int) -> list[Row]:
        """The rows for the registry as it is now (counter increases since the last call)."""
        counters: dict[tuple[str, str], float] = {}
        gauges: dict[tuple[str, str], float] = {}
        latency_sum = latency_count = 0.0
        for family in self.registry.collect():
            name = family.name
            for sample in family.samples:
                labels = sample.labels
                if name in PER_EXPORTER_COUNTERS and sample.name.endswith("_total"):
                    key = (_v6(labels.get("exporter", "")), PER_EXPORTER_COUNTERS[name])
                elif name == DROPS and sample.name.endswith("_total"):
                    key = (_v6(labels.get("exporter", "")), f"dropped.{labels.get('reason', 'unknown')}")
                elif name in GLOBAL_COUNTERS and sample.name.endswith("_total"):
                    key = (GLOBAL, GLOBAL_COUNTERS[name])
                elif name in GAUGES and sample.name == name:
                    gauges[(GLOBAL, GAUGES[name])] = gauges.get((GLOBAL, GAUGES[name]), 0.0) + sample.value
                    continue
                elif name == INSERT_LATENCY and sample.name == f"{name}_sum":
                    latency_sum += sample.value
                    continue
                elif name == INSERT_LATENCY and sample.name == f"{name}_count":
                    latency_count += sample.value
                    continue
                else:
                    continue
                counters[key] = counters.get(key, 0.0) + sample.value
        rows = [Row(ts, exporter, metric, value) for (exporter, metric), value in self._increases(counters)]
        rows.extend(Row(ts, exporter, metric, value) for (exporter, metric), value in sorted(gauges.items()))
        inserts = self._increase(("", "insert_count"), latency_count)
        seconds = self._increase(("", "insert_sum"), latency_sum)
        if inserts > 0:
            rows.append(Row(ts, GLOBAL, "insert_seconds_avg", seconds / inserts))
        return rows

    def _increases(self, counters: Mapping[tuple[str, str], float]) -> Iterable[tuple[tuple[str, str], float]]:
        for key in sorted(counters):
            yield key, self._increase(key, counters[key])

    def _increase(self, key: tuple[str, str], value: float) -> float:
        """Increase since the last snapshot; a counter below its last value was reset
        (the service restarted), so all of it is new."""
        before = self._previous.get(key, 0.0)
        self._previous[key] = value
        return value - before if value >= before else value

    def _insert_sql(self, rows: Iterable[Row]) -> str:
        return COLLECTOR_STATS.insert_sql(self.database, [
            {"ts": r.ts, "exporter_address": r.exporter, "metric": r.metric, "value": r.value} for r in rows])

    def _record_interfaces(self, now: float) -> None:
        assert self._interfaces is not None
        try:
            tables = {_v6(exporter): {int(i): (info.label, info.alias, int(info.speed_mbps) * 1_000_000)
                                      for i, info in interfaces.items()}
                      for exporter, interfaces in self._interfaces().items()}
        except Exception as err:  # a poller in trouble must not stop the counters
            log.warning("stats recorder: cannot read the interface tables: %s", err)
            return
        due = now - self._interfaces_at >= self._interfaces_every_s
        changed = {e: t for e, t in tables.items() if t and (due or self._written_interfaces.get(e) != t)}
        if not changed:
            return
        self._outbox.put(EXPORTER_INTERFACES.insert_sql(self.database, [
            {"ts": int(now), "exporter_address": e, "ifindex": i, "name": name, "alias": alias, "speed_bps": speed}
            for e, table in sorted(changed.items()) for i, (name, alias, speed) in sorted(table.items())]))
        self._written_interfaces.update(changed)
        if due:
            self._interfaces_at = now

    def flush(self, timeout_s: float = 5.0) -> bool:
        return self._outbox.flush(timeout_s)

    def close(self) -> None:
        """Record a last snapshot (the counts since the previous one) and deliver it."""
        try:
            self.record()
        finally:
            self._outbox.close()


def snmp_interfaces(poller: Any) -> InterfaceSource:
    """An InterfaceSource over an enrich.snmp.SnmpPoller: every exporter's last good table."""

    def read() -> dict[str, Mapping[int, InterfaceInfoLike]]:
        return {addr_to_str(np.frombuffer(key, np.uint8)): dict(table.interfaces) for key, table in poller.tables.items()}

    return read


def exporter_counters(registry: CollectorRegistry) -> Callable[[], dict[str, dict[str, int]]]:
    """The decoder counters per exporter since the service started (datagrams, records,
    templates, drops by reason), for the API's ``/api/v1/exporters``: the same samples the
    recorder snapshots, as totals."""

    def read() -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for family in registry.collect():
            if family.name not in PER_EXPORTER_COUNTERS and family.name != DROPS:
                continue
            for sample in family.samples:
                exporter = sample.labels.get("exporter")
                if not exporter or not sample.name.endswith("_total"):
                    continue
                metric = PER_EXPORTER_COUNTERS.get(family.name) or f"dropped.{sample.labels.get('reason', 'unknown')}"
                counters = out.setdefault(exporter, {})
                counters[metric] = counters.get(metric, 0) + int(sample.value)
        return out

    return read


def interface_names(source: InterfaceSource) -> Callable[[], dict[str, dict[int, str]]]:
    """ifIndex -> name per exporter from an InterfaceSource (the SNMP poller), for the API."""

    def read() -> dict[str, dict[int, str]]:
        return {exporter: {index: info.label for index, info in table.items()} for exporter, table in source().items()}

    return read
