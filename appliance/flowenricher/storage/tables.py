"""The one description of every table in the store besides the flows (columns.py).

Each :class:`Table` says its name, its columns (name, ClickHouse type, codec, default)
and its engine, sort key, partitioning and retention column.  From it come the CREATE
statement the migrations run (storage/schema.py), the INSERT of every writer (detections,
anomaly scores, blackhole events, collector counters, interface names, PTR names, the
migrations' own log) and the columns the API reads; nobody else spells these names or
types, so renaming a column here changes the DDL, the writers and the readers together,
and a test that was written against the old name fails.

A Python value becomes SQL by its column's type (:func:`renderer`), through
common/sql.py: strings escaped, ``None`` as NULL where the column is Nullable (and a
TypeError where it is not), times as unix seconds, addresses as the text of their IPv6
value (IPv4 mapped, as the flows table stores them).

The rollups are :class:`Table` values too, but made by storage/schema.py's
``rollup_description`` from ROLLUPS and the flow columns they keep, since their
dimensions are columns.py's and their names follow the configured flows table.

Where a table lives is a :class:`Layout`: on one server a table is the described table
itself; on a ClickHouse cluster (``clickhouse.cluster``) it is a Replicated engine under
``<name>_local`` on every node, made ON CLUSTER, and a Distributed table under the
described name over them.  Every reader and writer names tables by their described name,
so the API, the dashboards and the writers read and write the Distributed tables on a
cluster without a second name for anything; only the migrations (storage/schema.py) and
the materialized views, which feed one node's tables from that node's rows, name the
local tables, through :meth:`Layout.local`.
"""

from __future__ import annotations

import functools
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..common import sql
from ..common.addresses import stored_text

Render = Callable[[Any], str]


