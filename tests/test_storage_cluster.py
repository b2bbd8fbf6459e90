"""The ClickHouse cluster layout (``clickhouse.cluster``): the migrations' DDL checked as
SQL by ClickHouse's own parser, its engines, Keeper paths and names asserted, and run on
the one-node cluster of tests/support/chdb_cluster.py as far as chDB allows:

* parsed (chDB's ``formatQuerySingleLine``): every statement, ON CLUSTER included;
* run with Replicated engines (in-process test Keeper, a child process): every CREATE,
  ON CLUSTER removed; the replicas' Keeper paths and names read back.  The ALTERs and
  TRUNCATEs of Replicated tables are refused there (the replicas stay read-only): parsed only;
* run with the plain variant of each engine: the whole migration, twice, then inserts
  through the Distributed flows table (deduplicated by token), and the API's answers,
  which must equal the answers of one server holding the same flows.

The dashboards' queries run on this layout in tests/test_dashboards.py.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from support import sample_batch
from support.api import HOUR, make_env
from support.chdb_cluster import CLUSTER, REPLICA, SHARD, chdb_connect, local_statement, open_cluster_store
from support.clickhouse_http import ClickHouseHTTPStandIn

from appliance.flowenricher.columns import ALIASES, COLUMNS
from appliance.flowenricher.common.sql import string
from appliance.flowenricher.errors import StoreError
from appliance.flowenricher.storage import FlowStore, StoreSettings, open_store, schema
from appliance.flowenricher.storage.base import insert_settings
from appliance.flowenricher.storage.native import encode_block
from appliance.flowenricher.storage.server import ServerStore
from appliance.flowenricher.storage.tables import DETECTIONS, KEEPER_PATH, KEEPER_PATH_EVERYWHERE, TABLES, Layout

REPO = Path(__file__).resolve().parent.parent
SETTINGS = StoreSettings(host="ch-1.example.net", cluster=CLUSTER, database="fe", ttl_days=30)
ON = f" ON CLUSTER '{CLUSTER}'"


def cluster_statements(s: StoreSettings = SETTINGS) -> list[str]:
    """Everything the migrations can run on a cluster: the log, every migration, and the
    ALTERs adding every column to a flows table (local and Distributed) lacking them all."""
    added = [sql for table in schema.flow_tables(s) for sql in schema.missing_columns(s, [], table)]
    return [*schema.create_migrations_table(s), *(sql for m in schema.MIGRATIONS for sql in m.statements(s)), *added]


def described_names(s: StoreSettings = SETTINGS) -> set[str]:
    """The name of every table readers and writers use: the flows table, the described
    tables but the migrations' log, the rollups and the "who" rollups."""
    rollups = {schema.rollup_description(s.table, r).name for r in schema.ROLLUPS}
    who = {schema.who_description(s.table, r, w).name for r in schema.WHO_STEPS for w in schema.WHO_ROLLUPS}
    return {s.table, *(t.name for t in TABLES if not t.everywhere), *rollups, *who}


# --------------------------------------------------------------------------- the SQL


def test_every_cluster_statement_parses_and_keeps_on_cluster() -> None:
    conn = chdb_connect(":memory:")
    try:
        statements = cluster_statements()
        assert len(statements) > 60
        for sql in statements:
            formatted = conn.query(f"SELECT formatQuerySingleLine({string(sql)})", "TSV").bytes().decode().strip()
            if sql.startswith("INSERT INTO"):  # migration 11's copies: Distributed to Distributed, no DDL
                assert not re.search(r"_local\b|ON CLUSTER", formatted), sql
                assert "SETTINGS insert_distributed_sync = 1 SELECT" in formatted, sql  # on every shard when it returns
                continue
            assert f" ON CLUSTER {CLUSTER} " in formatted.replace("\\'", "'") + " ", sql
    finally:
        conn.close()


_CREATE = re.compile(r"^CREATE TABLE IF NOT EXISTS fe\.(\w+) ON CLUSTER '\w+' (?:\(|AS fe\.(\w+)\nENGINE = (.*)$)", re.S)


