"""A bounded on-disk queue of Native blocks the store could not take, replayed oldest first.

One file per failed flush, named ``<seq>-<created ms>-<rows>.native`` so that order,
age and row count are known from a directory listing after a restart.  A file appears
complete or not at all (written under a temporary name, then renamed).  When the spool
grows past ``max_bytes`` or holds files older than ``max_age_s``, the oldest files are
deleted and their rows counted and logged as dropped: losing flows is sometimes
unavoidable, losing them silently is not.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import StoreError
from .metrics import SpoolMetrics
from .settings import StoreSettings

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(\d{12})-(\d{13})-(\d+)\.native$")
_TMP_PREFIX = ".tmp-"
REJECTED_DIR = "rejected"


@dataclass(frozen=True)
class SpoolEntry:
    """One spooled block."""

    seq: int
    created: float  # unix seconds
    rows: int
    size: int
    path: str


@dataclass(frozen=True)
class Dropped:
    """What a call had to throw away (all zero when nothing)."""

    files: int = 0
    rows: int = 0
    size: int = 0

    def __bool__(self) -> bool:
        return self.files > 0

    def __add__(self, other: Dropped) -> Dropped:
        return Dropped(self.files + other.files, self.rows + other.rows, self.size + other.size)


@dataclass(frozen=True)
class SpoolStats:
    """The spool's size, for metrics and the status API."""

    size: int
    files: int
    rows: int
    oldest_age_s: float