def split_top_level(text: str) -> list[str]:
    """`text` split at the commas outside parentheses, each part stripped:
    ``"String, Array(UInt32)"`` -> ``["String", "Array(UInt32)"]``."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += (char == "(") - (char == ")")
        if char == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return parts


def type_parts(ch_type: str) -> tuple[str, list[str]]:
    """A ClickHouse type's name and its top-level arguments:
    ``Map(String, Array(UInt32))`` -> ``("Map", ["String", "Array(UInt32)"])``."""
    head, _, rest = ch_type.partition("(")
    if not rest:
        return head, []
    return head, split_top_level(rest.removesuffix(")"))


KEEPER_PATH = "/clickhouse/tables/{shard}/{database}/{table}"
"""Where a sharded table's replicas meet in Keeper: the server expands the macros when it
creates the table (``{shard}`` and ``{replica}`` from each node's ``<macros>``,
``{database}`` and ``{table}`` from the statement), so one statement run ON CLUSTER gives
each shard its own replication group."""

KEEPER_PATH_EVERYWHERE = "/clickhouse/tables/{database}/{table}"
"""Where a table kept whole on every node (the migrations' log) meets its replicas: one
replication group across the cluster, whose replicas are named ``{shard}-{replica}``, unique
across shards even where replica names repeat from shard to shard."""


@dataclass(frozen=True)
class Layout:
    """Where the described tables live: one server (``cluster`` None) or a ClickHouse
    cluster, named as in the servers' ``remote_servers``.

    On a cluster each table is two: ``<name>_local`` on every node, its engine the
    Replicated variant of the described one (replicas of a shard meet at KEEPER_PATH),
    and ``<name>``, a Distributed table over them (:meth:`distributed_sql`).  Every
    statement is run ON CLUSTER.  The servers need Keeper (it holds the replicas' logs and
    the ON CLUSTER queue), the same ``remote_servers`` with ``internal_replication`` true
    (the Distributed table writes one replica per shard and replication copies it; with
    false it would write every replica itself), and ``<macros>`` with ``shard`` and
    ``replica`` on each node.
    """

    cluster: str | None = None

    LOCAL_SUFFIX = "_local"

    def local(self, name: str) -> str:
        """The table holding a node's rows of the described table `name`."""
        return f"{name}{self.LOCAL_SUFFIX}" if self.cluster else name

    @property
    def on_cluster(self) -> str:
        """`` ON CLUSTER '<cluster>'`` for every DDL statement, or nothing on one server."""
        return f" ON CLUSTER {sql.string(self.cluster)}" if self.cluster else ""

    def engine(self, engine: str, everywhere: bool = False) -> str:
        """The engine of a local table: `engine` on one server, its Replicated variant on a
        cluster (``SummingMergeTree((a, b))`` ->
        ``ReplicatedSummingMergeTree('<path>', '{replica}', (a, b))``), its replicas in one
        group per shard, or, `everywhere`, in one group across the cluster."""
        if not self.cluster:
            return engine
        head, args = type_parts(engine)
        if not head.endswith("MergeTree") or head.startswith("Replicated"):
            raise ValueError(f"engine {engine!r}: only a MergeTree engine has a Replicated variant")
        path, replica = (KEEPER_PATH_EVERYWHERE, "{shard}-{replica}") if everywhere else (KEEPER_PATH, "{replica}")
        return f"Replicated{head}({', '.join([sql.string(path), sql.string(replica), *args])})"

    def distributed_sql(self, database: str, name: str, sharding_key: str) -> str:
        """The Distributed table `name` over the local tables, with their columns (``AS``:
        the shape is never written twice); rows inserted into it go to the shard
        `sharding_key` picks."""
        assert self.cluster, "a Distributed table needs a cluster"
        engine = f"Distributed({sql.string(self.cluster)}, {sql.string(database)}, {sql.string(self.local(name))}"
        return (f"CREATE TABLE IF NOT EXISTS {database}.{name}{self.on_cluster} AS {database}.{self.local(name)}\n"
                f"ENGINE = {engine}, {sharding_key})")


ONE_SERVER = Layout()


def _address(value: Any) -> str:
    """An address (text or 16 bytes) as the text literal of its IPv6 value, IPv4 mapped.
    ValueError when it is no address."""
    return sql.string(stored_text(value.strip() if isinstance(value, str) else bytes(value)))


def _text(value: Any) -> str:
    if not isinstance(value, str | bytes):
        raise TypeError(f"a String column needs str or bytes, not {type(value).__name__}")
    return sql.string(value)


def _integer(value: Any) -> str:
    """The digits alone: in VALUES the column's type reads them, so even a 128-bit value
    needs none of sql.number's wide-integer conversions (those are for expressions)."""
    if not isinstance(value, numbers.Integral):
        raise TypeError(f"an integer column needs an integer, not {type(value).__name__}")
    return str(int(value))


def _not_null(value: Any) -> Any:
    if value is None:
        raise TypeError("NULL in a column that is not Nullable")
    return value


def _aggregate_state(value: Any) -> str:
    """An aggregate state has no literal: only a view (or INSERT ... SELECT ...State()) makes one."""
    raise TypeError("an AggregateFunction column is filled by its view, never by INSERT ... VALUES")


_INTEGER = re.compile(r"U?Int(8|16|32|64|128|256)")


def renderer(ch_type: str) -> Render:
    """How a Python value of a column of type `ch_type` is written in INSERT ... VALUES.

    ValueError at import for a type with no renderer: a description may only use types
    whose values the writers know how to give.
    """
    head, args = type_parts(ch_type)
    if head == "Nullable":
        inner = renderer(args[0])
        return lambda v: "NULL" if v is None else inner(v)
    if head == "LowCardinality":
        return renderer(args[0])
    if head == "SimpleAggregateFunction":  # holds plain values of its last argument's type
        return renderer(args[-1])
    if head == "AggregateFunction":
        return _aggregate_state
    if head == "Array":
        item = renderer(args[0])
        return lambda v: "[" + ", ".join(item(x) for x in _not_null(v)) + "]"
    if head == "Map":
        key_type, value_type = args
        # Keys repeat from row to row (feature names): each is escaped once.
        key, value = functools.lru_cache(maxsize=4096)(renderer(key_type)), renderer(value_type)
        return lambda v: "{" + ", ".join(f"{key(k)}: {value(x)}" for k, x in _not_null(v).items()) + "}"
    if ch_type == "String":
        return _text
    if ch_type == "IPv6":
        return lambda v: _address(_not_null(v))
    if ch_type == "Bool":
        return lambda v: sql.boolean(bool(_not_null(v)))
    if ch_type == "DateTime":
        return lambda v: sql.unix_seconds(_not_null(v))
    if head == "DateTime64":
        scale = int(args[0])
        return lambda v: sql.unix_seconds(_not_null(v), scale)
    if _INTEGER.fullmatch(ch_type):
        return _integer
    if ch_type in ("Float32", "Float64"):
        return lambda v: sql.number(float(_not_null(v)))  # float(): a numpy or integer value is a float here too
    raise ValueError(f"no renderer for ClickHouse type {ch_type!r}")


@dataclass(frozen=True)
class TableColumn:
    """One column of a described table; `render` comes from its type."""

    name: str
    ch_type: str
    codec: str = ""
    default: str = ""  # a DEFAULT expression: the column may be left out of an INSERT
    render: Render = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "render", renderer(self.ch_type))

    def ddl(self) -> str:
        default = f" DEFAULT {self.default}" if self.default else ""
        codec = f" CODEC({self.codec})" if self.codec else ""
        return f"{self.name} {self.ch_type}{default}{codec}"