def test_engines_keeper_paths_and_names() -> None:
    statements = [sql for sql in cluster_statements() if not sql.startswith("INSERT INTO")]
    assert all(ON in sql for sql in statements), [sql for sql in statements if ON not in sql]
    local, distributed = {}, {}
    for sql in statements:
        m = _CREATE.match(sql)
        if m and m.group(2):
            distributed[m.group(1)] = (m.group(2), m.group(3))
        elif m:
            local[m.group(1)] = re.search(r"\nENGINE = (.*?)\n", sql).group(1)  # type: ignore[union-attr]
    v8 = {schema.who_description("flows", r, w, schema.WHO_V8).name for r in schema.ROLLUPS
          for w in schema.WHO_V8.rollups}  # made by migrations 8 and 9, dropped by 10 and 11
    v8 = {n for n in v8 if n in distributed}
    assert len(v8) == len(schema.WHO_STEPS) * len(schema.WHO_V8.rollups)
    names = described_names() | v8
    assert set(distributed) == names
    assert set(local) == {f"{n}_local" for n in names} | {"schema_migrations"}
    sharded_path = f"'{KEEPER_PATH}', '{{replica}}'"
    assert KEEPER_PATH == "/clickhouse/tables/{shard}/{database}/{table}"
    for name, (over, engine) in distributed.items():
        assert over == f"{name}_local"
        key = re.escape(schema.FLOWS_SHARDING_KEY) if name == "flows" else r"cityHash64\(.+\)"
        assert re.fullmatch(rf"Distributed\('{CLUSTER}', 'fe', '{name}_local', {key}\)", engine), engine
        assert local[f"{name}_local"].startswith("Replicated") and sharded_path in local[f"{name}_local"]
    # the described engine's own arguments follow the Keeper path and replica name
    assert local["ptr_cache_local"] == f"ReplicatedReplacingMergeTree({sharded_path}, updated_at)"
    assert local["flows_1m_local"] == f"ReplicatedSummingMergeTree({sharded_path}, (bytes, packets, flows))"
    assert local["flows_local"] == local["detections_local"] == f"ReplicatedMergeTree({sharded_path})"
    # the log: one replication group across the cluster, no Distributed table
    assert local["schema_migrations"] == f"ReplicatedMergeTree('{KEEPER_PATH_EVERYWHERE}', '{{shard}}-{{replica}}')"
    # every view feeds a node's local table from that node's local rows
    views = [sql for sql in statements if sql.startswith("CREATE MATERIALIZED VIEW")]
    assert len(views) == len(schema.ROLLUPS) + 2 * len(schema.WHO_STEPS) * len(schema.WHO_ROLLUPS)  # WHO_V8's too
    for sql in views:
        m = re.match(rf"CREATE MATERIALIZED VIEW IF NOT EXISTS fe\.(\w+)_mv{ON} TO fe\.(\w+) AS\n.*\nFROM fe\.(\w+)\n",
                     sql, re.S)
        assert m and m.group(1) == m.group(2) and m.group(2).endswith("_local") and m.group(3).endswith("_local"), sql
    # deduplication of retried inserts: replicated windows on the tables a flow insert writes
    windows = [sql for sql in statements if "replicated_deduplication_window_seconds = 604800" in sql]
    assert len(windows) == len(schema.ROLLUPS) + 2 * len(schema.WHO_STEPS) * len(schema.WHO_ROLLUPS) + 1
    # and one server's statements name none of it
    one = StoreSettings(database="fe")
    plain = [*schema.create_migrations_table(one), *(sql for m in schema.MIGRATIONS for sql in m.statements(one))]
    assert not [sql for sql in plain if re.search(r"ON CLUSTER|Replicated|Distributed|_local\b", sql)]


@pytest.mark.parametrize(("order_by", "key"), [
    ("(rule, detected_at)", "cityHash64(rule, detected_at)"), ("ip", "cityHash64(ip)"),
    ("toDate(ts)", "cityHash64(toDate(ts))"), ("(toStartOfHour(ts), e)", "cityHash64(toStartOfHour(ts), e)"),
])
def test_sharding_key_hashes_the_sort_key(order_by: str, key: str) -> None:
    assert replace(DETECTIONS, order_by=order_by).sharding_key == key


