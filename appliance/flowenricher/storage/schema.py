"""The ClickHouse schema of the flow store and its versioned, idempotent migrations.

The flows table is derived from :data:`~appliance.flowenricher.columns.COLUMNS` and
:data:`~appliance.flowenricher.columns.ALIASES`, its rollups from :data:`ROLLUPS` and those
columns (:func:`rollup_description`), every other table from its description in
storage/tables.py; this module adds only what the migrations decide (which version creates
what, how long each table keeps its rows).  The same SQL runs on chDB and on a ClickHouse
server.  A migration that already ran is never run again, so its statements may be
rebuilt from the descriptions only while they make the same table (tests/test_tables.py
compares each with the DDL text the migration used to have).  :func:`migrate` applies
the numbered migrations not yet recorded in ``schema_migrations`` and then adds any
column of ``COLUMNS`` (or alias) the flows table lacks, so a column added to
``columns.py`` reaches existing installations by itself.

On a ClickHouse cluster (``StoreSettings.cluster``, storage/tables.py's :class:`Layout`)
the same migrations make every table ON CLUSTER: a Replicated table ``<name>_local`` on
each node and a Distributed table ``<name>`` over them; the materialized views feed each
node's local rollups from its local flows, and the migrations' log is kept whole on every
node.  The statements differ from one server's only in those names, engines and clauses.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..columns import ALIASES, BY_NAME, COLUMNS, TUNNEL_OF, Column
from ..common.sql import string
from ..errors import ConfigError, StoreError
from .settings import StoreSettings
from .tables import (
    ANOMALY_SCORES,
    BLACKHOLE_EVENTS,
    COLLECTOR_STATS,
    DETECTIONS,
    EXPORTER_INTERFACES,
    PTR_CACHE,
    Table,
    TableColumn,
)
from .tables import MIGRATIONS as MIGRATIONS_LOG

log = logging.getLogger(__name__)

Execute = Callable[[str], None]
"""Runs one statement (DDL or INSERT), raising StoreError on failure."""
Query = Callable[[str], list[list[str]]]
"""Runs one SELECT and returns its rows as text fields (TabSeparated)."""

SORT_KEY = "(toStartOfHour(timestamp_start), exporter_address, timestamp_start)"
"""Sort key of the flows table.

Every query is bounded in time, many also by exporter (per-router dashboards, interface
names), few by anything else.  The hour bucket first gives the primary index a coarse,
low-cardinality time key, so a time range prunes granules even inside a daily partition;
``exporter_address`` second puts each router's rows together within the hour, so an
exporter filter reads only its own granules instead of all of them (a plain
``timestamp_start`` first would interleave exporters row by row); ``timestamp_start`` last
keeps rows time-ordered inside each (hour, exporter) run, which is what DoubleDelta
compresses well and what ``ORDER BY timestamp_start`` reads in order.  Addresses are not
in the key: at this size a time-and-exporter-bounded scan is already small.
"""

TTL_COLUMN = "received_at"
"""Retention counts from when the collector received a flow, not from the exporter's
``timestamp_start``: with TTL on a router-supplied time, flows from a router whose clock
is wrong (not set: 1970) would be deleted as they are inserted, silently."""

ROLLUP_TIME_SOURCE = "timestamp_start"
"""The flow column the finest rollup's ``timestamp`` is computed from (truncated to its step)."""

FLOWS_SHARDING_KEY = "cityHash64(exporter_address, src_addr, dst_addr, src_port, dst_port, proto)"
"""On a cluster, which shard a flow goes to: a hash of the exporter and the 5-tuple.

It has to be a function of the row, not ``rand()``: a block inserted again under its
deduplication token must be cut into the same per-shard parts as the first time, so each
shard recognises its part by the token and stores nothing twice (a random split would
send a retry's rows to shards that took other rows under that token, which would drop
them, and to shards that never saw it, which would store them again).  The 5-tuple
spreads rows evenly (a flood from spoofed sources or to many ports spreads with it,
and one conversation is one row per export interval, never a skew), and keeps a
conversation seen by one router on one shard.  Adding shards or changing their weights
changes the split: do it with no block waiting for a retry (storers stopped, their
spools and Kafka's pending ranges drained)."""

DEDUPLICATION_WINDOW = 1000
"""Recent inserted blocks whose ``insert_deduplication_token`` the flows table and the rollups
remember (``non_replicated_deduplication_window``): a block sent again with a token among
them is acknowledged and not stored twice.  The writer retries the block that failed
before anything newer, so the window needs to cover only the parts of one retried block
plus what other writers inserted meanwhile; the hashes kept cost a few tens of kB."""

REPLICATED_DEDUPLICATION = {"replicated_deduplication_window": 10_000,
                            "replicated_deduplication_window_seconds": 7 * 86_400}
"""On a cluster, what the replicated flows table and rollups remember of inserted blocks
(in Keeper, per shard).  A block replayed from Kafka is retried by whichever storer takes
its partition, after the others inserted meanwhile, and a block spooled while the store
was away may come back hours later (the spool keeps blocks a day by default): so many
blocks and a week, as older releases had by default, rather than recent releases' hour."""



@dataclass(frozen=True)
class Rollup:
    """A pre-aggregated copy of the flows, kept current by a materialized view.

    ``bucket`` truncates the time to the rollup's step; ``ttl_factor`` times
    ``ttl_days`` is how long it is kept (coarser rollups are small and answer
    long-range dashboards, so they outlive the raw flows).
    """

    suffix: str
    bucket: str
    step_s: int  # the seconds `bucket` truncates to
    partition: str
    ttl_factor: int


