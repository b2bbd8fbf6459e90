"""Prometheus metrics of the collector: decoder counters per exporter and reason, kernel
drops, queue depth, worker restarts.

Worker processes keep plain counters (cheap on the hot path) and send snapshots; the
service keeps the latest snapshot of each worker, and this collector sums them at
scrape time, so no multiprocess registry files are needed.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .decode.stats import MAX_EXPORTERS, OTHER

Snapshot = dict[str, dict[str, dict[str, int]]]


class WorkerSnapshots:
    """The latest decode-stats snapshot of each worker, summed on demand.

    Two things keep the exported counters honest.  A worker that dies is `retire`d: its
    last snapshot joins a base that every later total includes, so no counter goes down
    when its replacement starts from zero.  And at most `max_exporters` exporters get
    their own label, first come first kept, the rest summed under "other": each worker
    bounds its own labels, but the union over workers (and retired ones) is bounded here.
    """

    def __init__(self, max_exporters: int = MAX_EXPORTERS) -> None:
        self.max_exporters = max_exporters
        self._by_worker: dict[int, Snapshot] = {}
        self._retired: tuple[dict[str, Counter[str]], dict[str, Counter[str]]] = ({}, {})
        self._labels: set[str] = set()
        self._lock = threading.Lock()  # the service's loop writes, scrapes and the stats recorder read

    def update(self, worker_id: int, snapshot: Snapshot) -> None:
        with self._lock:
            self._by_worker[worker_id] = snapshot

    def retire(self, worker_id: int) -> None:
        """Keep the counts of a worker that is gone (its replacement counts from zero)."""
        with self._lock:
            snap = self._by_worker.pop(worker_id, None)
            if snap is not None:
                self._add(self._retired, snap)

    def totals(self) -> tuple[dict[str, Counter[str]], dict[str, Counter[str]]]:
        with self._lock:
            totals: tuple[dict[str, Counter[str]], dict[str, Counter[str]]] = (
                {e: Counter(c) for e, c in self._retired[0].items()},
                {e: Counter(c) for e, c in self._retired[1].items()})
            for snap in self._by_worker.values():
                self._add(totals, snap)
        return totals

    def total(self, name: str) -> int:
        counts, _ = self.totals()
        return sum(c[name] for c in counts.values())

    def _add(self, into: tuple[dict[str, Counter[str]], dict[str, Counter[str]]], snap: Snapshot) -> None:
        for target, part in zip(into, (snap["counts"], snap["dropped"]), strict=True):
            for exporter, c in part.items():
                target.setdefault(self._label(exporter), Counter()).update(c)

    def _label(self, exporter: str) -> str:
        if exporter in self._labels or exporter == OTHER:
            return exporter
        if len(self._labels) < self.max_exporters:
            self._labels.add(exporter)
            return exporter
        return OTHER


class CollectorMetrics(Collector):
    """Exports worker counters plus gauges read through callables at scrape time."""

    def __init__(self, snapshots: WorkerSnapshots, kernel_drops: Callable[[], dict[int, int]],
                 queue_depth: Callable[[], int], restarts: Callable[[], int] = lambda: 0) -> None:
        self.snapshots = snapshots
        self.kernel_drops = kernel_drops
        self.queue_depth = queue_depth
        self.restarts = restarts

    def collect(self) -> Iterator[Any]:
        counts, dropped = self.snapshots.totals()
        names = sorted({name for c in counts.values() for name in c})
        for name in names:
            family = CounterMetricFamily(f"flowenricher_decoder_{name}", f"Decoder counter {name}, per exporter",
                                         labels=["exporter"])
            for exporter, c in sorted(counts.items()):
                family.add_metric([exporter], c[name])
            yield family
        drops = CounterMetricFamily("flowenricher_decoder_dropped",
                                    "Datagrams, sets or records lost, per exporter and reason",
                                    labels=["exporter", "reason"])
        for exporter, c in sorted(dropped.items()):
            for reason, value in sorted(c.items()):
                drops.add_metric([exporter, reason], value)
        yield drops
        kernel = CounterMetricFamily("flowenricher_kernel_udp_drops",
                                     "Datagrams the kernel dropped on a listening port (socket buffer full)",
                                     labels=["port"])
        for port, value in sorted(self.kernel_drops().items()):
            kernel.add_metric([str(port)], value)
        yield kernel
        depth = GaugeMetricFamily("flowenricher_worker_queue_depth",
                                  "Decoded batches waiting in the workers to reach the service")
        depth.add_metric([], self.queue_depth())
        yield depth
        restarts = CounterMetricFamily("flowenricher_worker_restarts",
                                       "Worker processes started again after they died")
        restarts.add_metric([], self.restarts())
        yield restarts


def serve(registry: CollectorRegistry, listen: str) -> Any:
    """Start the /metrics HTTP endpoint on `listen` ("host:port"); returns the server."""
    host, _, port = listen.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1", registry=registry)
    return server