@dataclass(frozen=True)
class Table:
    """A table's whole description: DDL, INSERT and what readers need (its time column)."""

    name: str
    doc: str
    columns: tuple[TableColumn, ...]
    engine: str
    order_by: str
    partition_by: str = ""
    ttl_from: str = ""  # the expression retention counts from; "" = kept until deleted
    settings: str = ""
    time_column: str = ""  # what readers bound a time range on (and sort by)
    everywhere: bool = False  # on a cluster: kept whole on every node, no Distributed table

    def __post_init__(self) -> None:
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise ValueError(f"table {self.name}: a column is described twice")
        if self.time_column and self.time_column not in names:
            raise ValueError(f"table {self.name}: time column {self.time_column} is not a column")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> TableColumn:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"table {self.name} has no column {name!r}")

    def qualified(self, database: str) -> str:
        return f"{database}.{self.name}"

    @property
    def sharding_key(self) -> str:
        """How a Distributed insert picks a row's shard: a hash of the sort key.  Rows that
        a Replacing or Summing engine merges share their sort key, so they land on one shard
        and merge there; and the same rows always go to the same shard, so a retried insert
        is split as the first attempt was and each shard's deduplication recognises its
        part (``rand()`` would send a retry's rows elsewhere)."""
        key = self.order_by.strip()
        depth = 0
        for i, char in enumerate(key):  # a tuple's parentheses go; a call's stay
            depth += (char == "(") - (char == ")")
            if depth == 0:
                if i == len(key) - 1 and key.startswith("("):
                    key = key[1:-1]
                break
        return f"cityHash64({key})"

    def create_sql(self, database: str, ttl_days: int = 0, layout: Layout = ONE_SERVER) -> str:
        """``CREATE TABLE IF NOT EXISTS``; rows expire `ttl_days` after ``ttl_from`` when both are set.
        On a cluster (`layout`), the local table on every node."""
        body = ",\n  ".join(c.ddl() for c in self.columns)
        name = self.name if self.everywhere else layout.local(self.name)
        sql_text = (f"CREATE TABLE IF NOT EXISTS {database}.{name}{layout.on_cluster} (\n  {body}\n)"
                    f"\nENGINE = {layout.engine(self.engine, self.everywhere)}")
        if self.partition_by:
            sql_text += f"\nPARTITION BY {self.partition_by}"
        sql_text += f"\nORDER BY {self.order_by}"
        if self.ttl_from and ttl_days > 0:
            sql_text += f"\nTTL {self.ttl_from} + toIntervalDay({int(ttl_days)})"
        if self.settings:
            sql_text += f"\nSETTINGS {self.settings}"
        return sql_text

    def create_statements(self, database: str, ttl_days: int = 0, layout: Layout = ONE_SERVER) -> list[str]:
        """What makes the table: :meth:`create_sql`, and on a cluster the Distributed table
        readers and writers use under the described name."""
        if not layout.cluster or self.everywhere:
            return [self.create_sql(database, ttl_days, layout)]
        return [self.create_sql(database, ttl_days, layout),
                layout.distributed_sql(database, self.name, self.sharding_key)]

    def values_sql(self, row: Mapping[str, Any], names: Sequence[str]) -> str:
        """One row's ``(v1, v2, ...)``, the values of `names` in that order."""
        try:
            return "(" + ", ".join(self.column(n).render(row[n]) for n in names) + ")"
        except (TypeError, ValueError) as err:
            raise type(err)(f"table {self.name}: {err}") from err

    def insert_sql(self, database: str, rows: Sequence[Mapping[str, Any]]) -> str:
        """One ``INSERT ... VALUES`` of `rows` (mappings from column name to Python value).

        Every row gives the same columns: all of them, or all but some with a DEFAULT.
        A column the table lacks is a KeyError, so a writer still using an old name
        fails at once instead of writing something else.
        """
        if not rows:
            raise ValueError(f"table {self.name}: an INSERT needs at least one row")
        given = set(rows[0])
        unknown = given - set(self.names)
        if unknown:
            raise KeyError(f"table {self.name} has no column {', '.join(sorted(unknown))}")
        missing = [c.name for c in self.columns if c.name not in given and not c.default]
        if missing:
            raise KeyError(f"table {self.name}: a row lacks {', '.join(missing)}")
        names = [n for n in self.names if n in given]
        values = []
        for row in rows:
            if set(row) != given:
                raise KeyError(f"table {self.name}: rows of one INSERT give different columns")
            values.append(self.values_sql(row, names))
        return f"INSERT INTO {self.qualified(database)} ({', '.join(names)}) VALUES\n" + ",\n".join(values)


