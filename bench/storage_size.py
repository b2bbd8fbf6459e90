"""Storage size: bytes on disk per flow in the embedded store, after merges, and which
columns take them.

    python bench/storage_size.py [--flows 10000000] [--hours 24] [--protocol ipfix]

Flows come from the generator's traffic model, spread over `--hours` of one day as a
small AS would export them; they are encoded as the router would send them and decoded
by the collector's decoder, then direction is added by the networks enrichment stage,
so the stored rows are what `flowenricher run` stores (exporter, sampling rate,
received_at included).  They go in through `open_store` (embedded chDB in a temporary
directory) in batches of 250k, the service's `insert.batch_size`, with the rollup views
on.  Then `OPTIMIZE TABLE ... FINAL` merges each table to its final parts, and the sizes
are read from `system.parts` (active parts) and `system.columns`.
"""

from __future__ import annotations

import argparse
import calendar
import ipaddress
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

from appliance.flowenricher.batch import FlowBatch
from appliance.flowenricher.decode.dispatch import FlowDecoder
from appliance.flowenricher.enrich.networks import NetworksStage
from appliance.flowenricher.enrich.pipeline import Enricher
from appliance.flowenricher.generate.encode import make_encoder
from appliance.flowenricher.generate.traffic import DEFAULT_MY_PREFIXES, TrafficGenerator
from appliance.flowenricher.storage import StoreSettings, open_store
from appliance.flowenricher.storage.base import FlowStore
from appliance.flowenricher.storage.schema import ROLLUPS

BATCH = 250_000  # flows per insert: the service's default insert.batch_size
EXPORTER = "192.0.2.1"
DAY = "2026-11-23"  # the simulated day (UTC): one daily partition when --hours <= 24


