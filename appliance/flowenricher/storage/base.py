"""The FlowStore interface that the embedded (chDB) and server (HTTP) backends share.

Callers (the batch writer, the ``sql`` and ``lookup`` commands, the API) depend on this
protocol only, so either backend can be swapped in, in production or in a test.
"""

from __future__ import annotations

from typing import Protocol

from ..batch import FlowBatch
from .settings import StoreSettings


class FlowStore(Protocol):
    """A place flows are stored and queried; every failure raises StoreError."""

    settings: StoreSettings

    def migrate(self) -> list[int]:
        """Create or upgrade the schema; returns the migration versions applied now."""
        ...

    def insert(self, batch: FlowBatch) -> None:
        """Store one batch (encoded to Native here)."""
        ...

    def insert_native(self, block: bytes, rows: int) -> None:
        """Store Native-format bytes (one or more blocks) already encoded; `rows` is for logs."""
        ...

    def query(self, sql: str, fmt: str = "TSVWithNames") -> bytes:
        """Run one statement; the result in ClickHouse output format `fmt` (TSV, JSON, ...)."""
        ...

    def ping(self) -> bool:
        """True when the store answers a trivial query now."""
        ...

    def close(self) -> None:
        """Release the engine or connection; the store is unusable afterwards."""
        ...


class NativeBackend:
    """What both backends share: migrations run through their own statement helpers, and
    a FlowBatch is stored as one Native block.  Subclasses provide the three primitives."""

    settings: StoreSettings

    def _execute(self, sql: str) -> None:
        raise NotImplementedError

    def _rows(self, sql: str) -> list[list[str]]:
        raise NotImplementedError

    def insert_native(self, block: bytes, rows: int) -> None:
        raise NotImplementedError

    def migrate(self) -> list[int]:
        from . import schema

        return schema.migrate(self.settings, self._execute, self._rows)

    def insert(self, batch: FlowBatch) -> None:
        if batch.n:
            from .native import encode_block

            self.insert_native(encode_block(batch), batch.n)
