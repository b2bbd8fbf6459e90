"""What each materialized view adds to a flow insert: CPU per row of the batch writer
storing 250k-row blocks into the embedded store (chDB) with no view, with each view that
reads the flows table alone, and with every view.

    python bench/store_views.py [--blocks 6] [--rounds 3] [--insert-rows 250000,1000000]
    python bench/store_views.py --as-numbers 5000

Blocks are built as bench/store_insert.py builds them (generated traffic, encoded,
decoded, direction added), but spread over `--rate` flows a second as a live collector
would insert them (a 250k-row block covers about a second of traffic at 300k flows/s),
not over hours.  Each configuration is a fresh store, migrated, with the views it leaves
out dropped; the first block warms the store up and is not timed.  CPU is the process's
(every thread: the engine inserts and runs the views on threads of its own, and merges
in the background), so merges that happen to run inside the timed span count: the best
of `--rounds` is printed.  The views that read another rollup (5m and 1h) run only with
their source, so they are measured in "all" only.  ``--insert-rows`` also times every
view with the writer inserting that many rows at a time (the service's
``insert.batch_size``; fewer, larger parts for the views to write and the engine to merge).

The generated rows carry no AS numbers (no ASN database in the loop), which a store
behind the appliance's enrichment always has.  ``--as-numbers N`` fills ``src_as`` and
``dst_as`` from N ASes drawn with a Zipf-like skew (a few large, many small), one per
address (from its hash, as a routing table gives an address one origin AS).  (Until
migration 11 an option ``--who-without`` timed the views with columns left out of
schema.WHO_FILTERS by replacing it in the process; the who tables are now built from
schema.WHO, made at import, which that no longer changes, so the option went with the
decision it served: docs/performance.md, 2026-12-07.)
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

VIEWS_SQL = ("SELECT name, as_select FROM system.tables WHERE database = 'flowenricher' "
             "AND engine = 'MaterializedView' ORDER BY name")


def one_round(blocks: list[FlowBatch], keep: set[str] | None,
              insert_rows: int = BATCH) -> tuple[float, list[tuple[str, str]]]:
    """(CPU seconds to store blocks[1:], every view of a fresh store with its query) with
    the views named in `keep` (all when None), `insert_rows` rows an insert."""
    where = tempfile.mkdtemp(prefix="flowenricher-store-views-")
    settings = StoreSettings(path=where, batch_size=insert_rows, ttl_days=0)
    store = open_store(settings)
    try:
        store.migrate()
        views = [tuple(line.split("\t", 1)) for line in store.query(VIEWS_SQL, "TSV").decode().splitlines()]
        for name, _ in views:
            if keep is not None and name not in keep:
                store.query(f"DROP VIEW flowenricher.{name}", "TSV")
        writer = BatchWriter(store, settings, Spool.from_settings(settings))
        writer.add(blocks[0])
        writer.flush()
        cpu = time.process_time()
        for batch in blocks[1:]:
            writer.add(batch)
        writer.close()
        cpu = time.process_time() - cpu
        stored = int(store.query("SELECT count() FROM flowenricher.flows", "TSV"))
        if stored != sum(b.n for b in blocks):
            raise RuntimeError(f"stored {stored} of {sum(b.n for b in blocks)} rows")
        return cpu, [(name, sql) for name, sql in views]
    finally:
        store.close()
        shutil.rmtree(where, ignore_errors=True)


def as_numbered(blocks: list[FlowBatch], count: int) -> list[FlowBatch]:
    """`blocks` with ``src_as`` and ``dst_as`` from `count` ASes drawn with a 1/rank skew, one
    per address (from its hash, as a routing table gives an address one origin AS)."""
    rng = np.random.default_rng(2)
    ases = rng.integers(1, 400_000, count).astype(np.uint32)
    weight = 1.0 / np.arange(1, count + 1)
    cumulative = np.cumsum(weight / weight.sum())
    for batch in blocks:
        for side in ("src", "dst"):
            hashed = np.ascontiguousarray(batch[f"{side}_addr"]).view(np.uint64)
            u = ((hashed[:, 0] ^ hashed[:, 1]) * np.uint64(0x9E3779B97F4A7C15) >> np.uint64(11)) / float(1 << 53)
            batch[f"{side}_as"] = ases[np.minimum(np.searchsorted(cumulative, u), count - 1)]
    return blocks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--blocks", type=int, default=6, help="250k-row blocks per configuration (default 6)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per configuration; the best is printed")
    ap.add_argument("--rate", type=int, default=300_000, help="flows a second the blocks are spread over")
    ap.add_argument("--insert-rows", default="", help="comma-separated insert sizes to time every view at")
    ap.add_argument("--as-numbers", type=int, default=0, help="fill src_as and dst_as from this many ASes")
    args = ap.parse_args()
    n = args.blocks * BATCH
    blocks = directed_blocks(n, n / args.rate / 3600)
    if args.as_numbers:
        blocks = as_numbered(blocks, args.as_numbers)
    rows = sum(b.n for b in blocks[1:])

    def best(keep: set[str] | None, insert_rows: int = BATCH) -> tuple[float, list[tuple[str, str]]]:
        runs = [one_round(blocks, keep, insert_rows) for _ in range(args.rounds)]
        return min(r[0] for r in runs) / rows * 1e6, runs[0][1]

    bare, views = best(set())
    print(f"{rows:,} rows in {args.blocks - 1} timed blocks of {BATCH:,}, best of {args.rounds} rounds, CPU of the process")
    print(f"{'no view':34s} {bare:6.2f} us/row")
    on_flows = [name for name, sql in views if " FROM flowenricher.flows " in f" {sql} ".replace("\n", " ")]
    added = 0.0
    for name in on_flows:
        cost, _ = best({name})
        added += cost - bare
        print(f"{name:34s} {cost - bare:+6.2f} us/row")
    every, _ = best(None)
    print(f"{'the views on the flows, summed':34s} {added:+6.2f} us/row")
    print(f"{f'all {len(views)} views':34s} {every:6.2f} us/row ({every - bare:+.2f} over no view)")
    for size in (int(v) for v in args.insert_rows.split(",") if v.strip()):
        cost, _ = best(None, size)
        print(f"{f'all {len(views)} views, {size:,} rows an insert':34s} {cost:6.2f} us/row")


if __name__ == "__main__":
    main()
