"""Background delivery for actions that talk to the outside (HTTP, SQL, the blackhole
manager): a bounded queue drained by one thread, with exponential backoff on failures.

The engine only ever calls `put`, which never blocks: a full queue drops the item and
counts it.  A slow or dead endpoint therefore delays its own deliveries, never ingest.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter

from ..common.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)

T = TypeVar("T")

_LOG_EVERY_S = 60.0


class PermanentError(Exception):
    """A delivery that retrying cannot fix (a webhook answering 400, a revoked Slack URL)."""


class DeliveryMetrics:
    """Counters shared by every action of one registry (create it once per registry)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.delivered = Counter("flowenricher_detection_deliveries", "Detections an action delivered",
                                 ["action"], registry=registry)
        self.failures = Counter("flowenricher_detection_delivery_failures",
                                "Failed delivery attempts (every retry counts)", ["action"], registry=registry)
        self.dropped = Counter("flowenricher_detection_deliveries_dropped",
                               "Detections an action gave up on, by reason: queue_full, retries (exhausted), "
                               "refused (a permanent error), shutdown", ["action", "reason"], registry=registry)


class Outbox(Generic[T]):
    """Items delivered in order by a background thread, in groups of up to `batch_size`.

    A failed delivery is retried up to `attempts` times in all, waiting `backoff_s`,
    then twice as long each time (at most `max_backoff_s`); a PermanentError is not
    retried.  `label` names the action in metrics and logs.
    """

    def __init__(self, label: str, deliver: Callable[[list[T]], None], metrics: DeliveryMetrics, *,
                 capacity: int = 1000, batch_size: int = 1, attempts: int = 6, backoff_s: float = 1.0,
                 max_backoff_s: float = 60.0) -> None:
        if capacity < 1 or batch_size < 1 or attempts < 1:
            raise ValueError(f"{label}: capacity, batch_size and attempts must be at least 1")
        self.label = label
        self._deliver = deliver
        self._metrics = metrics
        self._batch_size = batch_size
        self._attempts = attempts
        self._backoff_s = backoff_s
        self._max_backoff_s = max_backoff_s
        self._queue: queue.Queue[T] = queue.Queue(capacity)
        self._stop = threading.Event()
        self._warn = RateLimitedLog(log, _LOG_EVERY_S)
        self._thread = threading.Thread(target=self._run, name=f"detect-{label}", daemon=True)
        self._thread.start()

    def put(self, item: T) -> bool:
        """Queue `item` without waiting; False (and counted) when the queue is full or closed."""
        if self._stop.is_set():
            self._metrics.dropped.labels(self.label, "shutdown").inc()
            return False
        try:
            self._queue.put_nowait(item)
        except queue.Full:
            self._metrics.dropped.labels(self.label, "queue_full").inc()
            self._warn.warning("%s: delivery queue full, a detection was dropped", self.label)
            return False
        return True

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until everything queued is delivered or given up; False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._queue.all_tasks_done.wait(left)
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what is queued (waiting at most `timeout_s`), then stop the thread."""
        self.flush(timeout_s)
        self._stop.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                items = [self._queue.get(timeout=0.2)]
            except queue.Empty:
                continue
            while len(items) < self._batch_size:
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._send(items)
            finally:
                for _ in items:
                    self._queue.task_done()
        while True:  # stopped: what is left is lost, and counted
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return
            self._metrics.dropped.labels(self.label, "shutdown").inc()
            self._queue.task_done()

    def _send(self, items: list[T]) -> None:
        delay = self._backoff_s
        for attempt in range(1, self._attempts + 1):
            try:
                self._deliver(items)
            except PermanentError as err:
                self._metrics.failures.labels(self.label).inc()
                self._metrics.dropped.labels(self.label, "refused").inc(len(items))
                self._warn.warning("%s: delivery refused, not retried: %s", self.label, err)
                return
            except Exception as err:
                self._metrics.failures.labels(self.label).inc()
                if attempt == self._attempts:
                    self._metrics.dropped.labels(self.label, "retries").inc(len(items))
                    self._warn.warning("%s: delivery failed %d times, given up: %s", self.label, attempt, err)
                    return
                self._warn.warning("%s: delivery failed (%s), retrying in %.1f s", self.label, err, delay)
                if self._stop.wait(delay):
                    self._metrics.dropped.labels(self.label, "shutdown").inc(len(items))
                    return
                delay = min(delay * 2, self._max_backoff_s)
            else:
                self._metrics.delivered.labels(self.label).inc(len(items))
                return