ROLLUPS: tuple[Rollup, ...] = (
    Rollup("1m", "toStartOfMinute", 60, "toYYYYMMDD(timestamp)", 1),
    Rollup("5m", "toStartOfFiveMinutes", 300, "toYYYYMM(timestamp)", 4),
    Rollup("1h", "toStartOfHour", 3600, "toYYYYMM(timestamp)", 12),
)
"""Finest first: each rollup after the first is fed from the one before it.

Most of what the views add to an insert is writing the rollups' sorted parts, so the
5m and 1h views read the 1m view's already-summed rows instead of every flow.  Measured
here (chDB, one 500k-row insert): flows table alone 0.35 s; with the rollups 0.8 s when
the dimensions are correlated as in a small AS's traffic (synthetic: one side is the
operator's AS, the other Zipf-distributed; 1m keeps about a third of the rows),
0.9 s without the cascade; 2.8 s when every flow has its own dimension values, the
worst case, where no rollup shrinks anything.
"""

ROLLUP_DIMENSIONS: tuple[str, ...] = (
    "exporter_address",
    "flow_direction",
    "input_interface",
    "output_interface",
    "proto",
    "src_as",
    "dst_as",
    "peer_src_as",
    "peer_dst_as",
    "src_host_country",
    "dst_host_country",
)
"""Flow columns kept in the rollups (their types come from COLUMNS).

They answer the dashboards' questions (traffic per router, direction, interface,
upstream and origin AS, country, protocol) without addresses or client ports, whose
cardinality would make a rollup as large as the flows.  One port is kept as
``service_port``: the destination port when it is a well-known one (< 1024), else 0, so
"traffic per service" works while a port scan adds one row, not 65536.
"""

SERVICE_PORT = "if(dst_port < 1024, dst_port, 0)"
ROLLUP_METRICS: tuple[tuple[str, str], ...] = (
    ("bytes", "sum(bytes)"),
    ("packets", "sum(packets)"),
    ("flows", "count()"),
)
"""Summed columns and how a view computes them from raw flows (from a finer rollup,
each is the sum of the same column)."""


@dataclass(frozen=True)
class Derived:
    """A value a "who" rollup computes from flow columns (a prefix from an address and its
    mask), stored under its own name and type; a finer step's rows already hold it."""

    name: str
    ch_type: str
    expression: str


@dataclass(frozen=True)
class Measure:
    """What a "who" rollup keeps per key: its column type, how the finest step computes
    it from flows and how a coarser step combines the finer step's rows."""

    name: str
    ch_type: str
    from_flows: str
    from_rollup: str


SUMS: tuple[Measure, ...] = tuple(Measure(m, "UInt64", expr, f"sum({m})") for m, expr in ROLLUP_METRICS)
"""Bytes, packets and flows summed (ROLLUP_METRICS): what the ranking panels read."""


@dataclass(frozen=True)
class WhoRollup:
    """The flows summed per rollup step, filter dimension and the values one kind of "who"
    panel ranks (top hosts, top ports), kept at every step of WHO_STEPS.

    ``values`` are flow columns or Derived ones: the first is what the panel ranks, the
    others describe it and depend on it (an address's country), so they cost no extra
    rows.  Its tables are ``<flows>_<step suffix>_<name>``, so a dashboard reads
    ``${who_rollup}_<name>``, its range-to-step variable for these tables.  ``since`` is
    the migration that makes it; ``where`` keeps only some flows; ``rank`` orders a
    block's rows for WHO_CAP (an ORDER BY list).  With measures other
    than SUMS (distinct counts kept as aggregate states) the table is an
    AggregatingMergeTree: a SummingMergeTree given its summed columns leaves such states
    unmerged (checked on ClickHouse 26.9: a uniq state of two addresses read back as one
    after OPTIMIZE FINAL).
    """

    name: str
    values: tuple[str | Derived, ...]
    since: int = 8
    measures: tuple[Measure, ...] = SUMS
    where: str = ""
    rank: str = "bytes DESC"

    @property
    def summed(self) -> bool:
        return self.measures == SUMS

    def value_names(self) -> tuple[str, ...]:
        return tuple(v if isinstance(v, str) else v.name for v in self.values)


WHO_STEPS: tuple[Rollup, ...] = (ROLLUPS[0], ROLLUPS[-1])
"""The steps the "who" rollups are kept at, finest first: 1m answers ranges up to a day
to the minute, 1h every longer one (a top-N over days, whose edges are then whole hours).
No 5m step: every view costs an insert a few ms whatever its size (about 5 ms a "who"
view on chDB, 2026-12-07, docs/performance.md), and a top-N is one number per value, not
a series whose points a coarser step would thin out, so 5m bought dashboards little.
Migration 10 drops the 5m tables of stores made before it."""

WHO_FILTERS: tuple[str, ...] = (
    "exporter_address",
    "flow_direction",
    "input_interface",
    "output_interface",
)
"""Flow columns every "who" rollup keeps besides its values: the dashboards' exporter,
direction and interface filters, so a top-N so filtered reads the rollup too.  For one
address they rarely vary (its uplink), so they add few rows.  Not the AS filter
(``src_as``/``dst_as``, the migration 8-10 rollups had them): the other side's AS of a
host, port or prefix varies with every peer it talks to, and grouping by it made the
views a large part of an enriched insert's cost (bench/store_views.py, rows with 5,000
ASes, one per address: the 17 views 11.1 µs a row with these columns, 7.0 without;
2026-12-07, docs/performance.md).  A rollup keeps its own
value's AS among its values instead (a host's, a prefix's: one per value), and the
dashboards answer an AS filter from the flows (roles/grafana/files/dashboards/README.md)."""


def _prefix_length(side: str) -> str:
    """The prefix length of `side`'s address in IPv6 terms (IPv4 mapped: 96 + its length),
    from the exporter's mask, /24 and /48 when the exporter gave none."""
    return (f"toUInt8(if(ip_version = 4, 96 + if({side}_mask = 0, 24, least({side}_mask, 32)), "
            f"if({side}_mask = 0, 48, least({side}_mask, 128))))")


