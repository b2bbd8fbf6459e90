"""The embedded engine's memory while flows are inserted: the peak of chDB's tracked memory
(``MemoryTracking``, sampled every 10 ms from a second connection) over a run of inserts
through the batch writer with every view, its CPU, and what the tables take on disk;
with the schema's compression blocks (schema.WRITE_BLOCKS) and with ClickHouse's defaults.

    python bench/insert_memory.py [--inserts 12] [--rounds 2] [--no-merges]

The rows are bench/store_views.py's (generated, directed, one AS per address from 5,000),
inserted in blocks of 250k (the service's ``insert.batch_size``), one every 0.3 s;
merges run as they would (``--no-merges`` stops them, to see the inserts alone).  Each
configuration is a fresh store; rounds alternate the two.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time

from storage_size import BATCH, directed_blocks
from store_views import as_numbered  # bench/ is the script's directory

from appliance.flowenricher.batch import FlowBatch
from appliance.flowenricher.common.sql import string
from appliance.flowenricher.storage import StoreSettings, open_store, schema
from appliance.flowenricher.storage.base import FlowStore
from appliance.flowenricher.storage.spool import Spool
from appliance.flowenricher.storage.writer import BatchWriter

DEFAULTS = {"max_compress_block_size": 1_048_576, "min_compress_block_size": 65_536}
"""ClickHouse's own defaults of schema.WRITE_BLOCKS' settings."""


class Peak(threading.Thread):
    """The highest MemoryTracking seen while it runs."""

    def __init__(self, store: FlowStore) -> None:
        super().__init__(daemon=True)
        self.store, self.peak, self._halt = store, 0, threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            value = self.store.engine_memory_bytes()
            self.peak = max(self.peak, value or 0)
            self._halt.wait(0.01)

    def finish(self) -> int:
        self._halt.set()
        self.join()
        return self.peak


def one_round(blocks: list[FlowBatch], blocks_set: dict[str, int] | None, merges: bool) -> str:
    """One fresh store's inserts with the compression blocks `blocks_set` (None: the
    schema's, WRITE_BLOCKS)."""
    where = tempfile.mkdtemp(prefix="flowenricher-insert-memory-")
    settings = StoreSettings(path=where, batch_size=BATCH, ttl_days=0)
    store = open_store(settings)
    try:
        store.migrate()
        if blocks_set is not None:
            clause = ", ".join(f"{k} = {v}" for k, v in blocks_set.items())
            for table in schema.insert_tables(settings):
                store.query(f"ALTER TABLE {table} MODIFY SETTING {clause}", "TSV")
        if not merges:
            store.query("SYSTEM STOP MERGES", "TSV")
        peak = Peak(store)
        peak.start()
        writer = BatchWriter(store, settings, Spool.from_settings(settings))
        cpu, wall = time.process_time(), time.monotonic()
        for batch in blocks:
            writer.add(batch)
            writer.flush()
            time.sleep(0.3)
        writer.close()
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
        time.sleep(2)  # merges the inserts started
        top = peak.finish()
        stored = int(store.query("SELECT count() FROM flowenricher.flows", "TSV"))
        if stored != sum(b.n for b in blocks):
            raise RuntimeError(f"stored {stored} of {sum(b.n for b in blocks)} rows")
        sizes = store.query(f"SELECT table = {string(settings.table)}, sum(data_compressed_bytes) "
                            "FROM system.parts WHERE database = 'flowenricher' AND active GROUP BY 1 ORDER BY 1",
                            "TSV").decode().split()
        rollups, flows = int(sizes[1]), int(sizes[3])
        shown = blocks_set or schema.WRITE_BLOCKS
        name = f"{shown['max_compress_block_size'] // 1024} / {shown['min_compress_block_size'] // 1024} KiB" + \
            (" (schema)" if blocks_set is None else " (defaults)" if blocks_set == DEFAULTS else "")
        return (f"{name:26s} engine peak {top / 2**20:5.0f} MB, CPU {cpu:5.1f} s, wall {wall:5.1f} s, "
                f"flows {flows / 2**20:6.2f} MiB, rollups {rollups / 2**20:6.2f} MiB")
    finally:
        store.close()
        shutil.rmtree(where, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--inserts", type=int, default=12)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-merges", action="store_true", help="SYSTEM STOP MERGES before the inserts")
    ap.add_argument("--also", default="", metavar="MAX:MIN[,MAX:MIN]",
                    help="other max/min compression block sizes (bytes) to run beside the schema's and the defaults")
    args = ap.parse_args()
    n = args.inserts * BATCH
    blocks = as_numbered(directed_blocks(n, n / 250_000 / 3600), 5000)
    print(f"{len(blocks)} inserts of up to {BATCH:,} rows, every view, merges {'stopped' if args.no_merges else 'on'}")
    configurations: list[dict[str, int] | None] = [DEFAULTS, None]
    for pair in filter(None, args.also.split(",")):
        high, low = (int(v) for v in pair.split(":"))
        configurations.append({"max_compress_block_size": high, "min_compress_block_size": low})
    for _ in range(args.rounds):
        for blocks_set in configurations:
            print(one_round(blocks, blocks_set, not args.no_merges), flush=True)


if __name__ == "__main__":
    main()
