"""BatchWriter: turns many small flow batches into few large inserts, and never loses
them quietly when the store is away.

Batches are encoded to Native as they arrive (spreading the work) and sent together
when ``batch_size`` rows are waiting or ``flush_interval_ms`` has passed.  A block the
store refuses goes to the spool; while the spool is not empty, it is replayed oldest
first before anything new is sent, so flows reach the store in the order they came.
Each block gets a deduplication token when it is formed, kept with it in the spool, so
a block sent again after a failure the store had partly taken (or a crash) is stored
once.  No insert holds more days than the store's partition limit allows
(partitions.py): a batch spanning more is cut, and blocks are flushed early rather than
joined past it.  After a failure the store is left alone for a growing back-off, so a
dead server costs one connection attempt per back-off, not one per flush.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from ..batch import FlowBatch
from ..errors import StoreError
from . import partitions
from .base import FlowStore
from .metrics import WriterMetrics
from .native import encode_block
from .schema import partition_columns
from .settings import StoreSettings
from .spool import Spool, SpoolEntry

log = logging.getLogger(__name__)

RETRY_MIN_S = 1.0
RETRY_MAX_S = 30.0
REJECT_AFTER = 5
"""Failed attempts, each while the store answers ping, after which a block is set aside
(with the back-off, about 30 s of a store that is up but refuses this block).  The file
is kept in ``<spool>/rejected/`` with its reason; ``flowenricher spool requeue`` puts it
back once the cause is fixed."""


class BatchWriter:
    """Batches, inserts, spools and replays.  Not thread-safe: one service loop calls it."""

    def __init__(
        self,
        store: FlowStore,
        settings: StoreSettings,
        spool: Spool,
        registry: Any = None,
        clock: Callable[[], float] = time.monotonic,
        migrated: bool = True,
    ) -> None:
        self.store = store
        self.settings = settings
        self.spool = spool
        self.metrics = WriterMetrics(registry)
        self._clock = clock
        self._blocks: list[bytes] = []
        self._rows = 0
        self._first_added: float | None = None  # when the oldest block in memory was added
        self._partition_columns = partition_columns(settings)
        self._days: partitions.Days = ()
        # Tokens: this writer's id and a counter, unique without coordination.
        self._token_prefix = uuid.uuid4().hex[:16]
        self._formed = 0
        self._last_error = ""
        self._last_flush = clock()
        self._retry_at = 0.0
        self._backoff = RETRY_MIN_S
        self._attempts: dict[int, int] = {}  # spool seq -> failed attempts while the store was up
        # Blocks of add_group() not yet acknowledged: block token -> its group's [blocks
        # left, callback]; the callback runs when the last block is stored.
        self._groups: dict[str, list[Any]] = {}
        # False when the service started while the server was away: the schema is brought
        # up to date before the first insert that reaches it.
        self._migrated = migrated
        self.metrics.lag_seconds.set_function(self.lag_seconds)
        # Read at scrape time from the blocks themselves (the list is replaced, never emptied in place).
        self.metrics.pending_bytes.set_function(lambda: sum(len(block) for block in self._blocks))

    @property
    def pending_rows(self) -> int:
        return self._rows

    def lag_seconds(self) -> float:
        """How long the oldest flow handed to this writer has waited without the store
        acknowledging it: in memory for the next insert, or in the spool; 0 when all is
        stored.  Read from another thread (the metrics scrape): one attribute read."""
        first = self._first_added
        waiting = max(0.0, self._clock() - first) if first is not None else 0.0
        return max(waiting, self.spool.stats().oldest_age_s)

    def add(self, batch: FlowBatch) -> None:
        """Queue a batch; flushes when ``batch_size`` rows are waiting."""
        if batch.n == 0:
            return
        if not self._blocks:
            self._first_added = self._clock()
        for part, days in partitions.split(batch, self._partition_columns):
            if self._blocks and not partitions.fits(partitions.union(self._days, days)):
                self.flush()  # joined, the block would span more partitions than an insert may
            self._days = partitions.union(self._days, days) if self._blocks else days
            self._blocks.append(encode_block(part))
            self._rows += part.n
        self.metrics.pending_rows.set(self._rows)
        if self._rows >= self.settings.batch_size:
            self.flush()

    def add_group(self, batch: FlowBatch, token: str, on_stored: Callable[[], None]) -> None:
        """Store `batch` as blocks of its own, the i-th (one per partition span, as
        :meth:`add` cuts) under ``<token>/<i>``, and call `on_stored` once the store has
        acknowledged all of them, now or when the spool is replayed.

        What was waiting is flushed first, under its own token, so a group's blocks hold
        exactly its rows: the same group sent again after a crash (same rows, same
        token) forms the same blocks, which the store's deduplication drops.  A group the
        spool drops (its limits) never calls back: whoever holds its source keeps it.
        """
        self.flush()
        if batch.n == 0:
            on_stored()
            return
        parts = [part for part, _days in partitions.split(batch, self._partition_columns)]
        state: list[Any] = [len(parts), on_stored]
        now = self._clock()
        self._last_flush = now
        for i, part in enumerate(parts):
            block_token = f"{token}/{i}"
            self._groups[block_token] = state
            block = encode_block(part)
            if not (now >= self._retry_at and self._replay(now) and self._send(block, part.n, now, block_token)):
                self._spool(block, part.n, block_token)

    def maybe_flush(self, now: float | None = None) -> None:
        """The service loop's tick: flush when the interval has passed, retry the spool."""
        now = self._clock() if now is None else now
        if now - self._last_flush >= self.settings.flush_interval_ms / 1000:
            self.flush(now)
        elif len(self.spool) and now >= self._retry_at:
            self._replay(now)
        self.spool.expire()

    def flush(self, now: float | None = None) -> None:
        """Send everything waiting, after the spool; spool it if that cannot be done now.

        Replaying the spool is not budgeted: after a long outage one flush may take a
        while, which is why the writer runs in its own loop, away from the receivers.
        """
        now = self._clock() if now is None else now
        self._last_flush = now
        if self._blocks:
            block, rows = b"".join(self._blocks), self._rows
            self._blocks, self._rows, self._days = [], 0, ()
            self.metrics.pending_rows.set(0)
            self._formed += 1
            token = f"{self._token_prefix}-{self._formed}"
            if not (now >= self._retry_at and self._replay(now) and self._send(block, rows, now, token)):
                self._spool(block, rows, token)
            self._first_added = None  # stored, or in the spool (whose age counts from now on)
        elif len(self.spool) and now >= self._retry_at:
            self._replay(now)

    def close(self) -> None:
        """Flush what is waiting; what the store refuses stays in the spool for next time."""
        self._retry_at = 0.0  # a last attempt, whatever the back-off
        self.flush()
        if len(self.spool):
            stats = self.spool.stats()
            log.warning("writer: closing with %d rows in the spool %s", stats.rows, self.spool.directory)

    def _send(self, block: bytes, rows: int, now: float, token: str) -> bool:
        """One insert attempt; on failure, start or lengthen the back-off."""
        started = time.perf_counter()
        try:
            if not self._migrated:
                applied = self.store.migrate()
                self._migrated = True
                log.info("writer: store reachable, schema up to date (applied %s)", applied or "nothing")
            self.store.insert_native(block, rows, token)
        except StoreError as err:
            self._last_error = str(err)
            self.metrics.insert_errors.inc()
            self._retry_at = now + self._backoff
            log.warning("writer: %s; next attempt in %.0f s", err, self._backoff)
            self._backoff = min(self._backoff * 2, RETRY_MAX_S)
            return False
        elapsed = time.perf_counter() - started
        group = self._groups.pop(token, None)
        if group is not None:
            group[0] -= 1
            if group[0] == 0:
                group[1]()
        self._backoff = RETRY_MIN_S
        self._retry_at = 0.0
        self.metrics.inserts.inc()
        self.metrics.rows_inserted.inc(rows)
        self.metrics.insert_seconds.observe(elapsed)
        self.metrics.last_insert_seconds.set(elapsed)
        return True

    def _replay(self, now: float) -> bool:
        """Send the spool oldest first; True when it is empty afterwards."""
        for entry in self.spool.entries():
            try:
                block = self.spool.read(entry)
            except StoreError as err:
                self.spool.reject(entry, str(err))
                continue
            if not self._send(block, entry.rows, now, entry.token):
                if self._set_aside(entry):
                    continue
                return False
            self._attempts.pop(entry.seq, None)
            self.spool.remove(entry)
            self.metrics.rows_replayed.inc(entry.rows)
            log.info("writer: replayed %d spooled rows (block %d)", entry.rows, entry.seq)
        return True

    def _set_aside(self, entry: SpoolEntry) -> bool:
        """True when a block that just failed is taken out of the queue.

        A block that fails while the store answers ping is probably itself the problem
        (corrupt, or from an incompatible schema): after a few such attempts it is set
        aside, so the queue behind it is not stuck until the limits drop everything.
        """
        if not self.store.ping():
            return False  # the store is away: not this block's fault
        tries = self._attempts.get(entry.seq, 0) + 1
        self._attempts[entry.seq] = tries
        if tries < REJECT_AFTER:
            return False
        del self._attempts[entry.seq]
        self.spool.reject(entry, f"failed {tries} times while the store answered ping; last: {self._last_error}")
        self._retry_at = 0.0
        self._backoff = RETRY_MIN_S
        return True

    def _spool(self, block: bytes, rows: int, token: str) -> None:
        self.spool.push(block, rows, token)
        self.metrics.rows_spooled.inc(rows)