def test_cluster_settings_are_checked() -> None:
    with pytest.raises(Exception, match="a cluster needs a ClickHouse server"):
        StoreSettings(cluster=CLUSTER)
    with pytest.raises(Exception, match="is not a cluster name"):
        StoreSettings(host="ch", cluster="two words")
    with pytest.raises(ValueError, match="Replicated variant"):
        Layout(CLUSTER).engine("Log")
    assert insert_settings(SETTINGS, "t")["insert_distributed_sync"] == 1
    assert "insert_distributed_sync" not in insert_settings(StoreSettings(), "t")


# --------------------------------------------------------------------------- Replicated engines, test Keeper

_KEEPER_CHILD = """
import json, os, sys
sys.path[:0] = [{tests!r}, {repo!r}]
from pathlib import Path
from support.clickhouse_http import ClickHouseHTTPStandIn
from support.chdb_cluster import connect, local_statement
conn = connect(Path({path!r}), keeper=True)
out = {{"ran": [], "refused": []}}
for sql in json.loads(Path({statements!r}).read_text()):
    try:
        conn.query(local_statement(sql), "TSV")
        out["ran"].append(sql)
    except Exception as err:
        out["refused"].append([sql, str(err)[:300]])
rows = conn.query("SELECT table, zookeeper_path, replica_name FROM system.replicas WHERE database = 'fe'", "JSONCompact")
out["replicas"] = json.loads(rows.bytes())["data"]
print(json.dumps(out), flush=True)
os._exit(0)  # closing an engine with read-only replicas hangs (see support/chdb_cluster.py)
"""


def test_replicated_tables_are_created_with_keeper(tmp_path: Path) -> None:
    statements = cluster_statements()
    (tmp_path / "statements.json").write_text(json.dumps(statements))
    code = _KEEPER_CHILD.format(tests=str(REPO / "tests"), repo=str(REPO), path=str(tmp_path / "data"),
                                statements=str(tmp_path / "statements.json"))
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = child.communicate(timeout=300)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err[-2000:]
    result = json.loads(out)
    creates = [sql for sql in statements if sql.startswith("CREATE")]
    assert [sql for sql in result["ran"] if sql.startswith("CREATE")] == creates
    # what it refused: ALTERs and TRUNCATEs of Replicated tables, whose replicas stay read-only here
    assert result["refused"] and all(sql.startswith(("ALTER TABLE", "TRUNCATE TABLE")) and "_local" in sql
                                     and "TABLE_IS_READ_ONLY" in why for sql, why in result["refused"])
    replicas = {table: (path, replica) for table, path, replica in result["replicas"]}
    assert set(replicas) == {f"{n}_local" for n in described_names()} | {"schema_migrations"}
    for table, (path, replica) in replicas.items():
        if table == "schema_migrations":
            assert (path, replica) == ("/clickhouse/tables/fe/schema_migrations", f"{SHARD}-{REPLICA}")
        else:
            assert (path, replica) == (f"/clickhouse/tables/{SHARD}/fe/{table}", REPLICA)


# --------------------------------------------------------------------------- plain engines: migrations, inserts

START = int(time.time()) // HOUR * HOUR - 3 * HOUR
END = START + 2 * HOUR


def _one(store: FlowStore, sql: str) -> str:
    return store.query(sql, "TSV").decode().strip()