def _prefix_values(side: str) -> tuple[str | Derived, ...]:
    length = _prefix_length(side)
    return ("ip_version",
            Derived(f"{side}_prefix", "IPv6", f"tupleElement(IPv6CIDRToRange({side}_addr, {length}), 1)"),
            Derived(f"{side}_prefix_length", "UInt8", length))


SCAN_MEASURES: tuple[Measure, ...] = (
    Measure("targets", "AggregateFunction(uniq, IPv6)", "uniqState(dst_addr)", "uniqMergeState(targets)"),
    Measure("ports", "AggregateFunction(uniq, UInt16)", "uniqState(dst_port)", "uniqMergeState(ports)"),
    Measure("flows", "SimpleAggregateFunction(sum, UInt64)", "count()", "sum(flows)"),
    Measure("syn_only", "SimpleAggregateFunction(sum, UInt64)",
            "countIf(proto = 6 AND bitAnd(tcpflags, 0x12) = 0x02)", "sum(syn_only)"),
)
"""Per inbound source: distinct targets and ports (uniq states, merged across blocks and
steps), flows and TCP flows with SYN but no ACK.  The cap keeps a block's sources with the
most flows (a scanner sends about one per target and port): ranking by targets x ports
would finalize every state (bench/store_insert.py with and without this rollup: 22% of
the insert rate against 15% this way, in runs that differ by up to 30% among themselves;
2026-12-07, docs/performance.md)."""

WHO_ROLLUPS: tuple[WhoRollup, ...] = (
    WhoRollup("src_hosts", ("src_addr", "src_as", "src_host_country"), since=11),
    WhoRollup("dst_hosts", ("dst_addr", "dst_as", "dst_host_country"), since=11),
    WhoRollup("dst_ports", ("proto", "dst_port"), since=11),
    WhoRollup("next_hops", ("bgp_next_hop", "peer_dst_as", "peer_dst_as_name", "output_interface_name"), since=11),
    WhoRollup("src_prefixes", (*_prefix_values("src"), "src_as"), since=11),
    WhoRollup("dst_prefixes", (*_prefix_values("dst"), "dst_as"), since=11),
    WhoRollup("scanners", ("src_addr", "src_as", "src_host_country"), since=11, measures=SCAN_MEASURES,
              where="flow_direction = 1", rank="flows DESC"),
)
"""Hosts, ports, upstreams (BGP next hop and neighbour AS, with their names), prefixes
(the exporter's masks) and inbound scanners, each host and prefix with its own AS.
Next hops and neighbour ASes are few; prefixes are as many as the routes in use when the
exporter sends masks, as the /24s and /48s in use when it does not; every one is bounded
by WHO_CAP per block.  Tables ``<flows>_<step>_top_<name>`` (WHO)."""

WHO_CAP = 1000
"""Most rows the finest step's "who" view writes per insert block, time bucket, exporter
and direction (a coarser step sums its rows, uncapped: who_select):
the ones with the most bytes.  Without it a flood of spoofed sources (or a port scan)
would write one row per flow, and the rollup would be as large as the flows.  A value
that is not among the block's 1000 largest loses that block's share, so the ranking of a
top-20 is exact unless the 21st to 1000th values are within one block's tail of each
other.  Blocks are the writer's (up to `insert.batch_size` flows or one flush interval):
at 5k flows/s and a 1 s flush a block has fewer distinct values than the cap, which then
bounds nothing (docs/performance.md, 2026-12-05)."""


@dataclass(frozen=True)
class WhoGeneration:
    """One shape of the "who" rollups: their filter columns, rollups and table names
    (``<flows>_<step suffix>_<infix><name>``).  Migrations 8 to 10 made WHO_V8's tables;
    a migration that ran is never rebuilt differently, so that shape stays described here
    for them, and migration 11 moves a store from it to WHO's (who_rebuilt)."""

    filters: tuple[str, ...]
    rollups: tuple[WhoRollup, ...]
    infix: str


WHO = WhoGeneration(WHO_FILTERS, WHO_ROLLUPS, "top_")
"""The "who" rollups readers use: the dashboards read ``${who_rollup}_top_<name>``."""

WHO_V8 = WhoGeneration(
    (*WHO_FILTERS, "src_as", "dst_as"),
    (
        WhoRollup("src_hosts", ("src_addr", "src_host_country")),
        WhoRollup("dst_hosts", ("dst_addr", "dst_host_country")),
        WhoRollup("dst_ports", ("proto", "dst_port")),
        WhoRollup("next_hops", ("bgp_next_hop", "peer_dst_as", "peer_dst_as_name", "output_interface_name"), since=9),
        WhoRollup("src_prefixes", _prefix_values("src"), since=9),
        WhoRollup("dst_prefixes", _prefix_values("dst"), since=9),
        WhoRollup("scanners", ("src_addr", "src_host_country"), since=9, measures=SCAN_MEASURES,
                  where="flow_direction = 1", rank="flows DESC"),
    ),
    "",
)
"""The "who" rollups migrations 8 and 9 made (and 10 cut to WHO_STEPS), with both sides'
AS among their filter columns; migration 11 replaces them."""


@dataclass(frozen=True)
class Migration:
    """One numbered schema change; ``statements`` returns its DDL for the given settings."""

    version: int
    description: str
    statements: Callable[[StoreSettings], list[str]]
    planned: Callable[[StoreSettings, Query], list[str]] | None = None
    """When set, what :func:`migrate` runs instead of ``statements``: the statements for
    the state the store is found in (a migration that copies rows and must resume)."""


def column_ddl(col: Column) -> str:
    codec = f" CODEC({col.codec})" if col.codec else ""
    return f"{col.name} {col.ch_type}{codec}"


