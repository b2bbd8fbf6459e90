"""The schema on the real engine: the original names, migrations, rollups, ptr_cache."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from support import sample_batch

from appliance.flowenricher.columns import ALIASES, COLUMNS, Column, Kind
from appliance.flowenricher.errors import ConfigError
from appliance.flowenricher.storage import schema
from appliance.flowenricher.storage.embedded import EmbeddedStore
from appliance.flowenricher.storage.settings import StoreSettings

# The columns of the original pmacct.flows table (examples/README.md).
ORIGINAL_COLUMNS = (
    "timestamp_start", "proto", "tcpflags", "tos", "src_host", "src_port", "src_host_country",
    "dst_host", "dst_port", "dst_host_country", "peer_src_as", "peer_dst_as", "as_path", "packets",
    "bytes", "peer_dst_as_name", "peer_src_as_name", "dst_as", "ingested_at", "local_pref",
    "input_interface", "output_interface", "input_interface_name", "output_interface_name",
    "flow_direction", "ip_protocol",
)  # fmt: skip

TYPICAL_QUERY = """
SELECT timestamp_start, src_host, dst_host, peer_src_as, peer_dst_as, as_path, dst_as,
       src_host_country, peer_dst_as_name
FROM pmacct.flows ORDER BY ingested_at DESC LIMIT 10;
"""


@pytest.fixture
def open_embedded(tmp_path: Path) -> Iterator[list[EmbeddedStore]]:
    """Stores opened by a test, closed after it (one data directory per test)."""
    opened: list[EmbeddedStore] = []
    yield opened
    for store in opened:
        store.close()


def _open(opened: list[EmbeddedStore], settings: StoreSettings) -> EmbeddedStore:
    store = EmbeddedStore.open(settings)
    opened.append(store)
    return store


def _rows(store: EmbeddedStore, sql: str) -> list[list[str]]:
    return [line.split("\t") for line in store.query(sql, "TSV").decode().splitlines()]


def test_original_table_names_and_typical_query(tmp_path: Path, open_embedded: list[EmbeddedStore]) -> None:
    store = _open(open_embedded, StoreSettings(path=str(tmp_path), database="pmacct", table="flows"))
    store.migrate()
    store.insert(sample_batch(20))
    assert _rows(store, f"SELECT count() FROM (SELECT {', '.join(ORIGINAL_COLUMNS)} FROM pmacct.flows)") == [
        ["20"]
    ]
    result = json.loads(store.query(TYPICAL_QUERY, "JSON"))
    assert result["rows"] == 10
    assert [m["name"] for m in result["meta"]] == [
        "timestamp_start",
        "src_host",
        "dst_host",
        "peer_src_as",
        "peer_dst_as",
        "as_path",
        "dst_as",
        "src_host_country",
        "peer_dst_as_name",
    ]
    types = {m["name"]: m["type"] for m in result["meta"]}
    assert (types["src_host"], types["as_path"]) == ("String", "Array(String)")


def test_flows_table_derives_from_columns(tmp_path: Path, open_embedded: list[EmbeddedStore]) -> None:
    settings = StoreSettings(path=str(tmp_path), ttl_days=30, partition_by="toYYYYMM(timestamp_start)")
    store = _open(open_embedded, settings)
    store.migrate()
    described = _rows(
        store,
        "SELECT name, type, default_kind, compression_codec FROM system.columns"
        " WHERE database = 'flowenricher' AND table = 'flows' ORDER BY position",
    )
    stored = [(name, ch_type, codec) for name, ch_type, kind, codec in described if kind != "ALIAS"]
    assert stored == [(c.name, c.ch_type, f"CODEC({c.codec})" if c.codec else "") for c in COLUMNS]
    assert [name for name, _, kind, _ in described if kind == "ALIAS"] == list(ALIASES)
    [[partition_key, sorting_key, create]] = _rows(
        store,
        "SELECT partition_key, sorting_key, create_table_query FROM system.tables"
        " WHERE database = 'flowenricher' AND name = 'flows'",
    )
    assert partition_key == "toYYYYMM(timestamp_start)"
    assert sorting_key == "toStartOfHour(timestamp_start), exporter_address, timestamp_start"
    assert "TTL received_at + toIntervalDay(30)" in create


def test_ttl_zero_keeps_flows_forever(tmp_path: Path, open_embedded: list[EmbeddedStore]) -> None:
    store = _open(open_embedded, StoreSettings(path=str(tmp_path), ttl_days=0))
    store.migrate()
    creates = _rows(store, "SELECT create_table_query FROM system.tables WHERE database = 'flowenricher'")
    assert creates and not any(" TTL " in c[0] for c in creates)


def test_migrate_twice_is_a_no_op(tmp_path: Path, open_embedded: list[EmbeddedStore]) -> None:
    store = _open(open_embedded, StoreSettings(path=str(tmp_path)))
    assert store.migrate() == [m.version for m in schema.MIGRATIONS]
    tables = _rows(
        store, "SELECT name, create_table_query FROM system.tables WHERE database = 'flowenricher'"
    )
    assert store.migrate() == []
    assert (
        _rows(store, "SELECT name, create_table_query FROM system.tables WHERE database = 'flowenricher'")
        == tables
    )
    assert _rows(store, "SELECT version FROM flowenricher.schema_migrations ORDER BY version") == [
        [str(m.version)] for m in schema.MIGRATIONS]


def test_migrations_survive_a_restart(tmp_path: Path) -> None:
    store = EmbeddedStore.open(StoreSettings(path=str(tmp_path)))
    store.migrate()
    store.insert(sample_batch(10))
    store.close()
    store = EmbeddedStore.open(StoreSettings(path=str(tmp_path)))
    try:
        assert store.migrate() == []
        assert _rows(store, "SELECT count() FROM flowenricher.flows") == [["10"]]
    finally:
        store.close()


def test_missing_columns_are_added_in_place(
    tmp_path: Path, open_embedded: list[EmbeddedStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An installation from before a column existed gets it, after its predecessor in COLUMNS."""
    store = _open(open_embedded, StoreSettings(path=str(tmp_path)))
    store.migrate()
    store.insert(sample_batch(5))
    store.query("ALTER TABLE flowenricher.flows DROP COLUMN dst_vlan")
    store.query("ALTER TABLE flowenricher.flows DROP COLUMN src_host")  # an alias, too
    new = Column("dst_asn_org_id", "UInt32", Kind.UINT, "a column added later", "T64, ZSTD(1)", "<u4")
    position = [c.name for c in COLUMNS].index("dst_as") + 1
    monkeypatch.setattr(schema, "COLUMNS", (*COLUMNS[:position], new, *COLUMNS[position:]))
    assert store.migrate() == []
    names = [
        r[0]
        for r in _rows(
            store,
            "SELECT name FROM system.columns"
            " WHERE database = 'flowenricher' AND table = 'flows' ORDER BY position",
        )
    ]
    assert names[names.index("src_vlan") + 1] == "dst_vlan"
    assert names[names.index("dst_as") + 1] == "dst_asn_org_id"
    assert "src_host" in names
    # Old rows read the new column as its default; the alias works again.
    assert _rows(store, "SELECT sum(dst_asn_org_id), countIf(src_host != '') FROM flowenricher.flows") == [
        ["0", "5"]
    ]
    [[codec]] = _rows(
        store,
        "SELECT compression_codec FROM system.columns"
        " WHERE database = 'flowenricher' AND table = 'flows' AND name = 'dst_asn_org_id'",
    )
    assert codec == "CODEC(T64, ZSTD(1))"
    assert store.migrate() == []