def test_migrations_inserts_and_deduplication_through_distributed_tables(tmp_path: Path) -> None:
    store = open_cluster_store(tmp_path / "data", database="fe")
    try:
        assert store.migrate() == [m.version for m in schema.MIGRATIONS]
        executed: list[str] = []
        run = store._execute

        def recorded(sql: str) -> None:
            executed.append(sql)
            run(sql)

        store._execute = recorded  # type: ignore[method-assign]
        assert store.migrate() == []  # the log is read back: nothing runs twice
        assert executed == []  # not even the log's CREATE: ON CLUSTER would wait for every node
        assert _one(store, "SELECT groupArray(version) FROM (SELECT version FROM fe.schema_migrations ORDER BY version)"
                    ) == str([m.version for m in schema.MIGRATIONS]).replace(" ", "")
        engines = dict(line.split("\t") for line in _one(
            store, "SELECT name, engine FROM system.tables WHERE database = 'fe'").splitlines())
        assert {engines[n] for n in described_names()} == {"Distributed"}
        columns = _one(store, "SELECT count() FROM system.columns WHERE database = 'fe' AND table = 'flows'")
        assert int(columns) == len(COLUMNS) + len(ALIASES)
        # Stand-in for the replicated window (Keeper): plain engines deduplicate by token
        # only with one server's window, set here on the same tables.
        for table in schema.deduplicated_tables(store.settings):
            store.query(f"ALTER TABLE {table} MODIFY SETTING non_replicated_deduplication_window = 100", "TSV")
        batch = sample_batch(2000, seed=3, start=START)
        block = encode_block(batch)
        store.insert_native(block, batch.n, "flows:0:0-99")
        store.insert_native(block, batch.n, "flows:0:0-99")  # a retry: stored once
        assert _one(store, "SELECT count() FROM fe.flows") == _one(store, "SELECT count() FROM fe.flows_local") == "2000"
        assert _one(store, "SELECT sum(flows) FROM fe.flows_1h") == "2000"
        assert _one(store, "SELECT sum(flows) FROM fe.flows_1h_top_src_hosts") == "2000"
        store.insert_native(block, batch.n, "flows:0:100-199")  # another block: stored
        assert _one(store, "SELECT count() FROM fe.flows") == "4000"
        # rows written by the side tables' writers go through their Distributed tables too
        store.query(DETECTIONS.insert_sql("fe", [_detection(END - 60)]), "TSV")
        assert _one(store, "SELECT count() FROM fe.detections_local") == "1"
    finally:
        store.close()


def test_the_server_store_inserts_through_the_distributed_table(tmp_path: Path) -> None:
    """The server backend (clickhouse-connect, over HTTP to the stand-in in front of the
    one-node cluster) sends the cluster's insert settings with the token, and a retry is
    stored once.  The schema is made first through the cluster store: the stand-in passes
    statements to chDB as they are, and chDB refuses ON CLUSTER; after that the server
    store's migrate runs no DDL at all (the log exists)."""
    path = tmp_path / "data"
    made = open_cluster_store(path, database="fe")
    try:
        made.migrate()
        for table in schema.deduplicated_tables(made.settings):  # stand-in for Keeper's window, as above
            made.query(f"ALTER TABLE {table} MODIFY SETTING non_replicated_deduplication_window = 100", "TSV")
    finally:
        made.close()
    config = path.parent / f"{path.name}-cluster.xml"
    with ClickHouseHTTPStandIn(f"{path}?config-file={config}") as ch:
        seen: list[dict[str, str]] = []
        execute = ch.execute

        def recorded(payload: bytes, params: dict[str, str]) -> tuple[bytes, dict[str, str]]:
            seen.append(params)
            return execute(payload, params)

        ch.execute = recorded  # type: ignore[method-assign]
        server = ServerStore(StoreSettings(host="127.0.0.1", port=ch.port, cluster=CLUSTER, database="fe",
                                           path=str(tmp_path / "server")))
        try:
            assert server.migrate() == []
            assert not [r for r in ch.requests if r.lstrip().upper().startswith(("CREATE", "ALTER"))]
            batch = sample_batch(1500, seed=5, start=START)
            block = encode_block(batch)
            server.insert_native(block, batch.n, "flows:1:0-49")
            server.insert_native(block, batch.n, "flows:1:0-49")
            assert _one(server, "SELECT count() FROM fe.flows_local") == "1500"
            assert _one(server, "SELECT sum(flows) FROM fe.flows_5m") == "1500"
        finally:
            server.close()
    inserts = [p for p in seen if p.get("insert_deduplication_token") == "flows:1:0-49"]
    assert len(inserts) == 2 and all(p.get("insert_distributed_sync") == "1" for p in inserts)