def alias_ddl(name: str) -> str:
    ch_type, expr = ALIASES[name]
    return f"{name} {ch_type} ALIAS {expr}"


def ttl_clause(column: str, days: int) -> str:
    return f"\nTTL {column} + toIntervalDay({days})" if days > 0 else ""


def local_table(s: StoreSettings, name: str) -> str:
    """``database.name`` of the table holding one node's rows of table `name` (the table
    itself on one server)."""
    return f"{s.database}.{s.layout.local(name)}"


def create_flows(s: StoreSettings) -> list[str]:
    """The flows table; on a cluster, the local tables and the Distributed one over them."""
    layout = s.layout
    body = ",\n  ".join([column_ddl(c) for c in COLUMNS] + [alias_ddl(a) for a in ALIASES])
    out = [
        f"CREATE TABLE IF NOT EXISTS {local_table(s, s.table)}{layout.on_cluster} (\n  {body}\n)"
        f"\nENGINE = {layout.engine('MergeTree')}\nPARTITION BY {s.partition_by}\nORDER BY {SORT_KEY}"
        f"{ttl_clause(TTL_COLUMN, s.ttl_days)}\nSETTINGS index_granularity = 8192"
    ]
    if layout.cluster:
        out.append(layout.distributed_sql(s.database, s.table, FLOWS_SHARDING_KEY))
    return out


def create_ptr_cache(s: StoreSettings) -> list[str]:
    """The original flowenricher's PTR cache (tables.PTR_CACHE)."""
    return PTR_CACHE.create_statements(s.database, layout=s.layout)


def rollup_table(s: StoreSettings, r: Rollup) -> str:
    return rollup_description(s.table, r).qualified(s.database)


_ROLLUP_KEYS = ", ".join([*ROLLUP_DIMENSIONS, "service_port"])


def rollup_description(flows_table: str, r: Rollup) -> Table:
    """Rollup `r`'s table, described like the other tables (storage/tables.py): its
    dimensions are flow columns with the types and codecs of columns.py, so it is made
    here from ROLLUPS and COLUMNS rather than listed again; its name follows the flows
    table's (``<flows_table>_<suffix>``)."""
    return Table(
        f"{flows_table}_{r.suffix}",
        f"Flows summed per {r.bucket}(timestamp) and dimension, fed by a materialized view.",
        (
            TableColumn("timestamp", "DateTime", "DoubleDelta, ZSTD(1)"),
            *(TableColumn(c.name, c.ch_type, c.codec) for c in (BY_NAME[d] for d in ROLLUP_DIMENSIONS)),
            TableColumn("service_port", "UInt16"),
            *(TableColumn(m, "UInt64") for m, _ in ROLLUP_METRICS),
        ),
        engine=f"SummingMergeTree(({', '.join(m for m, _ in ROLLUP_METRICS)}))",
        partition_by=r.partition,
        order_by=f"(timestamp, {_ROLLUP_KEYS})",
        ttl_from="timestamp",
        time_column="timestamp",
    )


def create_rollup(s: StoreSettings, index: int) -> list[str]:
    """The SummingMergeTree of rollup ``ROLLUPS[index]`` and the view that feeds it."""
    r = ROLLUPS[index]
    description = rollup_description(s.table, r)
    table = local_table(s, description.name)
    keys = _ROLLUP_KEYS
    table_sql = description.create_statements(s.database, s.ttl_days * r.ttl_factor, s.layout)
    if index == 0:
        source, time_col = local_table(s, s.table), ROLLUP_TIME_SOURCE
        columns = [*ROLLUP_DIMENSIONS, f"{SERVICE_PORT} AS service_port"]
        metrics = [f"{expr} AS {m}" for m, expr in ROLLUP_METRICS]
    else:
        source, time_col = local_table(s, rollup_description(s.table, ROLLUPS[index - 1]).name), "timestamp"
        columns = [*ROLLUP_DIMENSIONS, "service_port"]
        metrics = [f"sum({m}) AS {m}" for m, _ in ROLLUP_METRICS]
    select = ", ".join([f"{r.bucket}({time_col}) AS timestamp", *columns, *metrics])
    view_sql = (
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {table}_mv{s.layout.on_cluster} TO {table} AS\n"
        f"SELECT {select}\nFROM {source}\nGROUP BY timestamp, {keys}"
    )
    return [*table_sql, view_sql]


def _value_column(v: str | Derived) -> TableColumn:
    if isinstance(v, Derived):
        return TableColumn(v.name, v.ch_type)
    c = BY_NAME[v]
    return TableColumn(c.name, c.ch_type, c.codec)


def who_description(flows_table: str, r: Rollup, w: WhoRollup, g: WhoGeneration = WHO) -> Table:
    """"Who" rollup `w` of generation `g` at the step of `r`, described like the other
    tables; the flow columns keep the types and codecs of columns.py."""
    names = w.value_names()
    if w.summed:
        what, engine = "Flows summed", f"SummingMergeTree(({', '.join(m.name for m in w.measures)}))"
    else:
        what, engine = f"{', '.join(m.name for m in w.measures)} of flows", "AggregatingMergeTree"
    where = f" ({w.where})" if w.where else ""
    finest = WHO_STEPS[0]
    bound = (f"at most {WHO_CAP} rows per insert block and bucket" if r == finest else
             f"the {flows_table}_{finest.suffix}_{g.infix}{w.name} rows summed")
    return Table(
        f"{flows_table}_{r.suffix}_{g.infix}{w.name}",
        f"{what}{where} per {r.bucket}(timestamp), filter dimension and {', '.join(names)}, {bound}.",
        (
            TableColumn("timestamp", "DateTime", "DoubleDelta, ZSTD(1)"),
            *(_value_column(v) for v in (*g.filters, *w.values)),
            *(TableColumn(m.name, m.ch_type) for m in w.measures),
        ),
        engine=engine,
        partition_by=r.partition,
        order_by=f"(timestamp, {', '.join((*g.filters, *names))})",
        ttl_from="timestamp",
        settings=f"non_replicated_deduplication_window = {DEDUPLICATION_WINDOW}",
        time_column="timestamp",
    )


