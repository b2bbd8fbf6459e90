"""A bounded on-disk queue of Native blocks the store could not take, replayed oldest first.

One file per failed flush, named ``<seq>-<created ms>-<rows>-<token>.native.zst`` so that
order, age, row count and the insert's deduplication token are known from a directory
listing after a restart; the block is compressed with ZSTD (level :data:`ZSTD_LEVEL`).
Files named ``<seq>-<created ms>-<rows>.native`` (uncompressed, no token) from earlier
versions are still replayed.  A file appears complete or not at all (written under a
temporary name, then renamed).  When the spool grows past ``max_bytes`` or holds files
older than ``max_age_s``, the oldest files are deleted and their rows counted and
logged as dropped: losing flows is sometimes unavoidable, losing them silently is not.

A block the store keeps refusing is moved to ``rejected/`` beside a ``.reason`` file;
``flowenricher spool requeue`` moves it back (:func:`requeue`), and a running spool
notices new files in its directory (:meth:`Spool.expire` rescans it when it changed).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd

from ..common.private import open_private, private_dir
from ..errors import StoreError
from .metrics import SpoolMetrics
from .settings import StoreSettings

log = logging.getLogger(__name__)

_NAME = re.compile(r"^(\d{12})-(\d{13})-(\d+)(?:-([0-9A-Za-z_-]+)\.native\.zst|\.native)$")
_TMP_PREFIX = ".tmp-"
REJECTED_DIR = "rejected"
REASON_SUFFIX = ".reason"
RESCAN_EVERY_S = 1.0
"""How often, at most, a running spool looks for files put back into its directory."""

ZSTD_LEVEL = 1
"""ZSTD level of spooled blocks.  Measured on 250k-row blocks of enriched generated
traffic (bench/spool_codec.py, docs/storage.md): raw Native 158 bytes/row; ZSTD 1 24
bytes/row at about 670 MB/s, ZSTD 3 23 bytes/row at 480 MB/s, LZ4 39 bytes/row at about
the speed of ZSTD 1.  Level 1 keeps most of the ratio at a fraction of the cost of the
higher ones.  The binding is Python 3.14's compression.zstd (its backport before 3.14,
which clickhouse-connect already requires)."""


@dataclass(frozen=True)
class SpoolEntry:
    """One spooled block; ``token`` is its inserts' deduplication token."""

    seq: int
    created: float  # unix seconds
    rows: int
    size: int
    path: str
    token: str
    compressed: bool


def parse_name(directory: str, name: str) -> SpoolEntry | None:
    """The entry a spool file name describes (None: not a spool file)."""
    m = _NAME.match(name)
    if m is None:
        return None
    seq, created_ms, rows = (int(g) for g in m.groups()[:3])
    path = os.path.join(directory, name)
    # A file from before tokens: one derived from its name is as stable across retries
    # (not from its time, which a requeue renews).
    token = m.group(4) or f"legacy-{seq}-{rows}"
    return SpoolEntry(seq, created_ms / 1000, rows, os.path.getsize(path), path, token, m.group(4) is not None)