def test_rollups_follow_inserts(tmp_path: Path, open_embedded: list[EmbeddedStore]) -> None:
    store = _open(open_embedded, StoreSettings(path=str(tmp_path)))
    store.migrate()
    batch = sample_batch(5000, seed=4)
    store.insert(batch)
    store.insert(batch)
    total = [str(2 * batch.n), str(2 * int(batch["bytes"].sum())), str(2 * int(batch["packets"].sum()))]
    for rollup in schema.ROLLUPS:
        table = schema.rollup_table(store.settings, rollup)
        assert _rows(store, f"SELECT sum(flows), sum(bytes), sum(packets) FROM {table}") == [total], table
    # One bucket per step, service ports folded above 1023.
    assert _rows(store, "SELECT uniqExact(timestamp) FROM flowenricher.flows_1h") == [["1"]]
    assert _rows(store, "SELECT max(service_port) FROM flowenricher.flows_1m") == [["443"]]
    per_country = _rows(
        store,
        "SELECT src_host_country, sum(flows) FROM flowenricher.flows_5m GROUP BY 1 ORDER BY 1",
    )
    countries, counts = np.unique(np.array(batch["src_host_country"].strings()), return_counts=True)
    assert per_country == [[c, str(2 * n)] for c, n in zip(countries.tolist(), counts.tolist(), strict=True)]
    # Each rollup's step_s (which the API and the dashboards' range variables take) is its
    # bucket's length: the engine's bucket of the step's last second and of the next one.
    day = 1_796_601_600  # a midnight (UTC)
    for r in schema.ROLLUPS:
        assert _rows(store, f"SELECT toUnixTimestamp({r.bucket}(toDateTime({day + r.step_s - 1}, 'UTC'))), "
                            f"toUnixTimestamp({r.bucket}(toDateTime({day + r.step_s}, 'UTC')))") == \
            [[str(day), str(day + r.step_s)]], r.suffix