def who_table(s: StoreSettings, r: Rollup, w: WhoRollup, g: WhoGeneration = WHO) -> str:
    return who_description(s.table, r, w, g).qualified(s.database)


def who_select(s: StoreSettings, index: int, w: WhoRollup, g: WhoGeneration = WHO) -> str:
    """The query of the view feeding "who" rollup `w` at step ``WHO_STEPS[index]``.

    The finest step reads the flows (those `w.where` keeps) and keeps the WHO_CAP rows
    first by ``w.rank`` per block, bucket, exporter and direction.  A coarser step sums
    the rows the step before it wrote (as create_rollup), uncapped: they are bounded
    already (WHO_CAP per minute of the block), and a cap here would bite where the finer
    one did not (a block of an hour with 1000 sources a minute and more in the hour, as a
    backfill or a replayed spool writes), so the 1h table is exactly the 1m table summed."""
    r = WHO_STEPS[index]
    keys = ", ".join((*g.filters, *w.value_names()))
    where = ""
    if index == 0:
        source, time_col = local_table(s, s.table), ROLLUP_TIME_SOURCE
        values = [*g.filters, *(v if isinstance(v, str) else f"{v.expression} AS {v.name}" for v in w.values)]
        metrics = [f"{m.from_flows} AS {m.name}" for m in w.measures]
        where = f"\nWHERE {w.where}" if w.where else ""
    else:
        source, time_col = local_table(s, who_description(s.table, WHO_STEPS[index - 1], w, g).name), "timestamp"
        values = [keys]
        metrics = [f"{m.from_rollup} AS {m.name}" for m in w.measures]
    select = ", ".join([f"{r.bucket}({time_col}) AS timestamp", *values, *metrics])
    cap = f"\nORDER BY {w.rank}\nLIMIT {WHO_CAP} BY timestamp, exporter_address, flow_direction" if index == 0 else ""
    return f"SELECT {select}\nFROM {source}{where}\nGROUP BY timestamp, {keys}{cap}"


def who_view(s: StoreSettings, index: int, w: WhoRollup, g: WhoGeneration = WHO) -> str:
    """The materialized view feeding "who" rollup `w` at step ``WHO_STEPS[index]`` (who_select)."""
    table = local_table(s, who_description(s.table, WHO_STEPS[index], w, g).name)
    return (f"CREATE MATERIALIZED VIEW IF NOT EXISTS {table}_mv{s.layout.on_cluster} TO {table} AS\n"
            f"{who_select(s, index, w, g)}")


def create_who_rollup(s: StoreSettings, index: int, w: WhoRollup, g: WhoGeneration = WHO) -> list[str]:
    """The table of "who" rollup `w` at step ``WHO_STEPS[index]`` and the view that feeds it."""
    r = WHO_STEPS[index]
    description = who_description(s.table, r, w, g)
    return [*description.create_statements(s.database, s.ttl_days * r.ttl_factor, s.layout), who_view(s, index, w, g)]


def _who_rollups_of(version: int, g: WhoGeneration) -> Callable[[StoreSettings], list[str]]:
    """Migration `version`'s "who" rollups of generation `g` at every step, finest first
    (each step's view reads the one before).  Their descriptions set one server's
    deduplication window; on a cluster, the replicated one is set here
    (REPLICATED_DEDUPLICATION)."""

    def statements(s: StoreSettings) -> list[str]:
        who = tuple(w for w in g.rollups if w.since == version)
        made = [sql for index in range(len(WHO_STEPS)) for w in who for sql in create_who_rollup(s, index, w, g)]
        return made + (_replicated_deduplication(s, _who_locals(s, who, g)) if s.cluster else [])

    return statements


def _who_locals(s: StoreSettings, who: Sequence[WhoRollup], g: WhoGeneration) -> list[str]:
    return [local_table(s, who_description(s.table, r, w, g).name) for r in WHO_STEPS for w in who]


DROPPED_WHO_STEPS: tuple[Rollup, ...] = tuple(r for r in ROLLUPS if r not in WHO_STEPS)
"""Steps migrations 8 and 9 kept "who" rollups at before migration 10 (5m)."""


def _drop_who(s: StoreSettings, r: Rollup, w: WhoRollup, g: WhoGeneration) -> list[str]:
    """Drop a "who" rollup's view and table (on a cluster the local and Distributed ones)."""
    name = who_description(s.table, r, w, g).name
    table = local_table(s, name)
    out = [f"DROP VIEW IF EXISTS {table}_mv{s.layout.on_cluster} SYNC",
           f"DROP TABLE IF EXISTS {table}{s.layout.on_cluster} SYNC"]
    if s.cluster:
        out.append(f"DROP TABLE IF EXISTS {s.database}.{name}{s.layout.on_cluster} SYNC")
    return out


def _who_steps_dropped(s: StoreSettings) -> list[str]:
    """Bring a store whose "who" rollups migrations 8 and 9 made at 1m, 5m and 1h to
    WHO_STEPS: each coarser step's view is pointed at the step now before it (``MODIFY
    QUERY``: the view stays in place, so no insert misses it), then the dropped steps'
    views and tables go (their rows are sums of the 1m rows, kept).  On a store made
    after it, 8 and 9 made WHO_STEPS only: the views are given the query they already
    have and the drops find nothing."""
    out = []
    for w in WHO_V8.rollups:
        for index in range(1, len(WHO_STEPS)):
            table = local_table(s, who_description(s.table, WHO_STEPS[index], w, WHO_V8).name)
            out.append(f"ALTER TABLE {table}_mv{s.layout.on_cluster} MODIFY QUERY\n{who_select(s, index, w, WHO_V8)}")
    for r in DROPPED_WHO_STEPS:
        for w in WHO_V8.rollups:
            out += _drop_who(s, r, w, WHO_V8)
    return out