def spool_name(seq: int, created: float, rows: int, token: str) -> str:
    return f"{seq:012d}-{int(created * 1000):013d}-{rows}-{token}.native.zst"


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
        metrics_prefix: str | None = None,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self.fsync = fsync
        self.metrics = SpoolMetrics(registry) if metrics_prefix is None else SpoolMetrics(registry, metrics_prefix)
        self._clock = clock
        self._entries: list[SpoolEntry] = []
        self._next_seq = 0
        self._lock = threading.Lock()
        self.dropped_rows = 0
        self.dropped_files = 0
        self._scanned_mtime = 0
        self._scanned_at = 0.0
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
            private_dir(self.directory)
            names = sorted(os.listdir(self.directory))
            rejected_dir = os.path.join(self.directory, REJECTED_DIR)
            rejected = os.listdir(rejected_dir) if os.path.isdir(rejected_dir) else []
        except OSError as err:
            raise StoreError(f"spool: cannot use directory {self.directory}: {err}") from err
        for name in names:
            if name.startswith(_TMP_PREFIX):
                # A write cut short by a crash: never acknowledged as spooled.
                _unlink_quietly(os.path.join(self.directory, name))
        self._rescan()
        # Sequence numbers stay unique with the rejected files, which may come back.
        seqs = [e.seq for e in self._entries] + [
            int(m.group(1)) for m in map(_NAME.match, rejected) if m is not None
        ]
        self._next_seq = max(seqs) + 1 if seqs else 0
        if self._entries:
            stats = self.stats()
            log.warning(
                "spool: %d blocks (%d rows, %d bytes) left by a previous run in %s will be replayed",
                stats.files,
                stats.rows,
                stats.size,
                self.directory,
            )

    def _rescan(self) -> int:
        """Take in spool files of the directory not yet known (put back by ``spool requeue``,
        or left by a previous run); returns how many.  Called with the lock held or before
        the spool is shared."""
        try:
            self._scanned_mtime = os.stat(self.directory).st_mtime_ns
            names = os.listdir(self.directory)
        except OSError as err:
            log.warning("spool: cannot list %s: %s", self.directory, err)
            return 0
        known = {os.path.basename(e.path) for e in self._entries}
        added = []
        for name in names:
            if name in known or name.startswith(_TMP_PREFIX):
                continue
            try:
                entry = parse_name(self.directory, name)
            except OSError:  # gone meanwhile
                continue
            if entry is not None:
                added.append(entry)
        if added:
            self._entries.extend(added)
            self._entries.sort(key=lambda e: e.seq)
            self._next_seq = max(self._next_seq, self._entries[-1].seq + 1)
        return len(added)

    def push(self, block: bytes, rows: int, token: str) -> Dropped:
        """Append one block, compressed; returns what the limits then forced out (oldest first).

        `token` is the deduplication token its inserts were (and will be) sent with.
        """
        data = zstd.compress(block, level=ZSTD_LEVEL)
        with self._lock:
            now = self._clock()
            seq = self._next_seq
            self._next_seq += 1
            name = spool_name(seq, now, rows, token)
            path = os.path.join(self.directory, name)
            tmp = os.path.join(self.directory, _TMP_PREFIX + name)
            try:
                with open_private(tmp, "wb") as f:
                    f.write(data)
                    if self.fsync:
                        f.flush()
                        os.fsync(f.fileno())
                os.rename(tmp, path)
                if self.fsync:
                    _fsync_dir(self.directory)
            except OSError as err:
                _unlink_quietly(tmp)
                dropped = Dropped(1, rows, len(data))
                self._count_drop(dropped, "write_error", f"cannot write {path}: {err}")
                return dropped
            self._entries.append(SpoolEntry(seq, now, rows, len(data), path, token, True))
            return self._enforce_limits(now)

    def expire(self) -> Dropped:
        """Apply the limits now (the age limit moves with the clock), after taking in any
        file put back into the directory since it was last looked at."""
        with self._lock:
            now = self._clock()
            if now - self._scanned_at >= RESCAN_EVERY_S or now < self._scanned_at:
                self._scanned_at = now
                with contextlib.suppress(OSError):
                    if os.stat(self.directory).st_mtime_ns != self._scanned_mtime and self._rescan():
                        log.info("spool: took in blocks put back into %s", self.directory)
            return self._enforce_limits(now)

    def entries(self) -> list[SpoolEntry]:
        """The spooled blocks, oldest first."""
        with self._lock:
            return list(self._entries)

    def read(self, entry: SpoolEntry) -> bytes:
        """The block as it was pushed (decompressed)."""
        try:
            with open(entry.path, "rb") as f:
                data = f.read()
        except OSError as err:
            raise StoreError(f"spool: cannot read {entry.path}: {err}") from err
        if not entry.compressed:
            return data
        try:
            return zstd.decompress(data)
        except zstd.ZstdError as err:
            raise StoreError(f"spool: {entry.path} is not a complete ZSTD frame: {err}") from err

    def remove(self, entry: SpoolEntry) -> None:
        """Forget a block that reached the store."""
        with self._lock:
            self._entries = [e for e in self._entries if e.seq != entry.seq]
            _unlink_quietly(entry.path)

    def reject(self, entry: SpoolEntry, reason: str) -> None:
        """Take a block the store keeps refusing out of the queue, into ``rejected/``.

        Kept with its reason in a ``.reason`` file beside it, counted and logged; the
        queue behind it moves on.  ``flowenricher spool requeue`` puts it back.
        """
        with self._lock:
            self._entries = [e for e in self._entries if e.seq != entry.seq]
            target = os.path.join(self.directory, REJECTED_DIR)
            name = os.path.basename(entry.path)
            try:
                private_dir(target)
                with open_private(os.path.join(target, name + REASON_SUFFIX), "w", encoding="utf-8") as f:
                    f.write(reason.strip() + "\n")
                os.rename(entry.path, os.path.join(target, name))
            except OSError as err:
                _unlink_quietly(entry.path)
                _unlink_quietly(os.path.join(target, name + REASON_SUFFIX))
                dropped = Dropped(1, entry.rows, entry.size)
                self._count_drop(dropped, "rejected", f"rejected by the store ({reason}), not kept: {err}")
                return
            self.metrics.blocks_rejected.inc()
            self.metrics.rows_rejected.inc(entry.rows)
            log.error(
                "spool: block %s (%d rows) rejected by the store, kept in %s: %s; "
                "fix the cause, then: flowenricher spool requeue %s",
                name, entry.rows, target, reason, name,
            )

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


