"""The embedded flow store: the ClickHouse engine in this process (chDB) on a data directory.

Facts about chDB 4.4 that shape this module (checked on this machine):

* One process owns a data directory: a second process fails to open it ("Cannot lock
  file <dir>/status"); the owner's PID is in that ``status`` file.
* One process holds one directory at a time: opening a different path while a
  connection is open fails ("EmbeddedServer already initialized with path ..."); after
  every connection is closed another path can be opened.  Several connections to the
  same path share the engine, and paths are compared literally, so it is normalised.
* ``Connection.send_insert(sql, "Native")`` answers OK, rows_written included, for a
  block its sink then failed to store: more partitions than
  ``max_partitions_per_insert_block`` (the whole block is gone) or a materialized view
  that raised (the flows stored, the rollup not); ``query()`` raises for the same
  inserts.  ``query()`` cannot carry binary data after the statement (it stops at the
  first NUL byte), so a block is inserted with ``INSERT ... FROM INFILE`` of an
  in-memory file (``memfd``, read through ``/proc/self/fd``): no disk, columns matched
  by name as in any ``FORMAT Native`` insert, errors raised (see :func:`insert_bytes`).
* A connection runs one statement at a time, so writes and reads use one connection
  each: a long dashboard query does not hold up inserts.
* The engine's allocator (jemalloc) keeps what an insert freed: after a few 250k-row
  inserts with the rollup views, 430 MB more resident memory than before them, of which
  ``SYSTEM JEMALLOC PURGE`` returned all but 15 MB in 45-70 ms (measured here).  Nothing
  in the embedded engine purges on its own, so the store does it at most every
  ``PURGE_EVERY_S`` after an insert.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import chdb

from ..common.private import private_dir
from ..common.sql import string
from ..errors import StoreError
from .base import NativeBackend, insert_settings
from .settings import StoreSettings

log = logging.getLogger(__name__)

PURGE_EVERY_S = 5.0

_chdb_connect: Callable[[str], Any] = chdb.connect  # untyped in chDB


class EmbeddedStore(NativeBackend):
    """A :class:`~.base.FlowStore` on chDB; build it with :meth:`open`."""

    def __init__(self, settings: StoreSettings, path: str, writer: Any, reader: Any) -> None:
        self.settings = settings
        self.path = path
        self._writer = writer
        self._reader = reader
        self._write_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._purged_at = time.monotonic()
        self._purge = True
        self._engine_bytes = 0

    @classmethod
    def open(cls, settings: StoreSettings) -> EmbeddedStore:
        """Open (creating it if needed) the data directory ``settings.path``.

        Raises StoreError naming the directory when another process or another
        directory in this process holds the engine.
        """
        path = os.path.realpath(settings.path)
        try:
            private_dir(path)
        except OSError as err:
            raise StoreError(f"embedded store: cannot create data directory {path}: {err}") from err
        writer = _connect(path)
        try:
            reader = _connect(path)
        except StoreError:
            writer.close()
            raise
        log.info("embedded store: chDB %s in %s", chdb.__version__, path)
        return cls(settings, path, writer, reader)

    def insert_native(self, block: bytes, rows: int, token: str | None = None) -> None:
        table = self.settings.qualified_table
        settings = insert_settings(self.settings, token)
        with self._write_lock:
            conn = self._live(self._writer)
            try:
                insert_bytes(conn, f"INSERT INTO {table}", block, "Native", settings)
            except Exception as err:  # chDB raises RuntimeError or ChdbError
                raise StoreError(
                    f"embedded store {self.path}: insert of {rows} rows into {table} failed: {err}"
                ) from err
            now = time.monotonic()
            if self._purge and now - self._purged_at >= PURGE_EVERY_S:
                self._purged_at = now
                try:
                    conn.query("SYSTEM JEMALLOC PURGE", "TSV")
                except Exception as err:  # a chDB built without jemalloc: nothing to return
                    self._purge = False
                    log.info("embedded store: not returning freed memory to the system: %s", err)

    def query(self, sql: str, fmt: str = "TSVWithNames") -> bytes:
        with self._read_lock:
            conn = self._live(self._reader)
            try:
                return bytes(conn.query(sql, fmt).bytes())
            except Exception as err:
                raise StoreError(f"embedded store {self.path}: query failed: {err}") from err

    def engine_memory_bytes(self) -> int | None:
        """chDB's memory tracker (``MemoryTracking``: the engine's caches, merges and the
        insert or query in progress).  Read through the reader connection only when it is
        free: while a query holds it, the last figure (a scrape never waits on a query)."""
        if self._read_lock.acquire(blocking=False):
            try:
                if self._reader is not None:
                    text = self._reader.query("SELECT value FROM system.metrics WHERE metric = 'MemoryTracking'", "TSV")
                    self._engine_bytes = int(bytes(text.bytes()).strip() or b"0")
            except Exception as err:  # a scrape must not fail: keep the last figure
                log.debug("embedded store: MemoryTracking not read: %s", err)
            finally:
                self._read_lock.release()
        return self._engine_bytes

    def ping(self) -> bool:
        try:
            return self.query("SELECT 1", "TSV").strip() == b"1"
        except StoreError:
            return False

    def close(self) -> None:
        """Close both connections; the directory is free for another process afterwards."""
        with self._write_lock, self._read_lock:
            for conn in (self._writer, self._reader):
                if conn is not None:
                    conn.close()
            self._writer = self._reader = None

    def _live(self, conn: Any) -> Any:
        if conn is None:
            raise StoreError(f"embedded store {self.path}: used after close()")
        return conn

    def _execute(self, sql: str) -> None:
        with self._write_lock:
            conn = self._live(self._writer)
            try:
                conn.query(sql, "TSV")
            except Exception as err:
                raise StoreError(f"embedded store {self.path}: {err}\n  in: {sql}") from err

    def _rows(self, sql: str) -> list[list[str]]:
        text = self.query(sql, "TSV").decode()
        return [line.split("\t") for line in text.splitlines()]


def insert_bytes(conn: Any, into: str, data: bytes, fmt: str, settings: dict[str, int | str]) -> Any:
    """Run ``<into> FROM INFILE ... [SETTINGS ...] FORMAT <fmt>`` on chDB connection `conn`,
    with `data` as the file: raises whatever the insert, or a view it feeds, raised.

    `into` is ``INSERT INTO table [(columns)]``; string settings are quoted here.
    Returns chDB's result (``rows_written()``, ``bytes_written()``).
    """
    fd = os.memfd_create("flowenricher-insert", os.MFD_CLOEXEC)
    try:
        with open(fd, "wb", closefd=False) as f:
            f.write(data)
        clause = ", ".join(f"{k} = {v if isinstance(v, int) else string(v)}" for k, v in settings.items())
        clause = f" SETTINGS {clause}" if clause else ""
        return conn.query(f"{into} FROM INFILE '/proc/self/fd/{fd}'{clause} FORMAT {fmt}", "TSV")
    finally:
        os.close(fd)


def _connect(path: str) -> Any:
    try:
        return _chdb_connect(path)
    except Exception as err:
        raise StoreError(_open_failure(path, str(err))) from err


def _open_failure(path: str, detail: str) -> str:
    """Say who holds the directory: the usual reason chDB refuses to open one."""
    if "already initialized with path" in detail:
        return (
            f"embedded store: cannot open {path}: this process already has another chDB data "
            f"directory open (chDB allows one per process): {detail}"
        )
    owner = ""
    try:
        with open(os.path.join(path, "status"), encoding="utf-8", errors="replace") as f:
            owner = next((line.strip() for line in f if line.startswith("PID:")), "")
    except OSError:
        pass
    if owner:
        return (
            f"embedded store: cannot open {path}: the directory is in use by another process "
            f"({owner}, see {path}/status); stop it or set storage.path to another directory "
            f"(chDB: {detail})"
        )
    return f"embedded store: cannot open {path}: {detail}"
