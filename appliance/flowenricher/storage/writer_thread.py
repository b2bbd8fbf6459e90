"""WriterThread: the BatchWriter in a thread of its own, so that inserting overlaps with
enriching and detecting in the service loop.

Why a thread and not the loop: an insert of 250k rows keeps the storing process
waiting for about half a second while the engine (chDB in this process, or a ClickHouse
server over HTTP) compresses and writes; both release the GIL meanwhile.  Done in the
service loop, that half second is lost to enrichment, and at a few hundred thousand
flows/s the loop falls behind the workers (measured: insert 10.6 s of every 20 s at
300k flows/s, beside 6.4 s of enrichment).  In a thread the two overlap.

Back-pressure: `put` blocks while ``max_pending_rows`` handed over are not yet taken by
the writer, so a slow store slows the loop (then the workers' queue, then the kernel
buffers: drops are counted there) instead of growing memory without bound.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from ..batch import FlowBatch
from .writer import BatchWriter

log = logging.getLogger(__name__)

TICK_S = 0.1
"""How often the thread lets the writer flush by age and retry the spool when idle."""


class WriterStopped(RuntimeError):
    """The writer thread ended on an unexpected error: nothing more can be stored."""


class WriterThread:
    """Owns `writer` from `start()` to `close()`: only this thread calls it then.

    ``lock`` is held around every call into the writer (and so the store), as the
    control socket's queries share the store.
    """

    def __init__(self, writer: BatchWriter, lock: AbstractContextManager[Any], max_pending_rows: int,
                 registry: CollectorRegistry | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.writer = writer
        self._lock = lock
        self._max_pending = max(1, max_pending_rows)
        self._clock = clock
        self._cond = threading.Condition()
        self._queue: deque[FlowBatch] = deque()
        self._pending = 0
        self._closing = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="flowenricher-writer", daemon=True)
        self._queued = Gauge("flowenricher_writer_queued_rows", "Enriched rows handed to the writer thread, not yet "
                             "encoded", registry=registry)

    def start(self) -> WriterThread:
        self._thread.start()
        return self

    def put(self, batch: FlowBatch) -> None:
        """Hand a batch over; waits while the writer is ``max_pending_rows`` behind."""
        if batch.n == 0:
            return
        with self._cond:
            while self._pending >= self._max_pending and self._error is None and self._thread.is_alive():
                self._cond.wait(TICK_S)
            if self._error is not None or not self._thread.is_alive():
                raise WriterStopped(f"the writer thread stopped: {self._error!r}")
            self._queue.append(batch)
            self._pending += batch.n
            self._queued.set(self._pending)
            self._cond.notify_all()

    def close(self, timeout: float | None = None) -> None:
        """Store what was handed over, flush, and end the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("writer: still busy after %.0f s at shutdown; %d rows not stored", timeout or 0, self._pending)
        elif self._error is not None:
            # The thread died: store what it left, from here, so nothing handed over is lost.
            with self._lock:
                while self._queue:
                    self.writer.add(self._queue.popleft())
                self.writer.close()

    def _run(self) -> None:
        last_tick = self._clock()
        try:
            while True:
                with self._cond:
                    if not self._queue and not self._closing:
                        self._cond.wait(TICK_S)
                    # Left in the queue until added: if the writer fails on it, close()
                    # stores it from the queue (at least once, like the spool).
                    batch = self._queue[0] if self._queue else None
                    closing = self._closing
                if batch is not None:
                    with self._lock:
                        self.writer.add(batch)
                    with self._cond:
                        self._queue.popleft()
                        self._pending -= batch.n
                        self._queued.set(self._pending)
                        self._cond.notify_all()
                elif closing:
                    break
                now = self._clock()
                if batch is None or now - last_tick >= TICK_S:
                    last_tick = now
                    with self._lock:
                        self.writer.maybe_flush(now)
            with self._lock:
                self.writer.close()
        except BaseException as err:  # reported to put() and close(), which store the rest
            log.exception("writer thread failed")
            with self._cond:
                self._error = err
                self._cond.notify_all()