def test_every_table_a_flow_insert_writes_has_the_small_compression_blocks(
        tmp_path: Path, open_embedded: list[EmbeddedStore]) -> None:
    """Migration 12 (schema.WRITE_BLOCKS): the flows table, the rollups and the who rollups,
    as the engine reports their settings; the other tables keep the defaults."""
    store = _open(open_embedded, StoreSettings(path=str(tmp_path)))
    store.migrate()
    written = {t.split(".", 1)[1] for t in schema.insert_tables(store.settings)}
    assert {"flows", "flows_1m", "flows_5m", "flows_1h", "flows_1m_top_src_hosts", "flows_1h_top_scanners"} <= written
    assert len(written) == 1 + len(schema.ROLLUPS) + len(schema.WHO_STEPS) * len(schema.WHO.rollups)
    wanted = ", ".join(f"{k} = {v}" for k, v in schema.WRITE_BLOCKS.items())
    for name, create in _rows(store, "SELECT name, create_table_query FROM system.tables "
                                     "WHERE database = 'flowenricher' AND engine LIKE '%MergeTree'"):
        assert (wanted in create) == (name in written), (name, create[-300:])
    store.insert(sample_batch(1000, seed=6))
    assert _rows(store, "SELECT count() FROM flowenricher.flows") == [["1000"]]