def _c(name: str, ch_type: str, codec: str = "", default: str = "") -> TableColumn:
    return TableColumn(name, ch_type, codec, default)


MIGRATIONS = Table(
    "schema_migrations",
    "The migrations applied to the store, by version (storage/schema.py reads it to skip them)."
    "  On a cluster every node keeps all of it, so whichever node a process reaches, it reads"
    " the same versions.",
    (_c("version", "UInt32"), _c("description", "String"), _c("applied_at", "DateTime", default="now()")),
    engine="MergeTree",
    order_by="version",
    everywhere=True,
)

PTR_CACHE = Table(
    "ptr_cache",
    "The original flowenricher's PTR cache, same columns and sort key.  ReplacingMergeTree"
    "(updated_at) instead of MergeTree: a refreshed name replaces the old row on merge instead"
    " of piling up; every original query still reads it.",
    (
        _c("ip", "String"), _c("ptr", "String"), _c("updated_at", "DateTime", default="now()"),
        _c("asn", "UInt32", default="0"), _c("asn_name", "String", default="''"),
        _c("country", "String", default="''"),
    ),
    engine="ReplacingMergeTree(updated_at)",
    order_by="ip",
    settings="index_granularity = 8192",
    time_column="updated_at",
)

DETECTIONS = Table(
    "detections",
    "What the detection engine found (detect/actions.py writes it, the API and the security"
    " dashboard read it).  Addresses are IPv6 (IPv4 mapped), as in the flows table; columns"
    " only some rules fill are Nullable; `samples` is the sample flows as a JSON array.",
    (
        _c("detected_at", "DateTime64(3)", "Delta, ZSTD(1)"),
        _c("rule", "LowCardinality(String)"),
        _c("key", "LowCardinality(String)"),
        _c("address", "IPv6"),
        _c("dst_addr", "Nullable(IPv6)"),
        _c("dst_port", "Nullable(UInt16)"),
        _c("window_s", "Float32"),
        _c("flows", "UInt64"),
        _c("packets", "UInt64"),
        _c("bytes", "UInt64"),
        _c("pps", "Float64"),
        _c("bps", "Float64"),
        _c("syn_ratio", "Float32"),
        _c("unique_dst_ips", "Nullable(UInt32)"),
        _c("unique_dst_ports", "Nullable(UInt32)"),
        _c("unique_src_ips", "Nullable(UInt32)"),
        _c("first_seen", "DateTime"),
        _c("last_seen", "DateTime"),
        _c("anomaly_score", "Nullable(Float32)"),
        _c("actions", "Array(LowCardinality(String))"),
        _c("blackhole", "Bool"),
        _c("samples", "String", "ZSTD(3)"),
    ),
    engine="MergeTree",
    partition_by="toYYYYMM(detected_at)",
    order_by="(rule, detected_at)",
    ttl_from="toDateTime(detected_at)",
    time_column="detected_at",
)