def _existing(s: StoreSettings, query: Query | None) -> set[str] | None:
    """The names of ``s.database``'s tables and views on the node `query` reaches; None
    without a store (the statements of the whole migration are wanted)."""
    if query is None:
        return None
    return {row[0] for row in query(f"SELECT name FROM system.tables WHERE database = {string(s.database)}")}


def who_rebuilt(s: StoreSettings, query: Query | None = None) -> list[str]:
    """Migration 11: the "who" rollups of WHO_V8 (both sides' AS among the filter
    columns) replaced by WHO's, their rows kept.

    For each rollup: WHO's tables are made, WHO_V8's rows copied in, summed over the new
    keys (the AS columns a WHO rollup no longer has fall out of its key; a host's own AS
    is among the values), then WHO's views are made and WHO_V8's views and tables
    dropped.  The views come after the copy, so a copied 1m row never reaches the 1h
    table twice, and their existence marks a rollup's copy done: a migration stopped
    midway (killed, the server gone) starts a rollup's copy again from empty tables
    (TRUNCATE) unless its views exist.  On a cluster the copy goes from Distributed
    table to Distributed table (every shard read, every row written to the shard its
    key picks, synchronously: CLUSTER_INSERT_SETTINGS).  Flows inserted by another storing process during the copy reach
    WHO_V8's tables only and are missing from the rollups (the flows keep them): the
    appliance migrates before its storing process inserts; on a cluster, migrate before
    starting the storers.  Without `query` (no store): every statement, as on a store
    that has WHO_V8's tables only."""
    existing = _existing(s, query)
    on = s.layout.on_cluster
    out: list[str] = []
    for w, old in zip(WHO.rollups, WHO_V8.rollups, strict=True):
        assert w.name == old.name and w.measures == old.measures, "migration 11 copies a rollup to its own kind"
        descriptions = [who_description(s.table, r, w) for r in WHO_STEPS]
        views = {f"{s.layout.local(d.name)}_mv" for d in descriptions}
        if existing is None or not views <= existing:
            out += [sql for r, d in zip(WHO_STEPS, descriptions, strict=True)
                    for sql in d.create_statements(s.database, s.ttl_days * r.ttl_factor, s.layout)]
            if s.cluster:
                out += _replicated_deduplication(s, _who_locals(s, (w,), WHO))
            out += [f"TRUNCATE TABLE IF EXISTS {local_table(s, d.name)}{on} SYNC" for d in descriptions]
            for r, d in zip(WHO_STEPS, descriptions, strict=True):
                source = who_description(s.table, r, old, WHO_V8)
                if existing is None or source.name in existing:
                    out.append(_who_copy(s, d, source, w))
            out += [who_view(s, index, w) for index in range(len(WHO_STEPS))]
        for r in WHO_STEPS:
            out += _drop_who(s, r, old, WHO_V8)
    return out


def _who_copy(s: StoreSettings, target: Table, source: Table, w: WhoRollup) -> str:
    """``INSERT ... SELECT`` of `source`'s rows into `target`, summed (states merged) over
    `target`'s keys."""
    keys = [c for c in target.names if c not in {m.name for m in w.measures}]
    measures = [f"{m.from_rollup} AS {m.name}" for m in w.measures]
    # On a cluster the rows reach every shard before the statement returns (as a flow
    # insert's do): a queued row reaching a 1m table after its views exist would be
    # summed into the 1h table a second time.
    from .base import CLUSTER_INSERT_SETTINGS  # base imports this module's users

    synced = ", ".join(f"{k} = {v}" for k, v in CLUSTER_INSERT_SETTINGS.items())
    settings = f" SETTINGS {synced}" if s.cluster else ""
    return (f"INSERT INTO {target.qualified(s.database)} ({', '.join(target.names)}){settings}\n"
            f"SELECT {', '.join([*keys, *measures])}\nFROM {source.qualified(s.database)}\n"
            f"GROUP BY {', '.join(keys)}")


def _initial(s: StoreSettings) -> list[str]:
    out = [f"CREATE DATABASE IF NOT EXISTS {s.database}{s.layout.on_cluster}", *create_flows(s), *create_ptr_cache(s)]
    for index in range(len(ROLLUPS)):
        out.extend(create_rollup(s, index))
    return out


def _detections(s: StoreSettings) -> list[str]:
    return DETECTIONS.create_statements(s.database, s.ttl_days, s.layout)


def _anomaly_scores(s: StoreSettings) -> list[str]:
    return ANOMALY_SCORES.create_statements(s.database, s.ttl_days, s.layout)


def _blackhole_events(s: StoreSettings) -> list[str]:
    """The blackhole manager's history (tables.BLACKHOLE_EVENTS), kept as long as the 1h
    rollup: an audit trail of a few rows a day costs nothing."""
    return BLACKHOLE_EVENTS.create_statements(s.database, s.ttl_days * ROLLUPS[-1].ttl_factor, s.layout)


def _collector_stats(s: StoreSettings) -> list[str]:
    """The collector's own counters, kept as long as the 5m rollup, and the exporters'
    interface table (tables.COLLECTOR_STATS, tables.EXPORTER_INTERFACES)."""
    return [
        *COLLECTOR_STATS.create_statements(s.database, s.ttl_days * ROLLUPS[1].ttl_factor, s.layout),
        *EXPORTER_INTERFACES.create_statements(s.database, layout=s.layout),
    ]


