"""WriterThread: the BatchWriter in a thread of its own (a HandOff, see handoff.py), so
that inserting overlaps with enriching and detecting in the service loop.

Measured at 300k flows/s before it: chDB inserts took 10.6 s of every 20 s in the
service loop, beside 6.4 s of enrichment; both now run at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from prometheus_client import CollectorRegistry

from ..handoff import Grouped, HandOff, HandOffStopped, Item
from .writer import BatchWriter

WriterStopped = HandOffStopped
"""The writer thread ended on an unexpected error: nothing more can be stored."""


class WriterThread(HandOff):
    """Owns `writer` from `start()` to `close()`: only this thread calls it then.

    ``lock`` is held around every call into the writer (and so the store), as the
    control socket's queries share the store.
    """

    def __init__(self, writer: BatchWriter, lock: AbstractContextManager[Any], max_pending_rows: int,
                 registry: CollectorRegistry | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.writer = writer
        self._lock = lock
        super().__init__("writer", self._add, max_pending_rows, idle=self._flush_by_age, finish=self._close_writer,
                         registry=registry, clock=clock)

    def _add(self, item: Item) -> None:
        with self._lock:
            if isinstance(item, Grouped):
                self.writer.add_group(item.batch, item.token, item.on_stored)
            else:
                self.writer.add(item)

    def _flush_by_age(self, now: float) -> None:
        with self._lock:
            self.writer.maybe_flush(now)

    def _close_writer(self) -> None:
        with self._lock:
            self.writer.close()