def batches(n_flows: int, hours: float, protocol: str, seed: int) -> Iterator[FlowBatch]:
    """`n_flows` decoded flows, BATCH at a time, ending evenly over `hours` from DAY 00:00.

    Each batch goes through the exporter's encoder and the collector's decoder, with the
    datagrams' receive time set to the export time, as a live collector would see it.
    """
    gen = TrafficGenerator(seed=seed)
    encoder = make_encoder(protocol)
    decoder = FlowDecoder()
    start_ms = calendar.timegm(time.strptime(DAY, "%Y-%m-%d")) * 1000
    ms_per_flow = hours * 3_600_000 / n_flows
    done = 0
    while done < n_flows:
        n = min(BATCH, n_flows - done)
        t0 = start_ms + round(done * ms_per_flow)
        span = max(1, round(n * ms_per_flow))
        flows = gen.batch(n, t0, span)
        export_ms = t0 + span
        packets = encoder.encode(flows, export_ms)
        batch = decoder.decode([(p, EXPORTER, export_ms // 1000) for p in packets])
        if batch.n != len(flows):
            raise RuntimeError(f"decoded {batch.n} of {len(flows)} generated flows (batch at {done})")
        done += batch.n
        yield batch


def directed_blocks(n_flows: int, hours: float, seed: int = 1) -> list[FlowBatch]:
    """batches() as IPFIX, each with its flows' direction (the networks stage over the
    generator's own prefixes), as the store benches insert them."""
    enricher = Enricher([NetworksStage([ipaddress.ip_network(p) for p in DEFAULT_MY_PREFIXES], {})])
    blocks = []
    for batch in batches(n_flows, hours, "ipfix", seed=seed):
        enricher.enrich(batch)
        blocks.append(batch)
    return blocks


def _rows(store: FlowStore, sql: str) -> list[list[str]]:
    return [line.split("\t") for line in store.query(sql, "TSV").decode().splitlines()]


@dataclass(frozen=True)
class TableSize:
    table: str
    rows: int
    parts: int
    bytes_on_disk: int
    compressed: int
    uncompressed: int


def table_sizes(store: FlowStore, database: str) -> list[TableSize]:
    sql = (
        "SELECT table, sum(rows), count(), sum(bytes_on_disk), sum(data_compressed_bytes), "
        f"sum(data_uncompressed_bytes) FROM system.parts WHERE database = '{database}' AND active "
        "GROUP BY table ORDER BY table"
    )
    return [TableSize(r[0], *(int(x) for x in r[1:])) for r in _rows(store, sql)]


def column_sizes(store: FlowStore, database: str, table: str) -> list[tuple[str, str, str, int, int]]:
    """(name, type, codec, compressed, uncompressed) of each stored column, largest first."""
    sql = (
        "SELECT name, type, compression_codec, data_compressed_bytes, data_uncompressed_bytes FROM system.columns "
        f"WHERE database = '{database}' AND table = '{table}' AND default_kind != 'ALIAS' "
        "ORDER BY data_compressed_bytes DESC"
    )
    return [(r[0], r[1], r[2], int(r[3]), int(r[4])) for r in _rows(store, sql)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flows", type=int, default=10_000_000, help="flows to store (default 10,000,000)")
    ap.add_argument("--hours", type=float, default=24.0, help="hours of traffic they span (default 24)")
    ap.add_argument("--protocol", choices=("ipfix", "v9"), default="ipfix")
    ap.add_argument("--top", type=int, default=15, help="columns listed (default 15)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if args.flows <= 0 or args.hours <= 0:
        ap.error("--flows and --hours must be > 0")
    logging.basicConfig(level=logging.WARNING)

    where = tempfile.mkdtemp(prefix="flowenricher-storage-size-")
    settings = StoreSettings(path=where, batch_size=BATCH, ttl_days=0)  # no TTL: the day is in the past
    enricher = Enricher([NetworksStage([ipaddress.ip_network(p) for p in DEFAULT_MY_PREFIXES], {})])
    store = open_store(settings)
    try:
        store.migrate()
        started = time.perf_counter()
        stored = 0
        for batch in batches(args.flows, args.hours, args.protocol, args.seed):
            enricher.enrich(batch)
            store.insert(batch)
            stored += batch.n
        loaded = time.perf_counter() - started
        started = time.perf_counter()
        for table in [settings.table, *(f"{settings.table}_{r.suffix}" for r in ROLLUPS)]:
            store.query(f"OPTIMIZE TABLE {settings.database}.{table} FINAL", "TSV")
        merged = time.perf_counter() - started
        tables = table_sizes(store, settings.database)
        columns = column_sizes(store, settings.database, settings.table)
    finally:
        store.close()
        shutil.rmtree(where, ignore_errors=True)

    print(f"storage size: {stored:,} flows ({args.protocol}, {args.hours:g} h of one exporter's traffic), "
          f"stored in {loaded:.1f} s, OPTIMIZE FINAL {merged:.1f} s")
    print()
    print("| table | rows | active parts | on disk | bytes/flow stored | compressed | uncompressed | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for t in tables:
        ratio = t.uncompressed / t.compressed if t.compressed else 0.0
        print(f"| {t.table} | {t.rows:,} | {t.parts} | {t.bytes_on_disk / 2**20:,.1f} MiB | "
              f"{t.bytes_on_disk / stored:.2f} | {t.compressed / 2**20:,.1f} MiB | "
              f"{t.uncompressed / 2**20:,.1f} MiB | {ratio:.1f}x |")
    flows_table = next((t for t in tables if t.table == settings.table), None)
    everything = sum(t.bytes_on_disk for t in tables)
    print()
    print(f"top {args.top} columns of {settings.database}.{settings.table}:")
    print()
    print("| column | type | codec | compressed | bytes/flow | ratio |")
    print("|---|---|---|---|---|---|")
    for name, ch_type, codec, comp, uncomp in columns[: args.top]:
        ratio = uncomp / comp if comp else 0.0
        print(f"| {name} | {ch_type} | {codec or 'default (LZ4)'} | {comp / 2**20:,.2f} MiB | {comp / stored:.3f} | "
              f"{ratio:.1f}x |")
    rest = sum(c[3] for c in columns[args.top:])
    print(f"| {len(columns) - args.top} other columns | | | {rest / 2**20:,.2f} MiB | {rest / stored:.3f} | |")
    print()
    if flows_table is not None:
        print(f"flows table {flows_table.bytes_on_disk / stored:.2f} bytes/flow on disk; with the rollups "
              f"{everything / stored:.2f} bytes/flow ({everything / 2**20:,.1f} MiB for {stored:,} flows)")


if __name__ == "__main__":
    main()