def deduplicated_tables(s: StoreSettings) -> list[str]:
    """The tables a flow insert writes: the flows table, then each rollup its views feed
    (on a cluster, the local tables the rows land in)."""
    return [local_table(s, s.table), *(local_table(s, rollup_description(s.table, r).name) for r in ROLLUPS)]


def _replicated_deduplication(s: StoreSettings, tables: Sequence[str]) -> list[str]:
    window = ", ".join(f"{key} = {value}" for key, value in REPLICATED_DEDUPLICATION.items())
    return [f"ALTER TABLE {table}{s.layout.on_cluster} MODIFY SETTING {window}" for table in tables]


def _deduplication(s: StoreSettings) -> list[str]:
    """Make non-replicated MergeTree honour ``insert_deduplication_token`` on the flows table
    and the rollups (the insert also sets ``deduplicate_blocks_in_dependent_materialized_views``,
    see base.INSERT_SETTINGS), so a retried insert stores its rows once.  Replicated tables
    (a cluster) always do, within the window set here (REPLICATED_DEDUPLICATION)."""
    if s.cluster:
        return _replicated_deduplication(s, deduplicated_tables(s))
    return [
        f"ALTER TABLE {table} MODIFY SETTING non_replicated_deduplication_window = {DEDUPLICATION_WINDOW}"
        for table in deduplicated_tables(s)
    ]


WRITE_BLOCKS: dict[str, int] = {"max_compress_block_size": 131_072, "min_compress_block_size": 32_768}
"""Compression block sizes of the tables a flow insert writes (ClickHouse's defaults: 1 MiB
and 64 KiB).  Every part written keeps a compression buffer of up to
``max_compress_block_size`` per column stream, and one flow insert writes a part of the
flows table (over 60 columns) and one of each of the 17 rollups its views feed.  Twelve
250k-row inserts with every view (bench/insert_memory.py, 2026-12-07): the engine's
tracked memory peaked at 648-716 MB with the defaults, 295-299 MB with these, 271-275 MB
with 64/16 KiB and 360-371 MB with 256/64 KiB; CPU 30.2-30.7 s with these against
28.6-32.0 s with the defaults, but 31.9-35.7 s with 64/16 KiB; the flows table 0.6%
larger.  The same settings given to the INSERT changed nothing: the tables' own decide.
In the service (bench/ingest_enriched.py, 200k flows/s enriched, the parent commit then
this one, back to back): main process 1,043 -> 921 MB, all processes 1,216 -> 1,052 MB,
the engine's tracker 315 -> 189 MB, CPU 22.9 -> 22.8 s (docs/performance.md)."""


def _write_blocks(s: StoreSettings) -> list[str]:
    """WRITE_BLOCKS on the tables a flow insert writes (migration 12; on a cluster, the
    local tables, on every node).  Tables a later migration makes need them set too."""
    clause = ", ".join(f"{key} = {value}" for key, value in WRITE_BLOCKS.items())
    return [f"ALTER TABLE {table}{s.layout.on_cluster} MODIFY SETTING {clause}" for table in insert_tables(s)]


def insert_tables(s: StoreSettings) -> list[str]:
    """Every table a flow insert writes: the flows table, the rollups and the "who" rollups
    (on a cluster, the local tables the rows land in)."""
    return [*deduplicated_tables(s), *_who_locals(s, WHO.rollups, WHO)]


def _tunnel_columns(s: StoreSettings) -> list[str]:
    """The outer addresses of encapsulated flows (columns.TUNNEL_OF), added in place to a
    flows table made before them.  A new table has them from migration 1 (built from
    COLUMNS), where these statements change nothing; not rollup dimensions (addresses
    never are).  The statements are missing_columns' for a table lacking only them (on a
    cluster, the local and the Distributed flows tables)."""
    tunnel = set(TUNNEL_OF.values())
    without = [*(c.name for c in COLUMNS if c.name not in tunnel), *ALIASES]
    return [sql for table in flow_tables(s) for sql in missing_columns(s, without, table)]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "flows table, ptr_cache, 1m/5m/1h rollups and their views", _initial),
    Migration(2, "detections table", _detections),
    Migration(3, "anomaly_scores table", _anomaly_scores),
    Migration(4, "blackhole_events table", _blackhole_events),
    Migration(5, "collector_stats and exporter_interfaces tables", _collector_stats),
    Migration(6, "insert deduplication window on flows and rollups", _deduplication),
    Migration(7, "tunnel_src_addr and tunnel_dst_addr on flows", _tunnel_columns),
    Migration(8, "rollups of top hosts and ports and their views", _who_rollups_of(8, WHO_V8)),
    Migration(9, "rollups of upstreams, prefixes and inbound scanners and their views", _who_rollups_of(9, WHO_V8)),
    Migration(10, "who rollups at 1m and 1h only: the 5m step dropped", _who_steps_dropped),
    Migration(11, "who rollups without the other side's AS: top_ tables, rows copied", who_rebuilt, who_rebuilt),
    Migration(12, "smaller compression blocks on the tables a flow insert writes", _write_blocks),
)


DAY_S = 86_400

DAY_OR_COARSER = frozenset({
    "toYYYYMMDD", "toYYYYMM", "toDate", "toStartOfDay", "toMonday", "toStartOfMonth", "toStartOfQuarter",
    "toStartOfYear", "toYear",
})
"""Partition functions the writer can bound: each maps one calendar day to one partition
at most.  A row's partition is then decided by the calendar day of one DateTime column in
the store's time zone; one UTC day overlaps at most two calendar days in any time zone
(offsets are under a day), so an insert holding ``n`` UTC days touches at most ``2 n``
partitions of each table, whatever the store's time zone."""

_PARTITION_CALL = re.compile(r"^\s*(\w+)\(\s*(\w+)\s*\)\s*$")