ANOMALY_SCORES = Table(
    "anomaly_scores",
    "The anomaly score of every scored source and window (detect/anomaly.py).",
    (
        _c("ts", "DateTime", "DoubleDelta, ZSTD(1)"),
        _c("window_s", "UInt32"),
        _c("src_addr", "IPv6"),
        _c("score", "Float32"),
        _c("exporter_address", "IPv6"),
        _c("features", "Map(String, Float32)"),
    ),
    engine="MergeTree",
    partition_by="toYYYYMMDD(ts)",
    order_by="(ts, src_addr)",
    ttl_from="ts",
    time_column="ts",
)

BLACKHOLE_EVENTS = Table(
    "blackhole_events",
    "Every announcement, withdrawal, expiry and refusal of the blackhole manager"
    " (blackhole/events.py).  The state DB (SQLite) stays the one owner of the active set;"
    " this table is its history in the store Grafana reads.",
    (
        _c("ts", "DateTime64(3)", "Delta, ZSTD(1)"),
        _c("action", "LowCardinality(String)"),
        _c("prefix", "String"),
        _c("next_hop", "String"),
        _c("communities", "Array(String)"),
        _c("rule", "String"),
        _c("reason", "String"),
        _c("expires_at", "Nullable(DateTime)"),
        _c("dry_run", "UInt8"),
        _c("source", "LowCardinality(String)"),
    ),
    engine="MergeTree",
    partition_by="toYYYYMM(ts)",
    order_by="(ts, prefix)",
    ttl_from="toDateTime(ts)",
    time_column="ts",
)

COLLECTOR_STATS = Table(
    "collector_stats",
    "The collector's own counters, snapshotted by stats_recorder.py, so the health dashboard"
    " works with only ClickHouse (no Prometheus).",
    (
        _c("ts", "DateTime", "DoubleDelta, ZSTD(1)"),
        _c("exporter_address", "IPv6"),
        _c("metric", "LowCardinality(String)"),
        _c("value", "Float64", "Gorilla, ZSTD(1)"),
    ),
    engine="MergeTree",
    partition_by="toYYYYMM(ts)",
    order_by="(metric, exporter_address, ts)",
    ttl_from="ts",
    time_column="ts",
)

EXPORTER_INTERFACES = Table(
    "exporter_interfaces",
    "The exporters' interface names and speeds from SNMP (stats_recorder.py), for"
    " utilisation.  A ReplacingMergeTree on ``ts``: each snapshot replaces the previous row"
    " of an interface on merge; readers use ``argMax(..., ts)``.",
    (
        _c("ts", "DateTime"),
        _c("exporter_address", "IPv6"),
        _c("ifindex", "UInt32"),
        _c("name", "String"),
        _c("alias", "String"),
        _c("speed_bps", "UInt64"),
    ),
    engine="ReplacingMergeTree(ts)",
    order_by="(exporter_address, ifindex)",
    time_column="ts",
)

TABLES: tuple[Table, ...] = (
    MIGRATIONS, PTR_CACHE, DETECTIONS, ANOMALY_SCORES, BLACKHOLE_EVENTS, COLLECTOR_STATS, EXPORTER_INTERFACES,
)
"""Every described table, in the order the migrations create them."""

BY_TABLE: dict[str, Table] = {t.name: t for t in TABLES}
