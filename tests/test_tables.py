"""storage/tables.py on the real engine (chDB): every described table is created from its
description, takes awkward rows through its INSERT and gives them back unchanged; the
migrations create exactly the described tables; and the migrations that now build their
DDL from the descriptions make the same tables as the text they ran before (a database
created by an older version has those, and a migration that already ran never runs again).
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import struct
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from appliance.flowenricher.blackhole.events import BlackholeEvent, insert_events_sql
from appliance.flowenricher.columns import BY_NAME
from appliance.flowenricher.detect.actions import insert_detections_sql
from appliance.flowenricher.detect.detection import Detection
from appliance.flowenricher.enrich.ptr import PtrResult
from appliance.flowenricher.storage import schema
from appliance.flowenricher.storage.embedded import EmbeddedStore
from appliance.flowenricher.storage.settings import StoreSettings
from appliance.flowenricher.storage.tables import BY_TABLE, TABLES, Table, type_parts
from appliance.flowenricher.wiring import ptr_cache_sink

DEFAULT = StoreSettings(path="unused")
WHO_DESCRIBED = tuple(schema.who_description(DEFAULT.table, r, w) for r in schema.WHO_STEPS for w in schema.WHO_ROLLUPS)
DESCRIBED = (*TABLES, *(schema.rollup_description(DEFAULT.table, r) for r in schema.ROLLUPS), *WHO_DESCRIBED)
"""The side tables and the rollups of the default flows table ("who" rollups included)."""

AWKWARD_TEXT = "it's \\ a \0 NUL,\n\t\r\x1b\x7f ünï €😀 '\\'' \\x41 \\N {x:String}"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStore]:
    s = EmbeddedStore.open(StoreSettings(path=str(tmp_path_factory.mktemp("tables") / "data")))
    try:
        yield s
    finally:
        s.close()


def _rows(store: EmbeddedStore, sql: str) -> list[list[str]]:
    return [line.split("\t") for line in store.query(sql, "TSVRaw").decode().splitlines()]


# --------------------------------------------------------------------------- a value per type

# Each type's values come in two kinds: "awkward" (quotes, backslashes, NUL, unicode, the
# largest integers, IPv6) and "edge" (empty text, IPv4 mapped, NULL, empty arrays and maps,
# zero, NaN); a row of each is inserted.  `_read` is how a column is read back as text that
# tells every byte apart, `_expect` what that text must be for a Python value.


def _value(ch_type: str, awkward: bool) -> Any:
    head, args = type_parts(ch_type)
    if head == "Nullable":
        return _value(args[0], True) if awkward else None
    if head in ("LowCardinality", "SimpleAggregateFunction"):
        return _value(args[-1], awkward)
    if head == "Array":
        return [_value(args[0], True), _value(args[0], False)] if awkward else []
    if head == "Map":
        return {_value(args[0], True): _value(args[1], True), _value(args[0], False): _value(args[1], False)} \
            if awkward else {}
    if ch_type == "String":
        return AWKWARD_TEXT if awkward else ""
    if ch_type == "IPv6":
        return "2001:db8::1:ff" if awkward else "192.0.2.1"
    if ch_type == "Bool":
        return awkward
    if ch_type == "DateTime":
        return 4_294_967_295 if awkward else 1
    if head == "DateTime64":
        return 1_733_380_000.125 if awkward else 1.5
    if m := re.fullmatch(r"UInt(\d+)", ch_type):
        return 2 ** int(m.group(1)) - 1 if awkward else 0
    if ch_type in ("Float32", "Float64"):
        return 0.1 if awkward else math.nan
    raise AssertionError(f"the test has no value for {ch_type}")


def _read(ch_type: str, ref: str) -> str:
    head, args = type_parts(ch_type)
    if head == "Nullable":
        return f"if(isNull({ref}), 'NULL', {_read(args[0], f'assumeNotNull({ref})')})"
    if head == "LowCardinality":
        return _read(args[0], f"toString({ref})")
    if head == "Array":
        return f"arrayStringConcat(arrayMap(x -> {_read(args[0], 'x')}, {ref}), ',')"
    if head == "Map":
        pair = f"concat({_read(args[0], 'k')}, ':', {_read(args[1], 'v')})"
        return f"arrayStringConcat(arrayMap((k, v) -> {pair}, mapKeys({ref}), mapValues({ref})), ',')"
    if ch_type in ("String", "Float32", "Float64"):
        return f"hex({ref})"  # a float's hex is its bytes in memory
    if ch_type == "IPv6":
        return f"IPv6NumToString({ref})"
    if ch_type == "DateTime":
        return f"toString(toUnixTimestamp({ref}))"
    if head == "DateTime64":
        return f"toString(toUnixTimestamp64Milli({ref}))"
    return f"toString({ref})"


def _expect(ch_type: str, value: Any) -> str:
    head, args = type_parts(ch_type)
    if head == "Nullable":
        return "NULL" if value is None else _expect(args[0], value)
    if head == "LowCardinality":
        return _expect(args[0], value)
    if head == "Array":
        return ",".join(_expect(args[0], v) for v in value)
    if head == "Map":
        return ",".join(f"{_expect(args[0], k)}:{_expect(args[1], v)}" for k, v in value.items())
    if ch_type == "String":
        return str(value).encode().hex().upper()
    if ch_type == "IPv6":
        ip = ipaddress.ip_address(value)
        return f"::ffff:{ip}" if ip.version == 4 else str(ip)
    if ch_type == "Float32":
        return struct.pack("<f", value).hex().upper()
    if ch_type == "Float64":
        return struct.pack("<d", value).hex().upper()
    if ch_type == "Bool":
        return "true" if value else "false"
    if head == "DateTime64":
        assert args == ["3"], "the test reads DateTime64 in milliseconds"
        return str(round(value * 1000))
    return str(int(value))


def _row(table: Table, awkward: bool) -> dict[str, Any]:
    row = {c.name: _value(c.ch_type, awkward) for c in table.columns}
    if table.engine.startswith("SummingMergeTree((") and not awkward:
        # A SummingMergeTree drops a row whose sums are all zero: the edge row counts one.
        row |= dict.fromkeys(table.engine.removeprefix("SummingMergeTree((").rstrip(")").split(", "), 1)
    return row


def _read_back(store: EmbeddedStore, table: Table, database: str) -> list[list[str]]:
    """Every row as the `_read` text of each column, sorted (as the expected rows are)."""
    columns = ", ".join(_read(c.ch_type, c.name) for c in table.columns)
    return sorted(_rows(store, f"SELECT {columns} FROM {table.qualified(database)}"))


def _has_states_type(ch_type: str) -> bool:
    return type_parts(ch_type)[0] == "AggregateFunction"


def _has_states(table: Table) -> bool:
    return any(_has_states_type(c.ch_type) for c in table.columns)


def test_aggregate_states_are_never_written_as_values() -> None:
    """A table holding aggregate states (the scanners rollup) is filled by its view only:
    writing one of its rows as VALUES is refused, naming why, instead of making bad SQL."""
    stateful = [t for t in DESCRIBED if _has_states(t)]
    assert stateful, "no described table holds aggregate states"
    for table in stateful:
        with pytest.raises(TypeError, match="filled by its view"):
            table.insert_sql("described", [{c.name: _value(c.ch_type, True) if not _has_states_type(c.ch_type) else 0
                                            for c in table.columns}])


@pytest.mark.parametrize("table", [t for t in DESCRIBED if not _has_states(t)], ids=lambda t: t.name)
def test_awkward_rows_come_back_unchanged(store: EmbeddedStore, table: Table) -> None:
    store.query("CREATE DATABASE IF NOT EXISTS described", "TSV")
    store.query(table.create_sql("described"), "TSV")  # no TTL: the edge row is from 1970
    try:
        rows = [_row(table, awkward=True), _row(table, awkward=False)]
        store.query(table.insert_sql("described", rows), "TSV")
        expected = sorted([_expect(c.ch_type, row[c.name]) for c in table.columns] for row in rows)
        assert len({r[0] for r in expected}) == 2, "the first column must tell the rows apart"
        assert _read_back(store, table, "described") == expected
    finally:
        store.query(f"DROP TABLE {table.qualified('described')}", "TSV")


def test_defaults_may_be_left_out(store: EmbeddedStore) -> None:
    """A writer may omit columns with a DEFAULT (the migration log gives no applied_at)."""
    table = BY_TABLE["ptr_cache"]
    store.query("CREATE DATABASE IF NOT EXISTS described", "TSV")
    store.query(table.create_sql("described"), "TSV")
    try:
        store.query(table.insert_sql("described", [{"ip": "192.0.2.1", "ptr": AWKWARD_TEXT}]), "TSV")
        [[ptr, recent, asn, name]] = _rows(
            store, "SELECT hex(ptr), updated_at > now() - 60, asn, asn_name FROM described.ptr_cache")
        assert (ptr, recent, asn, name) == (AWKWARD_TEXT.encode().hex().upper(), "1", "0", "")
    finally:
        store.query("DROP TABLE described.ptr_cache", "TSV")


def test_a_row_that_does_not_fit_the_description_is_refused() -> None:
    table = BY_TABLE["collector_stats"]
    good = {"ts": 1, "exporter_address": "::", "metric": "m", "value": 1.0}
    with pytest.raises(KeyError, match="has no column exporter"):
        table.insert_sql("db", [{**good, "exporter": "::"}])
    with pytest.raises(KeyError, match="a row lacks metric"):
        table.insert_sql("db", [{k: v for k, v in good.items() if k != "metric"}])
    with pytest.raises(TypeError, match="NULL in a column that is not Nullable"):
        table.insert_sql("db", [{**good, "value": None}])
    with pytest.raises(TypeError, match="String column needs str"):
        table.insert_sql("db", [{**good, "metric": 5}])
    with pytest.raises(ValueError, match="does not appear to be an IPv4 or IPv6 address"):
        table.insert_sql("db", [{**good, "exporter_address": "router1"}])
    with pytest.raises(KeyError, match="different columns"):
        table.insert_sql("db", [good, {**good, "extra": 1}])


# --------------------------------------------------------------------------- writers


def test_the_writers_statements_round_trip(store: EmbeddedStore) -> None:
    """The detection and blackhole writers' own INSERTs (detect/actions.py, blackhole/events.py)."""
    detections, events = BY_TABLE["detections"], BY_TABLE["blackhole_events"]
    store.query("CREATE DATABASE IF NOT EXISTS writers", "TSV")
    for table in (detections, events):
        store.query(table.create_sql("writers"), "TSV")
    try:
        d = Detection(rule=AWKWARD_TEXT, key="dst", address="192.0.2.7", detected_at=1_733_380_000.25, window_s=10.0,
                      flows=1, packets=2, bytes=3, pps=0.1, bps=math.inf, syn_ratio=0.5, first_seen=1_733_379_990.0,
                      last_seen=1_733_380_000.0, actions=("alert", AWKWARD_TEXT), blackhole=True,
                      dst_addr="2001:db8::9", samples=({"note": AWKWARD_TEXT},))
        store.query(insert_detections_sql("writers", [d]), "TSV")
        [row] = _read_back(store, detections, "writers")
        assert dict(zip(detections.names, row, strict=True)) == {
            "detected_at": "1733380000250", "rule": _expect("String", AWKWARD_TEXT), "key": _expect("String", "dst"),
            "address": "::ffff:192.0.2.7", "dst_addr": "2001:db8::9", "dst_port": "NULL",
            "window_s": _expect("Float32", 10.0), "flows": "1", "packets": "2", "bytes": "3",
            "pps": _expect("Float64", 0.1), "bps": _expect("Float64", math.inf), "syn_ratio": _expect("Float32", 0.5),
            "unique_dst_ips": "NULL", "unique_dst_ports": "NULL", "unique_src_ips": "NULL",
            "first_seen": "1733379990", "last_seen": "1733380000", "anomaly_score": "NULL",
            "actions": _expect("Array(String)", ["alert", AWKWARD_TEXT]), "blackhole": "true",
            "samples": _expect("String", json.dumps([{"note": AWKWARD_TEXT}], separators=(",", ":")))}
        event = BlackholeEvent(1_733_380_000.5, "announce", "192.0.2.7/32", "192.0.2.1", ("65535:666",), AWKWARD_TEXT,
                               AWKWARD_TEXT, None, True, "detection")
        store.query(insert_events_sql("writers", [event]), "TSV")
        [row] = _read_back(store, events, "writers")
        assert row == [_expect(c.ch_type, v) for c, v in zip(events.columns, [
            1_733_380_000.5, "announce", "192.0.2.7/32", "192.0.2.1", ["65535:666"], AWKWARD_TEXT, AWKWARD_TEXT,
            None, 1, "detection"], strict=True)]
    finally:
        store.query("DROP DATABASE writers", "TSV")