def test_who_rollups_follow_inserts_within_their_cap(tmp_path: Path, open_embedded: list[EmbeddedStore]) -> None:
    """Below the cap, every "who" rollup holds all the bytes of the flows at every step;
    a block with more distinct sources than WHO_CAP in one bucket keeps WHO_CAP rows per
    bucket, exporter and direction, the largest ones, with their bytes whole."""
    store = _open(open_embedded, StoreSettings(path=str(tmp_path)))
    store.migrate()
    batch = sample_batch(5000, seed=4)
    store.insert(batch)
    total = [[str(batch.n), str(int(batch["bytes"].sum()))]]
    inbound = batch["flow_direction"] == 1
    assert 0 < inbound.sum() < batch.n
    for r in schema.WHO_STEPS:
        for w in schema.WHO_ROLLUPS:
            table = schema.who_table(store.settings, r, w)
            if w.summed:
                assert _rows(store, f"SELECT sum(flows), sum(bytes) FROM {table}") == total, table
            else:  # the scanners: inbound flows only
                assert _rows(store, f"SELECT sum(flows) FROM {table}") == [[str(int(inbound.sum()))]], table
    many = sample_batch(3 * schema.WHO_CAP, seed=5, start=int(batch["timestamp_start"].min()) + 7200)
    many["timestamp_start"] = np.full(many.n, many["timestamp_start"][0], np.uint32)  # one minute
    many["exporter_address"] = np.repeat(many["exporter_address"][:1], many.n, axis=0)
    many["flow_direction"] = np.ones(many.n, np.uint8)
    many["src_addr"] = np.repeat(many["src_addr"][:1], many.n, axis=0)
    many["src_addr"][:, 12:14] = np.arange(many.n, dtype=">u2").view(np.uint8).reshape(-1, 2)  # all distinct
    many["bytes"] = np.arange(1, many.n + 1, dtype=np.uint64) * 1000
    store.insert(many)
    minute = f"timestamp = toStartOfMinute(toDateTime({int(many['timestamp_start'][0])}))"
    table = schema.who_table(store.settings, schema.ROLLUPS[0], schema.WHO_ROLLUPS[0])
    rows = _rows(store, f"SELECT count(), uniqExact(src_addr), min(bytes), sum(bytes) FROM {table} WHERE {minute}")
    kept = np.sort(many["bytes"])[-schema.WHO_CAP:]
    assert rows == [[str(schema.WHO_CAP), str(schema.WHO_CAP), str(int(kept[0])), str(int(kept.sum()))]]
    # a coarser step sums what the finest kept, rows and bytes, with no cap of its own: a
    # block of 3 minutes with WHO_CAP sources each, all distinct, keeps them all at 1h
    spread = many.take(np.arange(many.n))
    hour = (int(many["timestamp_start"][0]) // 3600 + 1) * 3600
    spread["timestamp_start"] = (hour + np.arange(spread.n) % 3 * 60).astype(np.uint32)
    store.insert(spread)
    finest, coarsest = (schema.who_table(store.settings, r, schema.WHO_ROLLUPS[0]) for r in (schema.WHO_STEPS[0],
                                                                                             schema.WHO_STEPS[-1]))
    per_host = "SELECT timestamp >= toDateTime({}), src_addr, sum(bytes) FROM {} GROUP BY 1, src_addr ORDER BY 1, src_addr"
    assert _rows(store, per_host.format(hour, coarsest)) == _rows(store, per_host.format(hour, finest))
    assert _rows(store, f"SELECT count() FROM {coarsest} WHERE timestamp = toDateTime({hour})") == [
        [str(spread.n)]]


def test_a_store_made_with_5m_who_rollups_ends_as_a_new_one(tmp_path: Path, open_embedded: list[EmbeddedStore],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A store whose migrations 8 and 9 made the "who" rollups at 1m, 5m and 1h (as before
    migration 10, rebuilt here by setting WHO_STEPS back to every step; the coarser views'
    queries are today's) is brought by
    migrations 10 and 11 to the tables and views of a store made now, statement for
    statement; its rows stay, and flows inserted before and after reach every kept step once."""
    def tables(store: EmbeddedStore) -> list[list[str]]:
        database = store.settings.database
        return [[name, create.replace(f"{database}.", "DB.")] for name, create in _rows(
            store, f"SELECT name, create_table_query FROM system.tables WHERE database = '{database}' ORDER BY name")]

    new = _open(open_embedded, StoreSettings(path=str(tmp_path), database="new"))
    new.migrate()
    with monkeypatch.context() as m:
        m.setattr(schema, "WHO_STEPS", schema.ROLLUPS)
        m.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:9])
        old = _open(open_embedded, StoreSettings(path=str(tmp_path), database="old"))
        assert old.migrate() == list(range(1, 10))
        five = {schema.who_description("flows", schema.ROLLUPS[1], w, schema.WHO_V8).name
                for w in schema.WHO_V8.rollups}
        assert five <= {row[0] for row in tables(old)}
    before, after = sample_batch(3000, seed=21), sample_batch(2000, seed=22)
    old.insert(before)
    assert old.migrate() == [10, 11, 12]
    old.insert(after)
    assert tables(old) == tables(new)
    assert not five & {row[0] for row in tables(old)}
    assert schema.ROLLUPS[1] not in schema.WHO_STEPS
    for r in schema.WHO_STEPS:
        for w in schema.WHO_ROLLUPS:
            if w.summed:
                table = schema.who_table(old.settings, r, w)
                assert _rows(old, f"SELECT sum(flows) FROM {table}") == [[str(before.n + after.n)]], table
    assert old.migrate() == []


def _v10_store(opened: list[EmbeddedStore], tmp_path: Path, database: str,
               monkeypatch: pytest.MonkeyPatch) -> EmbeddedStore:
    """A store as migrations 1 to 10 made it (the "who" rollups of schema.WHO_V8), with
    flows in it: 4,000 of a few hours, and a minute of 2,000 inbound flows from 40 sources
    to many targets (scanners)."""
    with monkeypatch.context() as m:
        m.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:10])
        store = _open(opened, StoreSettings(path=str(tmp_path), database=database))
        assert store.migrate() == list(range(1, 11))
    store.insert(sample_batch(4000, seed=31))
    scan = sample_batch(2000, seed=32)
    scan["flow_direction"] = np.ones(scan.n, np.uint8)
    scan["src_addr"] = np.repeat(scan["src_addr"][:40], 50, axis=0)
    store.insert(scan)
    return store


def _who_content(store: EmbeddedStore, g: schema.WhoGeneration) -> dict[str, list[list[str]]]:
    """Each "who" rollup of generation `g` at every step, summed over WHO's keys (the
    columns both generations have): what migration 11 must keep."""
    out = {}
    for r in schema.WHO_STEPS:
        for w, kept in zip(g.rollups, schema.WHO.rollups, strict=True):
            keys = ", ".join(n for n in schema.who_description("flows", r, kept).names
                             if n not in {m.name for m in kept.measures})
            measures = ("uniqMerge(targets), uniqMerge(ports), sum(flows), sum(syn_only)" if not w.summed else
                        "sum(bytes), sum(packets), sum(flows)")
            out[f"{r.suffix} {w.name}"] = _rows(store, f"SELECT {keys}, {measures} FROM "
                                                       f"{schema.who_table(store.settings, r, w, g)} "
                                                       f"GROUP BY {keys} ORDER BY {keys}")
    return out


def test_migration_11_keeps_the_who_rows_without_the_other_sides_as(
        tmp_path: Path, open_embedded: list[EmbeddedStore], monkeypatch: pytest.MonkeyPatch) -> None:
    """Migration 11 moves a store's "who" rollups to tables without ``src_as``/``dst_as``
    among their keys (schema.WHO_FILTERS): every row of the old tables is in the new ones,
    summed over the new keys (the scanners' distinct counts merged), the old tables and
    views are gone, and flows stored afterwards reach the new ones through their views."""
    store = _v10_store(open_embedded, tmp_path, "v10", monkeypatch)
    before = _who_content(store, schema.WHO_V8)
    assert all(before.values()) and len(before) == 2 * len(schema.WHO_ROLLUPS)
    assert store.migrate() == [11, 12]
    assert _who_content(store, schema.WHO) == before
    names = {row[0] for row in _rows(store, "SELECT name FROM system.tables WHERE database = 'v10'")}
    old = {schema.who_description("flows", r, w, schema.WHO_V8).name for r in schema.WHO_STEPS
           for w in schema.WHO_V8.rollups}
    assert not {n for n in names if n in old or n.removesuffix("_mv") in old}
    more = sample_batch(1000, seed=33)
    store.insert(more)
    table = schema.who_table(store.settings, schema.WHO_STEPS[-1], schema.WHO_ROLLUPS[0])
    assert _rows(store, f"SELECT sum(flows) FROM {table}") == [[str(4000 + 2000 + more.n)]]
    assert store.migrate() == []


@pytest.mark.parametrize("stop", [1, 3, 5, 6, 7, 8, 9, 10, 20, 60])
def test_migration_11_stopped_midway_resumes_without_loss_or_double(
        tmp_path: Path, open_embedded: list[EmbeddedStore], monkeypatch: pytest.MonkeyPatch, stop: int) -> None:
    """Migration 11 stopped after `stop` of its statements (its statements run here up to
    there, then no more, as when the process is killed between two; the migration is
    not recorded) and run again from the start ends as an uninterrupted one: a
    rollup's copy is redone from empty tables unless its views exist, so no row is
    copied twice and none is missing.  The stops fall on each kind of statement of
    the first rollup (tables made, emptied, copied, views made, old ones dropped) and
    in later rollups."""
    store = _v10_store(open_embedded, tmp_path, "v10", monkeypatch)
    before = _who_content(store, schema.WHO_V8)
    plan = schema.who_rebuilt(store.settings, store._rows)
    assert len(plan) > 60
    for sql in plan[:stop]:
        store._execute(sql)
    assert store.migrate() == [11, 12]
    assert _who_content(store, schema.WHO) == before


def test_scanner_counts_merge_across_blocks_and_steps(tmp_path: Path, open_embedded: list[EmbeddedStore]) -> None:
    """One source's inbound flows split over three inserts in one minute: the scanners
    rollup counts its distinct targets and ports over all of them at every step, once
    its parts are merged (the uniq states merge: a SummingMergeTree given its summed
    columns would keep one block's state), and leaves outbound flows out."""
    store = _open(open_embedded, StoreSettings(path=str(tmp_path)))
    store.migrate()
    scanners = next(w for w in schema.WHO_ROLLUPS if w.name == "scanners")
    minute = int(time.time()) // 3600 * 3600 - 3600  # inside the tables' TTL
    for block in range(3):
        batch = sample_batch(40, seed=10)  # one source, exporter, interface pair, AS pair, country
        batch["timestamp_start"] = np.full(batch.n, minute, np.uint32)
        for column in ("exporter_address", "src_addr", "dst_addr", "input_interface", "output_interface", "src_as",
                       "dst_as"):
            batch[column] = np.repeat(batch[column][:1], batch.n, axis=0)
        batch["src_host_country"] = batch["src_host_country"].take(np.zeros(batch.n, np.intp))
        batch["flow_direction"] = np.where(np.arange(batch.n) < 30, 1, 2).astype(np.uint8)
        batch["dst_addr"][:, 15] = np.arange(batch.n) % 20 + 20 * block  # 20 targets a block, 60 in all
        batch["dst_port"] = (np.arange(batch.n) % 5 + 5 * block).astype(np.uint16)  # 5 a block, 15 in all
        batch["proto"] = np.full(batch.n, 6, np.uint8)
        batch["tcpflags"] = np.where(np.arange(batch.n) % 2 == 0, 0x02, 0x12).astype(np.uint8)
        store.insert(batch)
    for r in schema.WHO_STEPS:
        table = schema.who_table(store.settings, r, scanners)
        store.query(f"OPTIMIZE TABLE {table} FINAL")
        rows = _rows(store, f"SELECT count(), uniqMerge(targets), uniqMerge(ports), sum(flows), sum(syn_only) FROM {table}")
        assert rows == [["1", "60", "15", "90", "45"]], table


def test_ptr_cache_has_the_original_columns(tmp_path: Path, open_embedded: list[EmbeddedStore]) -> None:
    store = _open(open_embedded, StoreSettings(path=str(tmp_path)))
    store.migrate()
    store.query(
        "INSERT INTO flowenricher.ptr_cache (ip, ptr, asn, asn_name, country)"
        " VALUES ('1.2.3.4', 'a.b', 1, 'X', 'FR')"
    )
    rows = _rows(store, "SELECT ip, ptr, updated_at > 0, asn, asn_name, country FROM flowenricher.ptr_cache")
    assert rows == [["1.2.3.4", "a.b", "1", "1", "X", "FR"]]


def test_names_are_checked() -> None:
    with pytest.raises(
        ConfigError, match=re.escape("storage: database 'x; DROP' must be a plain identifier")
    ):
        StoreSettings(database="x; DROP")
