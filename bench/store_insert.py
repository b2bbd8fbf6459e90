"""Store insert throughput: the batch writer (BatchWriter, the service's path) storing
250k-row blocks into the embedded store (chDB) with the rollup views on.

    python bench/store_insert.py [--blocks 8] [--rounds 3] [--small 30]

``--small N`` also times what every insert pays whatever its size (the views' pipelines
and parts): a fresh store's open and migrations, then N inserts of 10 rows, each round.

Blocks are built as bench/storage_size.py builds them (generated traffic, encoded as a
router sends it, decoded, direction added), all on one day: the normal case of one or
two partitions per insert.  Each round stores every block into a fresh data directory;
the best round is reported (the machine is shared: the best is the least disturbed), by
wall time and by CPU time of the process (all threads: less sensitive to other load).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time

import numpy as np
from storage_size import BATCH, directed_blocks  # bench/ is the script's directory

from appliance.flowenricher.batch import FlowBatch
from appliance.flowenricher.storage import StoreSettings, open_store
from appliance.flowenricher.storage.spool import Spool
from appliance.flowenricher.storage.writer import BatchWriter


def one_round(blocks: list[FlowBatch]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) to store every block."""
    where = tempfile.mkdtemp(prefix="flowenricher-store-insert-")
    settings = StoreSettings(path=where, batch_size=BATCH, ttl_days=0)
    store = open_store(settings)
    try:
        store.migrate()
        writer = BatchWriter(store, settings, Spool.from_settings(settings))
        started, cpu = time.perf_counter(), time.process_time()
        for batch in blocks:
            writer.add(batch)
        writer.close()
        total, cpu = time.perf_counter() - started, time.process_time() - cpu
        stored = int(store.query("SELECT count() FROM flowenricher.flows", "TSV"))
        if stored != sum(b.n for b in blocks):
            raise RuntimeError(f"stored {stored} of {sum(b.n for b in blocks)} rows")
        return total, cpu
    finally:
        store.close()
        shutil.rmtree(where, ignore_errors=True)


def small_inserts(block: FlowBatch, n: int) -> tuple[float, float]:
    """(seconds to open and migrate a fresh store, seconds for `n` inserts of 10 rows)."""
    where = tempfile.mkdtemp(prefix="flowenricher-small-inserts-")
    small = block.take(np.arange(10))
    started = time.perf_counter()
    store = open_store(StoreSettings(path=where, ttl_days=0))
    try:
        store.migrate()
        migrated = time.perf_counter()
        for _ in range(n):
            store.insert(small)
        return migrated - started, time.perf_counter() - migrated
    finally:
        store.close()
        shutil.rmtree(where, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--blocks", type=int, default=8, help="250k-row blocks per round (default 8)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--small", type=int, default=0, help="also time this many 10-row inserts per round")
    args = ap.parse_args()
    blocks = directed_blocks(args.blocks * BATCH, 2.0)
    rows = sum(b.n for b in blocks)
    results = [one_round(blocks) for _ in range(args.rounds)]
    for _ in range(args.rounds if args.small else 0):
        migrate_s, small_s = small_inserts(blocks[0], args.small)
        print(f"small: open + migrate {migrate_s:.2f} s, {args.small} inserts of 10 rows {small_s:.2f} s "
              f"({small_s / args.small * 1000:.0f} ms each)")
    for total, cpu in results:
        print(f"round: {rows / total:9.0f} rows/s, {rows / cpu:9.0f} rows per CPU-second")
    print(f"best: {rows / min(r[0] for r in results):.0f} rows/s, "
          f"{rows / min(r[1] for r in results):.0f} rows per CPU-second")

if __name__ == "__main__":
    main()