def test_the_ptr_sink_round_trips(store: EmbeddedStore) -> None:
    """The resolver's sink (wiring.ptr_cache_sink) writes names as the description renders them."""
    settings = StoreSettings(path="unused", database="ptr_writer")
    store.query("CREATE DATABASE IF NOT EXISTS ptr_writer", "TSV")
    store.query(BY_TABLE["ptr_cache"].create_sql("ptr_writer"), "TSV")
    try:
        sink = ptr_cache_sink(settings, store.query)
        sink([PtrResult("2001:db8::1", AWKWARD_TEXT, 1_733_380_000, 2**32 - 1, AWKWARD_TEXT, "GR"),
              PtrResult("192.0.2.1", "gw.example.", 1_733_380_001)])
        read = _read_back(store, BY_TABLE["ptr_cache"], "ptr_writer")
        assert read == sorted([[_expect("String", "2001:db8::1"), _expect("String", AWKWARD_TEXT), "1733380000",
                                "4294967295", _expect("String", AWKWARD_TEXT), _expect("String", "GR")],
                               [_expect("String", "192.0.2.1"), _expect("String", "gw.example."), "1733380001", "0",
                                "", ""]])
    finally:
        store.query("DROP DATABASE ptr_writer", "TSV")


# --------------------------------------------------------------------------- the migrations