class Spool:
    """The spool directory; constructing it takes over the files a previous run left.

    ``max_bytes`` 0 disables spooling (every push is dropped, and counted);
    ``max_age_s`` 0 means no age limit.  Thread-safe.
    """

    def __init__(
        self,
        directory: str,
        max_bytes: int,
        max_age_s: float,
        fsync: bool = False,
        registry: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.fsync = fsync
        self.metrics = SpoolMetrics(registry)
        self._clock = clock
        self._entries: list[SpoolEntry] = []
        self._next_seq = 0
        self._lock = threading.Lock()
        self.dropped_rows = 0
        self.dropped_files = 0
        self._load()
        self.metrics.watch(lambda name: float(getattr(self.stats(), name)))

    @classmethod
    def from_settings(cls, settings: StoreSettings, registry: Any = None) -> Spool:
        return cls(
            settings.spool_path,
            settings.spool_max_bytes,
            settings.spool_max_age_s,
            settings.spool_fsync,
            registry,
        )

    def _load(self) -> None:
        try:
            os.makedirs(self.directory, exist_ok=True)
            names = sorted(os.listdir(self.directory))
        except OSError as err:
            raise StoreError(f"spool: cannot use directory {self.directory}: {err}") from err
        for name in names:
            path = os.path.join(self.directory, name)
            if name.startswith(_TMP_PREFIX):
                os.unlink(path)  # a write cut short by a crash: never acknowledged as spooled
                continue
            m = _NAME.match(name)
            if m is None:
                continue
            seq, created_ms, rows = (int(g) for g in m.groups())
            self._entries.append(SpoolEntry(seq, created_ms / 1000, rows, os.path.getsize(path), path))
        self._entries.sort(key=lambda e: e.seq)
        self._next_seq = self._entries[-1].seq + 1 if self._entries else 0
        if self._entries:
            stats = self.stats()
            log.warning(
                "spool: %d blocks (%d rows, %d bytes) left by a previous run in %s will be replayed",
                stats.files,
                stats.rows,
                stats.size,
                self.directory,
            )

    def push(self, block: bytes, rows: int) -> Dropped:
        """Append one block; returns what the limits then forced out (oldest first)."""
        with self._lock:
            now = self._clock()
            seq = self._next_seq
            self._next_seq += 1
            name = f"{seq:012d}-{int(now * 1000):013d}-{rows}.native"
            path = os.path.join(self.directory, name)
            tmp = os.path.join(self.directory, _TMP_PREFIX + name)
            try:
                with open(tmp, "wb") as f:
                    f.write(block)
                    if self.fsync:
                        f.flush()
                        os.fsync(f.fileno())
                os.rename(tmp, path)
                if self.fsync:
                    _fsync_dir(self.directory)
            except OSError as err:
                _unlink_quietly(tmp)
                dropped = Dropped(1, rows, len(block))
                self._count_drop(dropped, "write_error", f"cannot write {path}: {err}")
                return dropped
            self._entries.append(SpoolEntry(seq, now, rows, len(block), path))
            return self._enforce_limits(now)

    def expire(self) -> Dropped:
        """Apply the limits now (the age limit moves with the clock)."""
        with self._lock:
            return self._enforce_limits(self._clock())

    def entries(self) -> list[SpoolEntry]:
        """The spooled blocks, oldest first."""
        with self._lock:
            return list(self._entries)

    def read(self, entry: SpoolEntry) -> bytes:
        try:
            with open(entry.path, "rb") as f:
                return f.read()
        except OSError as err:
            raise StoreError(f"spool: cannot read {entry.path}: {err}") from err

    def remove(self, entry: SpoolEntry) -> None:
        """Forget a block that reached the store."""
        with self._lock:
            self._entries = [e for e in self._entries if e.seq != entry.seq]
            _unlink_quietly(entry.path)

    def reject(self, entry: SpoolEntry, reason: str) -> Dropped:
        """Take a block the store keeps refusing out of the queue, into ``rejected/``.

        Kept for a human to look at, counted and logged as dropped; the queue behind
        it moves on.
        """
        with self._lock:
            self._entries = [e for e in self._entries if e.seq != entry.seq]
            target = os.path.join(self.directory, REJECTED_DIR)
            try:
                os.makedirs(target, exist_ok=True)
                os.rename(entry.path, os.path.join(target, os.path.basename(entry.path)))
            except OSError:
                _unlink_quietly(entry.path)
            dropped = Dropped(1, entry.rows, entry.size)
            self._count_drop(dropped, "rejected", f"rejected by the store ({reason}), moved to {target}")
            return dropped

    def stats(self) -> SpoolStats:
        with self._lock:
            entries = self._entries
            oldest = self._clock() - entries[0].created if entries else 0.0
            return SpoolStats(
                sum(e.size for e in entries), len(entries), sum(e.rows for e in entries), oldest
            )

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def _enforce_limits(self, now: float) -> Dropped:
        dropped = Dropped()
        if self.max_age_s > 0:
            while self._entries and now - self._entries[0].created > self.max_age_s:
                dropped += self._drop_oldest()
            if dropped:
                self._count_drop(dropped, "age", f"older than spool_max_age_s={self.max_age_s:g}")
        by_size = Dropped()
        total = sum(e.size for e in self._entries)
        while self._entries and total > self.max_bytes:
            gone = self._drop_oldest()
            total -= gone.size
            by_size += gone
        if by_size:
            self._count_drop(by_size, "size", f"spool over spool_max_bytes={self.max_bytes}")
        return dropped + by_size

    def _drop_oldest(self) -> Dropped:
        entry = self._entries.pop(0)
        _unlink_quietly(entry.path)
        return Dropped(1, entry.rows, entry.size)

    def _count_drop(self, dropped: Dropped, reason: str, why: str) -> None:
        self.dropped_rows += dropped.rows
        self.dropped_files += dropped.files
        log.error(
            "spool: DROPPED %d rows (%d blocks, %d bytes) from %s: %s; %d rows dropped since start",
            dropped.rows,
            dropped.files,
            dropped.size,
            self.directory,
            why,
            self.dropped_rows,
        )
        self.metrics.rows_dropped.labels(reason=reason).inc(dropped.rows)
        self.metrics.files_dropped.labels(reason=reason).inc(dropped.files)


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