@dataclass(frozen=True)
class SpoolFile:
    """A spooled block as ``flowenricher spool list`` shows it: queued or rejected."""

    name: str
    state: str  # "queued" or "rejected"
    rows: int
    created: float
    size: int
    reason: str


def list_files(directory: str) -> list[SpoolFile]:
    """The queue then the rejected blocks of the spool in `directory`, oldest first.

    Reads the directory only (safe while the service runs: unlike constructing a
    :class:`Spool`, it removes no temporary file a running writer is filling).
    """
    out: list[SpoolFile] = []
    for state, where in (("queued", directory), ("rejected", os.path.join(directory, REJECTED_DIR))):
        try:
            names = sorted(os.listdir(where))
        except FileNotFoundError:
            continue
        except OSError as err:
            raise StoreError(f"spool: cannot list {where}: {err}") from err
        for name in names:
            try:
                entry = parse_name(where, name)
            except OSError:
                continue
            if entry is None:
                continue
            reason = ""
            if state == "rejected":
                with contextlib.suppress(OSError), open(entry.path + REASON_SUFFIX, encoding="utf-8") as f:
                    reason = f.read().strip()
            out.append(SpoolFile(name, state, entry.rows, entry.created, entry.size, reason))
    return out


def requeue(directory: str, names: Sequence[str] | None) -> list[str]:
    """Move rejected blocks (`names`, or every one for None) back into the queue; returns
    their names there.

    Works whether the service runs (its spool takes them in at its next rescan) or not
    (the next start does).  Raises StoreError naming what is not a rejected block.
    """
    rejected = os.path.join(directory, REJECTED_DIR)
    try:
        available = sorted(n for n in os.listdir(rejected) if _NAME.match(n))
    except FileNotFoundError:
        available = []
    except OSError as err:
        raise StoreError(f"spool: cannot list {rejected}: {err}") from err
    chosen = available if names is None else list(names)
    missing = [n for n in chosen if n not in available]
    if missing:
        raise StoreError(
            f"spool: not rejected blocks in {rejected}: {', '.join(missing)} "
            "(see flowenricher spool list)"
        )
    moved = []
    for name in chosen:
        # Same sequence number (it goes before newer blocks) and token; the creation time
        # is renewed, so spool_max_age_s counts from the requeue, not from the first failure.
        renamed = f"{name[:13]}{int(time.time() * 1000):013d}{name[26:]}"
        target = os.path.join(directory, renamed)
        if os.path.exists(target):
            raise StoreError(f"spool: {target} already exists; not overwriting it with {name} from {rejected}")
        try:
            os.rename(os.path.join(rejected, name), target)
        except OSError as err:
            raise StoreError(f"spool: cannot move {name} from {rejected} back to {directory}: {err}") from err
        _unlink_quietly(os.path.join(rejected, name + REASON_SUFFIX))
        moved.append(renamed)
    return moved


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