def _columns(store: EmbeddedStore, database: str, table: str) -> list[list[str]]:
    return _rows(store, "SELECT name, type, position, default_kind, default_expression, compression_codec, comment"
                        f" FROM system.columns WHERE database = '{database}' AND table = '{table}' ORDER BY position")


def _table_facts(store: EmbeddedStore, database: str, table: str) -> list[list[str]]:
    return _rows(store, "SELECT engine_full, sorting_key, partition_key, primary_key FROM system.tables"
                        f" WHERE database = '{database}' AND name = '{table}'")


def test_migrated_schema_has_exactly_the_described_columns(store: EmbeddedStore) -> None:
    try:
        settings = StoreSettings(path="unused", database="migrated", ttl_days=30)

        def execute(sql: str) -> None:
            store.query(sql, "TSV")

        applied = schema.migrate(settings, execute, lambda sql: _rows(store, sql))
        assert applied == [m.version for m in schema.MIGRATIONS]
        have = {r[0] for r in _rows(store, "SELECT name FROM system.tables WHERE database = 'migrated'")}
        described = [*TABLES, *(schema.rollup_description(settings.table, r) for r in schema.ROLLUPS),
                     *(schema.who_description(settings.table, r, w) for r in schema.WHO_STEPS for w in schema.WHO_ROLLUPS)]
        assert {t.name for t in described} <= have
        for table in described:
            columns = _columns(store, "migrated", table.name)
            assert [(c[0], c[1], c[4]) for c in columns] == [(c.name, c.ch_type, c.default) for c in table.columns]
            codecs = [re.findall(r"(\w+)(?:\([^()]*\))?", c[5].removeprefix("CODEC(").removesuffix(")"))
                      for c in columns]
            assert codecs == [re.findall(r"(\w+)(?:\([^()]*\))?", c.codec) for c in table.columns], table.name
            [[_engine, sorting, partition, _primary]] = _table_facts(store, "migrated", table.name)
            assert sorting == table.order_by.strip("()") and partition == table.partition_by, table.name
        logged = _rows(store, "SELECT version, description FROM migrated.schema_migrations ORDER BY version")
        assert logged == [[str(m.version), m.description] for m in schema.MIGRATIONS]
    finally:
        store.query("DROP DATABASE IF EXISTS migrated", "TSV")


