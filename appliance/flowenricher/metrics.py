"""Prometheus metrics of the collector: decoder counters per exporter and reason, kernel
drops, queue depth.

Worker processes keep plain counters (cheap on the hot path) and send snapshots; the
service keeps the latest snapshot of each worker, and this collector sums them at
scrape time, so no multiprocess registry files are needed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

Snapshot = dict[str, dict[str, dict[str, int]]]


class WorkerSnapshots:
    """The latest decode-stats snapshot of each worker, summed on demand."""

    def __init__(self) -> None:
        self._by_worker: dict[int, Snapshot] = {}

    def update(self, worker_id: int, snapshot: Snapshot) -> None:
        self._by_worker[worker_id] = snapshot

    def totals(self) -> tuple[dict[str, Counter[str]], dict[str, Counter[str]]]:
        counts: dict[str, Counter[str]] = {}
        dropped: dict[str, Counter[str]] = {}
        for snap in self._by_worker.values():
            for exporter, c in snap["counts"].items():
                counts.setdefault(exporter, Counter()).update(c)
            for exporter, c in snap["dropped"].items():
                dropped.setdefault(exporter, Counter()).update(c)
        return counts, dropped

    def total(self, name: str) -> int:
        counts, _ = self.totals()
        return sum(c[name] for c in counts.values())


class CollectorMetrics(Collector):
    """Exports worker counters plus gauges read through callables at scrape time."""

    def __init__(self, snapshots: WorkerSnapshots, kernel_drops: Callable[[], dict[int, int]],
                 queue_depth: Callable[[], int]) -> None:
        self.snapshots = snapshots
        self.kernel_drops = kernel_drops
        self.queue_depth = queue_depth

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
                                  "Decoded batches waiting for the writer")
        depth.add_metric([], self.queue_depth())
        yield depth


def serve(registry: CollectorRegistry, listen: str) -> Any:
    """Start the /metrics HTTP endpoint on `listen` ("host:port"); returns the server."""
    host, _, port = listen.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1", registry=registry)
    return server