def test_a_cluster_refuses_one_servers_database(tmp_path: Path) -> None:
    one = open_store(StoreSettings(path=str(tmp_path / "data"), database="fe"))
    one.migrate()
    one.close()
    store = open_cluster_store(tmp_path / "data", database="fe")
    try:
        with pytest.raises(StoreError, match=r"fe\.flows exists as a MergeTree table \(made without a cluster\)"):
            store.migrate()
    finally:
        store.close()


def test_local_statement_is_what_each_node_runs() -> None:
    sql = (f"CREATE TABLE IF NOT EXISTS fe.x_local{ON} (a UInt8)\nENGINE = "
           f"ReplicatedSummingMergeTree('{KEEPER_PATH}', '{{replica}}', (a))\nORDER BY a")
    assert local_statement(sql) == sql.replace(ON, "")
    assert local_statement(sql, replicated=False).endswith("ENGINE = SummingMergeTree((a))\nORDER BY a")
    assert local_statement("x ReplicatedMergeTree('p', 'r')", replicated=False) == "x MergeTree()"


# --------------------------------------------------------------------------- the API on the Distributed tables


def _detection(at: int) -> dict[str, Any]:
    return {"detected_at": at, "rule": "syn_flood", "key": "dst", "address": "84.54.49.7", "dst_addr": None,
            "dst_port": None, "window_s": 60, "flows": 5000, "packets": 5000, "bytes": 300000, "pps": 83.0,
            "bps": 40000.0, "syn_ratio": 1.0, "unique_dst_ips": None, "unique_dst_ports": None, "unique_src_ips": 900,
            "first_seen": at - 60, "last_seen": at, "anomaly_score": None, "actions": ["alert"], "blackhole": False,
            "samples": "[]"}


API_DATABASE = "flowenricher"  # the API's config (support/api.py) names the default database

API_REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("/api/v1/flows/top", {"by": "src_host"}),
    ("/api/v1/flows/top", {"by": "dst_port", "metric": "packets", "limit": 5}),
    ("/api/v1/flows/top", {"by": "src_as"}),  # 1h rollup
    ("/api/v1/flows/top", {"by": "src_host_country", "from": START + 300, "to": END - 300}),  # 5m
    ("/api/v1/flows/top", {"by": "proto", "from": START + 60}),  # 1m
    ("/api/v1/flows/top", {"by": "dst_as", "direction": "inbound", "exporter": "10.0.0.1"}),
    ("/api/v1/flows/series", {}),
    ("/api/v1/flows/series", {"step": 600, "by": "dst_port", "limit": 2}),
    ("/api/v1/flows/series", {"step": 600, "by": "proto"}),
    ("/api/v1/exporters", {}),
    ("/api/v1/detections", {}),
]


def _answers(tmp_path: Path, store: FlowStore) -> list[Any]:
    for hour in range(2):
        store.insert(sample_batch(3000, seed=hour, start=START + hour * HOUR))
    store.query(DETECTIONS.insert_sql(API_DATABASE, [_detection(END - 600), _detection(END - 300)]), "TSV")
    tmp_path.mkdir()
    env = make_env(tmp_path, store, clock=lambda: float(END))
    answers = []
    for path, params in API_REQUESTS:
        response = env.client.get(path, params={"from": START, "to": END} | params, headers=env.headers(env.reader))
        assert response.status_code == 200, (path, params, response.text)
        answers.append(response.json())
    return answers


def test_the_api_answers_the_same_from_a_cluster(tmp_path: Path) -> None:
    """The API names tables as on one server; on a cluster those are the Distributed
    tables, and its answers over the same flows are the same."""
    one = open_store(StoreSettings(path=str(tmp_path / "one"), database=API_DATABASE))
    try:
        one.migrate()
        expected = _answers(tmp_path / "env-one", one)
    finally:
        one.close()
    store = open_cluster_store(tmp_path / "cluster", database=API_DATABASE)
    try:
        store.migrate()
        got = _answers(tmp_path / "env-cluster", store)
    finally:
        store.close()
    assert {a.get("source") for a in got} == {"flows", "1m", "5m", "1h", None}  # every table the API reads
    assert all(a.get("rows", a.get("points", a.get("exporters", a.get("detections")))) for a in got)
    assert got == expected