# The DDL text each migration ran before the tables were described (e303480), for a
# StoreSettings `s`: a database created then has exactly these tables.
def _ttl(column: str, days: int) -> str:
    return f"\nTTL {column} + toIntervalDay({days})" if days > 0 else ""


def _old_rollup(r: schema.Rollup) -> Callable[[StoreSettings], str]:
    def ddl(s: StoreSettings) -> str:
        columns = [*(schema.column_ddl(BY_NAME[d]) for d in schema.ROLLUP_DIMENSIONS), "service_port UInt16",
                   "bytes UInt64", "packets UInt64", "flows UInt64"]
        return (
            f"CREATE TABLE IF NOT EXISTS {s.database}.{s.table}_{r.suffix} (\n"
            "  timestamp DateTime CODEC(DoubleDelta, ZSTD(1)),\n  " + ",\n  ".join(columns)
            + "\n)\nENGINE = SummingMergeTree((bytes, packets, flows))"
            + f"\nPARTITION BY {r.partition}\nORDER BY (timestamp, {', '.join(schema.ROLLUP_DIMENSIONS)}, service_port)"
            + _ttl("timestamp", s.ttl_days * r.ttl_factor))

    return ddl


OLD_DDL: dict[str, Callable[[StoreSettings], str]] = {
    "schema_migrations": lambda s: (
        f"CREATE TABLE IF NOT EXISTS {s.database}.schema_migrations (\n"
        "  version UInt32, description String, applied_at DateTime DEFAULT now()\n"
        ") ENGINE = MergeTree ORDER BY version"),
    "ptr_cache": lambda s: (
        f"CREATE TABLE IF NOT EXISTS {s.database}.ptr_cache (\n"
        "  ip String, ptr String, updated_at DateTime DEFAULT now(),\n"
        "  asn UInt32 DEFAULT 0, asn_name String DEFAULT '', country String DEFAULT ''\n"
        ") ENGINE = ReplacingMergeTree(updated_at) ORDER BY ip SETTINGS index_granularity = 8192"),
    "detections": lambda s: (
        f"CREATE TABLE IF NOT EXISTS {s.database}.detections (\n"
        "  detected_at DateTime64(3) CODEC(Delta, ZSTD(1)),\n  rule LowCardinality(String),\n"
        "  key LowCardinality(String),\n  address IPv6,\n  dst_addr Nullable(IPv6),\n  dst_port Nullable(UInt16),\n"
        "  window_s Float32,\n  flows UInt64,\n  packets UInt64,\n  bytes UInt64,\n  pps Float64,\n  bps Float64,\n"
        "  syn_ratio Float32,\n  unique_dst_ips Nullable(UInt32),\n  unique_dst_ports Nullable(UInt32),\n"
        "  unique_src_ips Nullable(UInt32),\n  first_seen DateTime,\n  last_seen DateTime,\n"
        "  anomaly_score Nullable(Float32),\n  actions Array(LowCardinality(String)),\n  blackhole Bool,\n"
        "  samples String CODEC(ZSTD(3))\n"
        ")\nENGINE = MergeTree\nPARTITION BY toYYYYMM(detected_at)\nORDER BY (rule, detected_at)"
        + (f"\nTTL toDateTime(detected_at) + toIntervalDay({int(s.ttl_days)})" if s.ttl_days else "")),
    "anomaly_scores": lambda s: (
        f"CREATE TABLE IF NOT EXISTS {s.database}.anomaly_scores (\n"
        "  ts DateTime CODEC(DoubleDelta, ZSTD(1)),\n  window_s UInt32,\n  src_addr IPv6,\n  score Float32,\n"
        "  exporter_address IPv6,\n  features Map(String, Float32)\n"
        ")\nENGINE = MergeTree\nPARTITION BY toYYYYMMDD(ts)\nORDER BY (ts, src_addr)"
        + (f"\nTTL ts + toIntervalDay({int(s.ttl_days)})" if s.ttl_days else "")),
    "blackhole_events": lambda s: (
        f"CREATE TABLE IF NOT EXISTS {s.database}.blackhole_events (\n"
        "  ts DateTime64(3) CODEC(Delta, ZSTD(1)),\n  action LowCardinality(String),\n  prefix String,\n"
        "  next_hop String,\n  communities Array(String),\n  rule String,\n  reason String,\n"
        "  expires_at Nullable(DateTime),\n  dry_run UInt8,\n  source LowCardinality(String)\n"
        ")\nENGINE = MergeTree\nPARTITION BY toYYYYMM(ts)\nORDER BY (ts, prefix)"
        + _ttl("toDateTime(ts)", s.ttl_days * schema.ROLLUPS[-1].ttl_factor)),
    "collector_stats": lambda s: (
        f"CREATE TABLE IF NOT EXISTS {s.database}.collector_stats (\n"
        "  ts DateTime CODEC(DoubleDelta, ZSTD(1)),\n  exporter_address IPv6,\n  metric LowCardinality(String),\n"
        "  value Float64 CODEC(Gorilla, ZSTD(1))\n"
        ")\nENGINE = MergeTree\nPARTITION BY toYYYYMM(ts)\nORDER BY (metric, exporter_address, ts)"
        + _ttl("ts", s.ttl_days * schema.ROLLUPS[1].ttl_factor)),
    **{f"flows_{r.suffix}": _old_rollup(r) for r in schema.ROLLUPS},
    "exporter_interfaces": lambda s: (
        f"CREATE TABLE IF NOT EXISTS {s.database}.exporter_interfaces (\n"
        "  ts DateTime,\n  exporter_address IPv6,\n  ifindex UInt32,\n  name String,\n  alias String,\n"
        "  speed_bps UInt64\n"
        ")\nENGINE = ReplacingMergeTree(ts)\nORDER BY (exporter_address, ifindex)"),
}


