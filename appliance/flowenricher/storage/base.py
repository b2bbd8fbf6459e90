"""The FlowStore interface that the embedded (chDB) and server (HTTP) backends share.

Callers (the batch writer, the ``sql`` and ``lookup`` commands, the API) depend on this
protocol only, so either backend can be swapped in, in production or in a test.
"""

from __future__ import annotations

import uuid
from typing import Protocol

from ..batch import FlowBatch
from .partitions import MAX_PARTITIONS_PER_INSERT
from .settings import StoreSettings

INSERT_SETTINGS: dict[str, int] = {
    "optimize_on_insert": 0,
    "async_insert": 0,
    "max_partitions_per_insert_block": MAX_PARTITIONS_PER_INSERT,
    "throw_on_max_partitions_per_insert_block": 1,
    "insert_deduplicate": 1,
    "deduplicate_blocks_in_dependent_materialized_views": 1,
    "parallel_view_processing": 1,
}
"""Settings of every flow insert, in both backends.

``async_insert`` 0: the insert is answered once the parts are written (or with the
error), so an acknowledged insert is a stored one; with an asynchronous insert a block
the engine later throws away would already have been counted.  The partition limit is
stated rather than inherited, so the writer's splitting (partitions.py) and the store
agree, and exceeding it is an error, never a silent drop.  The last two make a retried
insert with the same ``insert_deduplication_token`` a no-op in the flows table and in
the rollups the views feed (with the tables' window, schema.DEDUPLICATION_WINDOW).

``optimize_on_insert`` (on by default) sorts and collapses each inserted block as a merge
of its table's engine would.  The flows table is a plain MergeTree (nothing to collapse)
and the rollups' views already GROUP BY their keys, so for the SummingMergeTree rollups it
only sorts and sums what is already summed.  Measured here (chDB, 250k-row enriched
blocks with the three rollup views): 382k rows/s with it, 518k rows/s without.

``parallel_view_processing`` pushes a block to the materialized views (the rollups and
"who" rollups of schema.py: 17 views since migration 10) concurrently instead of one
after another.  Each view is a pipeline and a part of its own, so an insert's time is
mostly the views'; the CPU spent is the same and the insert is answered (or fails) once
every view has written.  Measured here on 2 cores (2026-12-07, docs/performance.md):
bench/store_insert.py 135-168k rows/s without, 200-220k with, the same CPU per row and
peak RSS within 2%; 30 inserts of 10 rows 5.0-7.2 s without, 3.3-5.1 s with (runs on
this shared machine vary that much).
"""


CLUSTER_INSERT_SETTINGS: dict[str, int] = {"insert_distributed_sync": 1}
"""Added on a cluster, where flows are inserted into the Distributed table: the insert is
answered once every shard stored its part (the Distributed engine sends each shard its
rows, with this insert's settings, deduplication token included), not once the node
queued them on its own disk to send later; so an acknowledged insert is a stored one
there too.  (``distributed_foreground_insert`` in recent releases; this older name is
understood by both.)"""


def insert_settings(settings: StoreSettings, token: str | None) -> dict[str, int | str]:
    """The settings of one flow insert under deduplication `token` (None: a token of its own)."""
    cluster = CLUSTER_INSERT_SETTINGS if settings.cluster else {}
    return {**INSERT_SETTINGS, **cluster, "insert_deduplication_token": token or new_token()}


class FlowStore(Protocol):
    """A place flows are stored and queried; every failure raises StoreError."""

    settings: StoreSettings

    def migrate(self) -> list[int]:
        """Create or upgrade the schema; returns the migration versions applied now."""
        ...

    def insert(self, batch: FlowBatch) -> None:
        """Store one batch (encoded to Native here)."""
        ...

    def insert_native(self, block: bytes, rows: int, token: str | None = None) -> None:
        """Store Native-format bytes (one or more blocks) already encoded; `rows` is for logs.

        Raises StoreError unless the store acknowledged every row.  `token` is the
        insert's deduplication token: the same token sent again (a retry) stores nothing
        twice; None gives the insert a token of its own.  The caller keeps the block
        within the partition limit (partitions.py).
        """
        ...

    def query(self, sql: str, fmt: str = "TSVWithNames") -> bytes:
        """Run one statement; the result in ClickHouse output format `fmt` (TSV, JSON, ...)."""
        ...

    def engine_memory_bytes(self) -> int | None:
        """Bytes an engine inside this process holds (chDB's memory tracker); None when the
        engine is a server's."""
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

    def insert_native(self, block: bytes, rows: int, token: str | None = None) -> None:
        raise NotImplementedError

    def engine_memory_bytes(self) -> int | None:
        return None

    def migrate(self) -> list[int]:
        from . import schema

        return schema.migrate(self.settings, self._execute, self._rows)

    def insert(self, batch: FlowBatch) -> None:
        """Store `batch`, in as many inserts as the partition limit needs."""
        if batch.n:
            from . import partitions, schema
            from .native import encode_block

            for part, _ in partitions.split(batch, schema.partition_columns(self.settings)):
                self.insert_native(encode_block(part), part.n)


def new_token() -> str:
    """A deduplication token no other insert has: with the tables' deduplication window,
    an insert without a token would be deduplicated by its content, and two batches of
    identical flows are two batches."""
    return uuid.uuid4().hex
