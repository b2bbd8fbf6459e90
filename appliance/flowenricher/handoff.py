"""HandOff: a thread of its own for one stage of the storing process, fed enriched
batches through a bounded queue.

Why threads: the storing process runs, per batch, enrichment (Python and numpy), the
insert (chDB or the HTTP client, which release the GIL while the engine works) and the
consumers (the detection engine and anomaly scoring, mostly numpy sorts and reductions,
which release it for large arrays).  Run one after the other in the service loop they
add up (measured at 300k flows/s: the insert alone took 10.6 s of every 20 s); in
threads they overlap, and the two cores are used.

Back-pressure: `put` waits while ``max_pending_rows`` handed over are not yet done, so a
slow stage slows the loop (then the workers' queue, then the kernel buffers, where drops
are counted) instead of growing memory or silently skipping batches.  A stage that
fails (a bug) stops taking batches: `put` raises HandOffStopped and the service stops;
`close` still gives what was queued to the stage's `finish` path when it can.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Gauge

from .batch import FlowBatch

log = logging.getLogger(__name__)

TICK_S = 0.1
"""How often an idle stage gets its `idle` call (the writer flushes by age there)."""


@dataclass(frozen=True)
class Grouped:
    """A batch the writer must store as blocks of its own under `token` (one block per
    partition span, tokens ``<token>/<i>``), calling `on_stored` once the store has
    acknowledged every one of them: how the Kafka input learns it may commit offsets.
    The same token sent again (a replay after a crash) is stored once."""

    batch: FlowBatch
    token: str
    on_stored: Callable[[], None]

    @property
    def n(self) -> int:
        return self.batch.n

    @property
    def nbytes(self) -> int:
        return self.batch.nbytes


Item = FlowBatch | Grouped


class HandOffStopped(RuntimeError):
    """The stage's thread ended on an unexpected error: it takes no more batches."""


_QUEUED = {"writer": "Enriched rows handed to the writer thread, not yet encoded",
           "consumers": "Enriched rows handed to the consumers' thread (detection, anomaly scoring, traffic "
                        "metrics), not yet processed",
           "producer": "Decoded rows handed to the Kafka producer's thread (role collect), not yet produced or "
                       "spooled"}


class HandOff:
    """Runs ``process(batch)`` for every batch handed over, in order, in its own thread;
    ``idle(now)`` about every TICK_S; ``finish()`` once at close, after the last batch.

    ``name`` is ``writer``, ``consumers`` or ``producer``: it names the thread and the gauges
    ``flowenricher_<name>_queued_rows`` and ``flowenricher_<name>_queued_bytes`` (the
    columns' bytes, FlowBatch.nbytes, taken when the batch is handed over).  The storing
    process hands the same batch to the writer and to the consumers, so while both hold
    it, the sum of their byte gauges counts it twice.
    """

    def __init__(self, name: str, process: Callable[[Item], None], max_pending_rows: int, *,
                 idle: Callable[[float], None] | None = None, finish: Callable[[], None] | None = None,
                 registry: CollectorRegistry | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self._process = process
        self._idle = idle
        self._finish = finish
        self._max_pending = max(1, max_pending_rows)
        self._clock = clock
        self._cond = threading.Condition()
        self._queue: deque[tuple[Item, int]] = deque()  # with its bytes when handed over
        self._pending = 0
        self._pending_bytes = 0
        self._closing = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"flowenricher-{name}", daemon=True)
        self._queued = Gauge(f"flowenricher_{name}_queued_rows", _QUEUED.get(name, f"Rows queued for {name}"),
                             registry=registry)
        self._queued_bytes = Gauge(f"flowenricher_{name}_queued_bytes",
                                   f"Bytes of the columns of the rows in flowenricher_{name}_queued_rows",
                                   registry=registry)

    def start(self) -> HandOff:
        self._thread.start()
        return self

    @property
    def pending_rows(self) -> int:
        return self._pending

    def put(self, batch: Item) -> None:
        """Hand a batch over; waits while ``max_pending_rows`` are not yet done."""
        if batch.n == 0 and not isinstance(batch, Grouped):  # a group's callback is owed even if empty
            return
        with self._cond:
            while self._pending >= self._max_pending and self._error is None and self._thread.is_alive():
                self._cond.wait(TICK_S)
            if self._error is not None or not self._thread.is_alive():
                raise HandOffStopped(f"the {self.name} thread stopped: {self._error!r}")
            size = batch.nbytes  # now: reading a default column later adds it to the batch
            self._queue.append((batch, size))
            self._pending += batch.n
            self._pending_bytes += size
            self._queued.set(self._pending)
            self._queued_bytes.set(self._pending_bytes)
            self._cond.notify_all()

    def close(self, timeout: float | None = None) -> None:
        """Process what was handed over, finish, and end the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("%s: still busy after %.0f s at shutdown; %d rows not processed", self.name, timeout or 0,
                      self._pending)
        elif self._error is not None:
            # The thread died: give what it left to the stage from here, so nothing
            # handed over is dropped without a try.
            try:
                while self._queue:
                    self._process(self._queue.popleft()[0])
                if self._finish is not None:
                    self._finish()
            except Exception:
                log.exception("%s: could not process what the failed thread left", self.name)

    def _run(self) -> None:
        last_tick = self._clock()
        try:
            while True:
                with self._cond:
                    if not self._queue and not self._closing:
                        self._cond.wait(TICK_S)
                    # Left in the queue until processed: if the stage fails on it, close()
                    # hands it over again (at least once, like the spool).
                    batch, size = self._queue[0] if self._queue else (None, 0)
                    closing = self._closing
                if batch is not None:
                    self._process(batch)
                    with self._cond:
                        self._queue.popleft()
                        self._pending -= batch.n
                        self._pending_bytes -= size
                        self._queued.set(self._pending)
                        self._queued_bytes.set(self._pending_bytes)
                        self._cond.notify_all()
                elif closing:
                    break
                now = self._clock()
                if self._idle is not None and (batch is None or now - last_tick >= TICK_S):
                    last_tick = now
                    self._idle(now)
            if self._finish is not None:
                self._finish()
        except BaseException as err:  # reported to put() and close()
            log.exception("%s thread failed", self.name)
            with self._cond:
                self._error = err
                self._cond.notify_all()