def partition_source(expression: str) -> str:
    """The column a ``PARTITION BY`` of the form ``f(column)`` reads, f in DAY_OR_COARSER.

    Raises ValueError saying why otherwise: the writer could not keep an insert within
    the store's partition limit, and the store refuses inserts beyond it.
    """
    m = _PARTITION_CALL.match(expression)
    if m is None or m.group(1) not in DAY_OR_COARSER:
        raise ValueError(
            f"{expression!r} is not supported: use f(column) with f one of {', '.join(sorted(DAY_OR_COARSER))} "
            "(inserts are split by calendar day to stay within the store's partitions per insert)"
        )
    return m.group(2)


def flow_partition_column(expression: str) -> str:
    """The DateTime flow column the flows table's ``PARTITION BY`` `expression` reads;
    ValueError saying why it cannot be used.  Config validation and the store both call it."""
    column = partition_source(expression)
    if column not in BY_NAME or BY_NAME[column].ch_type != "DateTime":
        raise ValueError(f"{column!r} is not a DateTime flow column")
    return column


def partition_columns(s: StoreSettings) -> tuple[str, ...]:
    """The flow columns whose calendar day decides the partitions a flow insert writes, in
    the flows table (``s.partition_by``) and in every rollup (``Rollup.partition`` of their
    ``timestamp``, computed from ROLLUP_TIME_SOURCE).  ConfigError when one cannot be used."""
    try:
        columns = [flow_partition_column(s.partition_by)]
    except ValueError as err:
        raise ConfigError([f"storage.partition_by: {err}"]) from err
    for r in ROLLUPS:
        column = partition_source(r.partition)  # ours: a mistake here is a bug, raised as such
        columns.append(ROLLUP_TIME_SOURCE if column == "timestamp" else column)
    return tuple(dict.fromkeys(columns))


def create_migrations_table(s: StoreSettings) -> list[str]:
    """The database and the migrations' log (on a cluster, on every node: tables.MIGRATIONS)."""
    return [f"CREATE DATABASE IF NOT EXISTS {s.database}{s.layout.on_cluster}",
            *MIGRATIONS_LOG.create_statements(s.database, layout=s.layout)]


def flow_tables(s: StoreSettings) -> list[str]:
    """The names (in ``s.database``) of the tables that hold every flow column: the flows
    table, or on a cluster its local tables and the Distributed one."""
    return [s.layout.local(s.table), s.table] if s.cluster else [s.table]


def missing_columns(s: StoreSettings, existing: Sequence[str], table: str | None = None) -> list[str]:
    """ALTER statements adding every COLUMNS entry and alias that flow table `table` (the
    flows table by default; one of flow_tables) lacks.

    New columns go right after their predecessor in COLUMNS, so ``SELECT *`` keeps the
    order of columns.py; aliases go last, after the column they read is in place.
    """
    alter = f"ALTER TABLE {s.database}.{table or s.table}{s.layout.on_cluster} ADD COLUMN IF NOT EXISTS"
    have = set(existing)
    out = []
    previous = None
    for col in COLUMNS:
        if col.name not in have:
            where = f" AFTER {previous}" if previous else " FIRST"
            out.append(f"{alter} {column_ddl(col)}{where}")
        previous = col.name
    out.extend(f"{alter} {alias_ddl(name)}" for name in ALIASES if name not in have)
    return out


def _has_table(s: StoreSettings, name: str, query: Query) -> bool:
    """Whether table `name` of ``s.database`` exists on the node `query` reaches.

    On a cluster the log is made only while it is missing: an ON CLUSTER statement waits
    for every node (``distributed_ddl_task_timeout``), so with one node down a start that
    ran one would wait and fail, and flows would go to the spool for nothing once the
    schema is complete."""
    return bool(query(f"SELECT 1 FROM system.tables WHERE database = {string(s.database)} AND name = {string(name)}"))


def _cluster_check(s: StoreSettings, query: Query) -> None:
    """Refuse a cluster layout over a database one server's migrations made: its ``flows``
    is a MergeTree holding rows, where the cluster needs a Distributed table (moving the
    rows is the operator's decision, not a migration's)."""
    rows = query(f"SELECT engine FROM system.tables WHERE database = {string(s.database)} AND name = {string(s.table)}")
    if rows and rows[0][0] != "Distributed":
        raise StoreError(
            f"clickhouse.cluster {s.cluster!r}: {s.qualified_table} exists as a {rows[0][0]} table (made without a "
            "cluster); a cluster needs a new database (clickhouse.database) whose tables the migrations make"
        )


def migrate(s: StoreSettings, execute: Execute, query: Query) -> list[int]:
    """Bring the schema up to date; returns the migration versions applied now.

    Idempotent: every statement is ``IF NOT EXISTS`` and versions already recorded are
    skipped, so a second run (or two collectors starting together) changes nothing.
    """
    if s.cluster:
        _cluster_check(s, query)
    if not (s.cluster and _has_table(s, MIGRATIONS_LOG.name, query)):
        for sql in create_migrations_table(s):
            execute(sql)
    done = {int(row[0]) for row in query(f"SELECT DISTINCT version FROM {MIGRATIONS_LOG.qualified(s.database)}")}
    applied = []
    for m in MIGRATIONS:
        if m.version in done:
            continue
        log.info("schema: applying migration %d (%s) to %s", m.version, m.description, s.database)
        for sql in m.planned(s, query) if m.planned else m.statements(s):
            execute(sql)
        execute(MIGRATIONS_LOG.insert_sql(s.database, [{"version": m.version, "description": m.description}]))
        applied.append(m.version)
    for table in flow_tables(s):
        existing = [
            row[0]
            for row in query(
                f"SELECT name FROM system.columns WHERE database = {string(s.database)} AND table = {string(table)}"
            )
        ]
        for sql in missing_columns(s, existing, table):
            log.info("schema: %s", sql)
            execute(sql)
    return applied