def _new_ddl(s: StoreSettings, table: str) -> str:
    """The statement creating `table` among what the migrations run now."""
    statements = [*schema.create_migrations_table(s), *(sql for m in schema.MIGRATIONS for sql in m.statements(s))]
    [found] = [sql for sql in statements if sql.startswith(f"CREATE TABLE IF NOT EXISTS {s.database}.{table} (")]
    return found


@pytest.mark.parametrize("ttl_days", [0, 30])
def test_old_migrations_made_the_same_tables(store: EmbeddedStore, ttl_days: int) -> None:
    assert set(OLD_DDL) == {t.name for t in DESCRIBED} - {t.name for t in WHO_DESCRIBED}  # made after e303480
    old = StoreSettings(path="unused", database=f"old_way_{ttl_days}", ttl_days=ttl_days)
    new = StoreSettings(path="unused", database=f"new_way_{ttl_days}", ttl_days=ttl_days)
    for database in (old.database, new.database):
        store.query(f"CREATE DATABASE IF NOT EXISTS {database}", "TSV")
    try:
        for name, ddl in OLD_DDL.items():
            store.query(ddl(old), "TSV")
            store.query(_new_ddl(new, name), "TSV")
            assert _columns(store, old.database, name) == _columns(store, new.database, name), name
            assert _table_facts(store, old.database, name) == _table_facts(store, new.database, name), name
    finally:
        for database in (old.database, new.database):
            store.query(f"DROP DATABASE IF EXISTS {database}", "TSV")
