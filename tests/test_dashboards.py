"""The Grafana dashboards shipped in roles/grafana: checked as Grafana would load them, and
every panel query and variable query run on the real schema in chDB, on one server and
on the cluster layout (the Distributed tables of clickhouse.cluster).

Grafana cannot be installed here, so each query goes through what Grafana and the
ClickHouse plugin would do to it (tests/support/grafana_macros.py: variables, then the
plugin's macros) and the resulting SQL runs on an embedded store migrated with the
appliance's own schema and filled with the generator's traffic of a small AS, enriched
the way the enrichment stages would.  Each answer must carry the columns its panel
reads (a table's organize transformation, a stat's field, a time series' time column,
a map's location field), and panels must not come back empty for data that is there.
Where a real Grafana is reachable (GRAFANA_URL, GRAFANA_TOKEN), one more test posts
every dashboard to it.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import jinja2
import numpy as np
import pytest
import yaml
from support.chdb_cluster import open_cluster_store
from support.grafana_macros import ALL, Selection, TemplateError, TimeRange, interpolate, interval_s, render

from appliance.flowenricher.batch import DictColumn, FlowBatch, ListColumn, ipv4_to_addr
from appliance.flowenricher.blackhole.events import BlackholeEvents
from appliance.flowenricher.generate.traffic import TrafficGenerator
from appliance.flowenricher.storage import StoreSettings, open_store, schema
from appliance.flowenricher.storage.base import FlowStore
from appliance.flowenricher.storage.tables import (
    ANOMALY_SCORES,
    COLLECTOR_STATS,
    DETECTIONS,
    EXPORTER_INTERFACES,
    PTR_CACHE,
    Table,
    split_top_level,
)

ROLE = Path(__file__).resolve().parents[1] / "roles" / "grafana"
DASHBOARDS = ROLE / "files" / "dashboards"
PROVISIONING = ROLE / "templates" / "provisioning"
GRAFANA_VERSION = "12.0"
SCHEMA_VERSION = 41  # what Grafana 12.0 writes; the role installs 12.0.x
PLUGIN = "grafana-clickhouse-datasource"
EXPECTED = {
    "flowenricher-overview", "flowenricher-peering", "flowenricher-geography", "flowenricher-interfaces",
    "flowenricher-security", "flowenricher-host", "flowenricher-health",
}
HOUR = 3600
NOW = int(time.time()) // 60 * 60
DATA_HOURS = 7
MY_ASN = 64500
EXPORTERS = ("10.0.0.1", "10.0.0.2")
COUNTRIES = ["US", "DE", "FR", "NL", "GB", "RU", "CN", "BR", "GR"]
CITIES = {"US": "Ashburn", "DE": "Frankfurt", "FR": "Paris", "NL": "Amsterdam", "GB": "London", "RU": "Moscow",
          "CN": "Beijing", "BR": "Sao Paulo", "GR": "Athens"}
UPLINKS = {1: (174, "COGENT-174"), 2: (6939, "HURRICANE"), 3: (8866, "GRIX")}  # ifIndex -> neighbour AS


# --------------------------------------------------------------------------- loading


def _load() -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted(DASHBOARDS.glob("*.json")):
        try:
            out[path.name] = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise AssertionError(f"{path}: not valid JSON: {err}") from err
    return out


def _grafana_filter() -> ModuleType:
    spec = importlib.util.spec_from_file_location("grafana_dashboards", ROLE / "filter_plugins" / "grafana_dashboards.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GRAFANA_FILTER = _grafana_filter()
# Not the default name: a table name the dashboards hard-coded would not be found in the store.
DATABASE = "fe_dashboards"
SHIPPED = _load()
# What the grafana role writes: each dashboard with its `database` constant set (as
# grafana_dashboard_database does at provisioning).
DASHBOARD_FILES = {name: GRAFANA_FILTER.dashboard_database(d, DATABASE) for name, d in SHIPPED.items()}
BY_UID = {d["uid"]: d for d in DASHBOARD_FILES.values()}


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # collapsed rows hold their panels
    return out


@dataclass(frozen=True)
class Target:
    file: str
    panel: dict[str, Any]
    target: dict[str, Any]

    @property
    def where(self) -> str:
        return f"{self.file} panel {self.panel['id']} {self.panel['title']!r} target {self.target['refId']}"


TARGETS = [Target(f, p, t) for f, d in DASHBOARD_FILES.items() for p in _panels(d) for t in p.get("targets", [])]


def _variables(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return list(dashboard.get("templating", {}).get("list", []))


def _walk(value: Any, path: str = "") -> Iterator[tuple[str, Any]]:
    yield path, value
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk(v, f"{path}[{i}]")


# --------------------------------------------------------------------------- provisioning

PROVISIONING_VARS = {
    "grafana_clickhouse_host": "127.0.0.1", "grafana_clickhouse_port": 8123, "grafana_clickhouse_protocol": "http",
    "grafana_clickhouse_secure": False, "grafana_clickhouse_user": "grafana",
    "grafana_clickhouse_password": "it's a \"secret\"", "grafana_clickhouse_database": "flowenricher",
    "grafana_dashboards_dir": "/var/lib/grafana/dashboards/flowenricher",
}


def _render_provisioning(name: str, **overrides: Any) -> Any:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(PROVISIONING), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True)
    return yaml.safe_load(env.get_template(name).render(**{**PROVISIONING_VARS, **overrides}))


def _datasource() -> dict[str, Any]:
    (ds,) = _render_provisioning("datasource.yml.j2")["datasources"]
    return dict(ds)


def test_datasource_provisioning_is_the_read_only_clickhouse_user() -> None:
    ds = _datasource()
    assert (ds["type"], ds["uid"], ds["editable"]) == (PLUGIN, "flowenricher-clickhouse", False)
    assert ds["jsonData"]["username"] == "grafana" and ds["jsonData"]["host"] == "127.0.0.1"
    assert ds["jsonData"]["port"] == 8123 and ds["jsonData"]["protocol"] == "http"
    assert ds["jsonData"]["defaultDatabase"] == "flowenricher"
    assert ds["secureJsonData"]["password"] == "it's a \"secret\""  # quoted safely, whatever the vault holds
    for secure, expected in ((True, True), ("yes", True), ("false", False), (False, False)):
        rendered = _render_provisioning("datasource.yml.j2", grafana_clickhouse_secure=secure)
        assert rendered["datasources"][0]["jsonData"]["secure"] is expected, secure
    with pytest.raises(jinja2.UndefinedError, match="grafana_clickhouse_password"):
        env = jinja2.Environment(loader=jinja2.FileSystemLoader(PROVISIONING), undefined=jinja2.StrictUndefined)
        env.get_template("datasource.yml.j2").render(
            **{k: v for k, v in PROVISIONING_VARS.items() if k != "grafana_clickhouse_password"})


def test_dashboard_provider_loads_the_shipped_directory() -> None:
    (provider,) = _render_provisioning("dashboards.yml.j2")["providers"]
    assert provider["type"] == "file" and provider["folder"] == "Flowenricher"
    assert provider["options"]["path"] == PROVISIONING_VARS["grafana_dashboards_dir"]
    assert provider["allowUiUpdates"] is False and provider["disableDeletion"] is True


# --------------------------------------------------------------------------- static checks


def test_one_file_per_dashboard_and_unique_uids() -> None:
    assert set(BY_UID) == EXPECTED
    assert len(BY_UID) == len(DASHBOARD_FILES)
    titles = [d["title"] for d in DASHBOARD_FILES.values()]
    assert len(set(titles)) == len(titles)


@pytest.mark.parametrize("file", sorted(DASHBOARD_FILES))
def test_dashboard_loads_in_the_installed_grafana(file: str) -> None:
    d = DASHBOARD_FILES[file]
    assert d["schemaVersion"] == SCHEMA_VERSION, f"{file}: schemaVersion for Grafana {GRAFANA_VERSION}"
    # the host drill-down reads one address's raw flows: its own default is the last 30 minutes
    assert d["time"] == {"from": "now-30m" if d["uid"] == "flowenricher-host" else "now-6h", "to": "now"}
    assert "flowenricher" in d["tags"] and d.get("id") is None
    panels = _panels(d)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"{file}: duplicate panel ids"
    for p in panels:
        pos = p["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24 and pos["h"] > 0, f"{file} panel {p['id']}: gridPos"
        assert p["type"] in {"row", "timeseries", "table", "stat", "bargauge", "geomap"}, p["type"]
        if p["type"] != "row":
            assert p.get("targets"), f"{file} panel {p['id']}: no query"
    titles = [p["title"] for p in panels]
    assert len(titles) == len(set(titles)), f"{file}: two panels with one title"
    names = [v["name"] for v in _variables(d)]
    assert len(names) == len(set(names))
    dash_links = [link for link in d["links"] if link["type"] == "dashboards"]
    assert dash_links and dash_links[0]["tags"] == ["flowenricher"] and dash_links[0]["keepTime"] is True


@pytest.mark.parametrize("file", sorted(DASHBOARD_FILES))
def test_only_the_provisioned_datasource(file: str) -> None:
    uid = _datasource()["uid"]
    found = 0
    for path, value in _walk(DASHBOARD_FILES[file]):
        if path.endswith(".datasource") and value is not None:
            if value == {"type": "grafana", "uid": "-- Grafana --"}:  # built-in annotations
                continue
            assert value == {"type": PLUGIN, "uid": uid}, f"{file}{path}: {value}"
            found += 1
    assert found


@pytest.mark.parametrize("file", sorted(DASHBOARD_FILES))
def test_units_operators_expect(file: str) -> None:
    """bits/s and packets/s panels in Grafana's bps and pps units; table columns named
    bps/pps (or the rates a host sends and receives) likewise."""
    for p in _panels(DASHBOARD_FILES[file]):
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit")
        if "(bits/s" in p["title"] and p["type"] != "table":
            assert unit == "bps", f"{file} {p['title']!r}: unit {unit}"
        if "(packets/s" in p["title"] and p["type"] != "table":
            assert unit == "pps", f"{file} {p['title']!r}: unit {unit}"
        if p["type"] == "table":
            units = {o["matcher"]["options"]: prop["value"] for o in p["fieldConfig"]["overrides"]
                     for prop in o["properties"] if prop["id"] == "unit"}
            columns = p["transformations"][0]["options"]["indexByName"]
            for name in columns:
                if name in ("bps", "pps"):
                    assert units.get(name) == name, f"{file} {p['title']!r}: column {name} unit {units.get(name)}"
            if "(bits/s)" in p["title"]:
                assert "bps" in units.values(), f"{file} {p['title']!r}: no bits/s column"


def _links() -> list[tuple[str, str, str]]:
    out = []
    for file, d in DASHBOARD_FILES.items():
        for path, value in _walk(d):
            if path.endswith(".url") and isinstance(value, str) and value:
                out.append((file, path, value))
    return out


def test_links_point_at_shipped_dashboards_and_their_variables() -> None:
    links = _links()
    assert links
    for file, path, url in links:
        m = re.fullmatch(r"/d/([\w-]+)/[\w-]+\?(.*)", url)
        assert m, f"{file}{path}: {url}"
        target = BY_UID.get(m.group(1))
        assert target is not None, f"{file}{path}: no dashboard {m.group(1)}"
        names = {v["name"] for v in _variables(target)}
        for var in re.findall(r"var-(\w+)=", m.group(2)):
            assert var in names, f"{file}{path}: {m.group(1)} has no variable {var}"
        assert "${__url_time_range}" in url, f"{file}{path}: the time range is lost"


def test_as_columns_drill_down_to_hosts() -> None:
    peering = next(f for f, d in DASHBOARD_FILES.items() if d["uid"] == "flowenricher-peering")
    as_links = [url for file, _, url in _links() if file == peering and "var-as=" in url]
    assert as_links and all(url.startswith("/d/flowenricher-host/") for url in as_links)
    host = BY_UID["flowenricher-host"]
    assert {"host", "as"} <= {v["name"] for v in _variables(host)}


def test_the_range_variables_are_written_from_their_one_definition() -> None:
    """`rollup`, `step` and `who_rollup` are the same query in every dashboard that has
    them: tools/gen_dashboards.py's, made from the storage's steps."""
    done = subprocess.run([sys.executable, str(ROLE.parents[1] / "tools" / "gen_dashboards.py"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    for d in BY_UID.values():
        names = {v["name"] for v in _variables(d)}
        assert {"rollup", "step"} <= names or not names & {"rollup", "step", "who_rollup"}, d["uid"]


def test_every_target_is_plugin_sql() -> None:
    assert len(TARGETS) > 50
    for t in TARGETS:
        assert t.target["editorType"] == "sql" and t.target["rawSql"].lstrip().upper().startswith("SELECT"), t.where
        assert t.target["format"] in (0, 1), t.where
        assert (t.target["format"] == 0) == (t.panel["type"] == "timeseries"), t.where


def _reads_flows(sql: str) -> bool:
    return re.search(r"\$\{database\}\.flows\b(?!_)", sql) is not None


def test_long_ranges_read_the_rollups() -> None:
    """Rollup-able panels read `$rollup`, which picks 1m/5m/1h by the range (checked on chDB
    below); only panels that need addresses, names or cities read the flows table."""
    for t in TARGETS:
        sql = t.target["rawSql"]
        if _reads_flows(sql):
            needs_flows = re.search(r"_addr|_name|_city|dst_as_path|dst_port|_mask|bgp_next_hop|tcpflags", sql)
            assert needs_flows, f"{t.where}: reads raw flows but needs nothing the rollups lack"


# --------------------------------------------------------------------------- "who" panels

_TEXT = re.compile(r"\b(IPv6NumToString|IPv4NumToString|toString|concat|replaceRegexpOne|arrayStringConcat|"
                   r"dictGet\w*)\s*\(")
_CLAUSE = re.compile(r"\b(SELECT|FROM|WHERE|GROUP BY|HAVING|ORDER BY|LIMIT|UNION ALL|SETTINGS)\b", re.I)


def group_keys(sql: str) -> list[tuple[str, str]]:
    """(key, expression) of every GROUP BY key in every SELECT of `sql`, an alias resolved
    to what its SELECT computes it from."""
    depth, level = [], 0
    for char in sql:
        level += char == "("
        depth.append(level)
        level -= char == ")"
    found = []
    for select in re.finditer(r"\bSELECT\b", sql, re.I):
        d = depth[select.start()]
        clauses: dict[str, re.Match[str]] = {}
        end = next((i for i in range(select.end(), len(sql)) if depth[i] < d or (sql[i] == ")" and depth[i] == d)),
                   len(sql))
        for k in _CLAUSE.finditer(sql, select.end(), end):
            if depth[k.start()] != d:
                continue
            if k.group(1).upper() in ("SELECT", "UNION ALL"):
                end = k.start()
                break
            clauses.setdefault(k.group(1).upper(), k)
        if "GROUP BY" not in clauses or "FROM" not in clauses:
            continue
        aliases = {}
        for item in split_top_level(sql[select.end():clauses["FROM"].start()]):
            alias = re.search(r"\s+AS\s+(\w+)$", item, re.I)
            if alias:
                aliases[alias.group(1)] = item[:alias.start()]
        group = clauses["GROUP BY"]
        stop = min([k.start() for k in clauses.values() if k.start() > group.start()] + [end])
        found += [(key, aliases.get(key, key)) for key in split_top_level(sql[group.end():stop])]
    return found


def grouped_text(sql: str) -> list[tuple[str, str]]:
    """The GROUP BY keys of `sql` that are text made from a value (an address, a number, a
    name turned into String) before the grouping."""
    return [(key, expr) for key, expr in group_keys(sql) if _TEXT.search(expr)]


WHO_PANELS = {
    ("flowenricher-overview", "Top sources (bits/s)"): "src_hosts",
    ("flowenricher-overview", "Top destinations (bits/s)"): "dst_hosts",
    ("flowenricher-overview", "Top destination ports (bits/s)"): "dst_ports",
    ("flowenricher-host", "Hosts of the selected AS (bits/s)"): "src_hosts dst_hosts",
    ("flowenricher-security", "Top scanners (inbound)"): "scanners",
    ("flowenricher-peering", "Top destination prefixes (bits/s)"): "dst_prefixes",
    ("flowenricher-peering", "Top source prefixes (bits/s)"): "src_prefixes",
    ("flowenricher-peering", "Upstreams: BGP next hop and neighbour AS (bits/s)"): "next_hops",
}
"""The "who" panels (top hosts and ports of the whole traffic) and the rollups they read."""

RAW_WHO: dict[tuple[str, str], str] = {}
"""Panels ranking addresses or ports that read the flows table, and what they need that
no rollup keeps.  Per-host panels ($host) are not here: they read one address's flows."""

_RANKED = re.compile(r"\b(src_addr|dst_addr|src_port|dst_port|bgp_next_hop)\b")


def _ranks_values(sql: str) -> bool:
    """Whether some GROUP BY of `sql` groups on an address or a port."""
    return any(_RANKED.search(expr) for _, expr in group_keys(sql))


AS_OFF = "AND $__conditionalAll(0, $as)"
"""What a who panel's rollup branch ends with: it reads nothing once an AS is chosen
(the macro then gives ``0``), as the rollups keep no AS to filter on (schema.WHO_FILTERS)."""
AS_ON = "AND NOT ($__conditionalAll(0, $as)) AND (src_as IN ($as) OR dst_as IN ($as))"
"""What its flows branch ends with: it reads the flows only while an AS is chosen."""


def _branches(sql: str) -> list[str]:
    return re.split(r"\bUNION ALL\b", sql)


def test_who_panels_read_their_rollups_and_nothing_else_ranks_raw_flows() -> None:
    """A "who" panel reads its rollups, ``${who_rollup}_top_<who>`` (the step of
    schema.WHO_STEPS the range picks), and the flows table only in a branch that an AS
    filter turns on while it turns the rollup's off (AS_ON, AS_OFF); a panel ranking
    addresses or ports on the flows table must say in RAW_WHO what the rollups lack, so a
    new one cannot slip in."""
    titles = {(BY_UID[d["uid"]]["uid"], p["title"]) for d in DASHBOARD_FILES.values() for p in _panels(d)}
    assert set(WHO_PANELS) <= titles and set(RAW_WHO) <= titles, "a listed panel was renamed or removed"
    who_names = {w.name for w in schema.WHO_ROLLUPS}
    infix = schema.WHO.infix
    for t in TARGETS:
        key = (next(d["uid"] for f, d in DASHBOARD_FILES.items() if f == t.file), t.panel["title"])
        sql = t.target["rawSql"]
        if key in WHO_PANELS:
            read = set(re.findall(r"\$\{database\}\.\$\{who_rollup\}_" + infix + r"(\w+)", sql))
            assert read == set(WHO_PANELS[key].split()) and read <= who_names, f"{t.where}: reads {read}"
            assert "${who_rollup}_" + infix in sql and not re.search(r"\$\{who_rollup\}_(?!" + infix + ")", sql)
            for branch in _branches(sql):
                if _reads_flows(branch):
                    assert AS_ON in branch, f"{t.where}: a who panel reads the flows table unless an AS is chosen"
                elif "(src_as IN ($as) OR dst_as IN ($as))" in sql and "${who_rollup}" in branch:
                    assert AS_OFF in branch, f"{t.where}: its rollup branch stays on with an AS chosen"
            flows_branch = " ".join(b for b in _branches(sql) if _reads_flows(b))
            for side in ("src", "dst"):  # what the views compute, computed alike from the flows
                if f"{side}_prefix" in sql:
                    assert schema._prefix_length(side) in flows_branch, f"{t.where}: not the views' {side} prefix"
            if "_top_scanners" in sql:
                assert all(m.from_flows in flows_branch for m in schema.SCAN_MEASURES), t.where
        elif _reads_flows(sql) and _ranks_values(sql) and "${host" not in sql:
            assert key in RAW_WHO, f"{t.where}: ranks addresses or ports on the flows table; use a who rollup"


def _tables_read(store: FlowStore, sql: str, where: str) -> dict[str, int]:
    """The rows ClickHouse's index analysis would read per table (EXPLAIN ESTIMATE): a
    branch whose WHERE is constant false reads no part."""
    answer = _run(store, f"EXPLAIN ESTIMATE {sql}", where)
    names = [n for n, _ in answer.columns]
    return {row[names.index("table")]: int(row[names.index("rows")]) for row in answer.rows}


def test_no_panel_groups_on_text_made_from_flows() -> None:
    """Panels reading flows or a who rollup group on the stored values (IPv6, numbers,
    LowCardinality) and make text only of the rows they show: converting every row first
    costs more than half the query (4.8M against 11.7M rows/s, issue 17's measurement)."""
    assert grouped_text("SELECT toString(a) AS t, sum(b) FROM x GROUP BY t") == [("t", "toString(a)")]
    assert grouped_text("SELECT toString(a) AS t FROM (SELECT a, sum(b) FROM x GROUP BY a) ORDER BY t") == []
    checked = 0
    for t in TARGETS:
        sql = t.target["rawSql"]
        if _reads_flows(sql) or "${who_rollup}_" in sql:
            checked += 1
            assert not grouped_text(sql), f"{t.where}: groups on text {grouped_text(sql)}"
    assert checked >= 15


# --------------------------------------------------------------------------- the store


def _fill(store: FlowStore) -> dict[str, Any]:
    """DATA_HOURS of the generator's traffic (with its attacks) up to NOW, enriched as the
    stages would (AS and org per address, countries and cities, upstream by uplink, AS
    paths), plus the side tables the security and health dashboards read."""
    generator = TrafficGenerator(scenario="attacks", seed=11)
    rng = np.random.default_rng(11)
    ases = rng.integers(1000, 400_000, 300).astype(np.uint32)
    weights = 1.0 / np.arange(1, len(ases) + 1) ** 1.1
    weights /= weights.sum()
    start = NOW - DATA_HOURS * HOUR
    for hour in range(DATA_HOURS):
        batch = generator.batch(6000, (start + hour * HOUR) * 1000, HOUR * 1000).to_flow_batch()
        _enrich(batch, rng, ases, weights)
        store.insert(batch)
    return _side_tables(store, rng)


def _enrich(batch: FlowBatch, rng: np.random.Generator, ases: Any, weights: Any) -> None:
    n = batch.n
    batch["received_at"] = batch["timestamp_end"] + np.uint32(1)
    batch["exporter_address"] = ipv4_to_addr(
        rng.choice(np.array([int(ipaddress.IPv4Address(e)) for e in EXPORTERS], np.uint32), n))
    direction = batch["flow_direction"]
    names = {int(a): f"ORG-{int(a)}" for a in ases} | {MY_ASN: "MY-HOSTING"}
    for side, mine in (("src", direction == 2), ("dst", direction == 1)):
        _, inverse = np.unique(batch[f"{side}_addr"], axis=0, return_inverse=True)
        inverse = inverse.ravel()
        per_address = rng.choice(ases, inverse.max() + 1, p=weights)
        asn = np.where(mine, MY_ASN, per_address[inverse]).astype(np.uint32)
        batch[f"{side}_as"] = asn
        batch[f"{side}_as_name"] = DictColumn.from_strings([names[int(a)] for a in asn])
        country_codes = rng.choice(len(COUNTRIES), inverse.max() + 1)
        codes = np.where(mine, COUNTRIES.index("GR"), country_codes[inverse]).astype(np.uint32)
        batch[f"{side}_host_country"] = DictColumn(codes, COUNTRIES)
        batch[f"{side}_host_city"] = DictColumn(codes, [CITIES[c] for c in COUNTRIES])
    uplink_in, uplink_out = batch["input_interface"], batch["output_interface"]
    for column, ifindex in (("peer_src_as", uplink_in), ("peer_dst_as", uplink_out)):
        batch[column] = np.array([UPLINKS.get(int(i), (0, ""))[0] for i in ifindex], np.uint32)
    batch["peer_dst_as_name"] = DictColumn.from_strings([UPLINKS.get(int(i), (0, ""))[1] for i in uplink_out])
    batch["bgp_next_hop"] = ipv4_to_addr(np.where(direction == 2, 0xB9010A01 + uplink_out, 0).astype(np.uint32))
    lengths = np.where(direction == 2, rng.integers(1, 6, n), 0)
    paths = [[UPLINKS.get(int(o), (174, ""))[0], *rng.integers(1000, 60000, max(0, int(k) - 2)).tolist(), int(d)]
             [: int(k)] if k else [] for o, d, k in zip(uplink_out, batch["dst_as"], lengths, strict=True)]
    batch["dst_as_path"] = ListColumn.from_lists(paths)
    ifnames = {1: "sfp-sfpplus1", 2: "sfp-sfpplus2", 3: "ether1", 10: "bridge-hosting", 11: "vlan100", 12: "vlan200"}
    batch["input_interface_name"] = DictColumn.from_strings([ifnames.get(int(i), "") for i in uplink_in])
    batch["output_interface_name"] = DictColumn.from_strings([ifnames.get(int(i), "") for i in uplink_out])


def _q(store: FlowStore, sql: str) -> list[list[str]]:
    return [line.split("\t") for line in store.query(sql, "TSV").decode().splitlines()]


def _side_tables(store: FlowStore, rng: np.random.Generator) -> dict[str, Any]:
    top = _q(store, f"SELECT src_host, count() AS c FROM {DATABASE}.flows WHERE flow_direction = 1 "
                    "GROUP BY src_host ORDER BY uniq(dst_addr) DESC LIMIT 5")
    victim = _q(store, f"SELECT dst_host FROM {DATABASE}.flows WHERE flow_direction = 1 "
                       "GROUP BY dst_host ORDER BY sum(bytes) DESC LIMIT 1")[0][0]
    scanners = [row[0] for row in top]
    _insert(store, PTR_CACHE, [{"ip": ip, "ptr": f"host{i}.example.net", "updated_at": NOW, "asn": 0, "asn_name": "",
                                "country": ""} for i, ip in enumerate([*scanners, victim])])
    _insert(store, ANOMALY_SCORES, [
        {"ts": NOW - k * 300, "window_s": 60, "src_addr": ip, "score": round(float(rng.random()), 3),
         "exporter_address": EXPORTERS[0], "features": {"unique_dst_ips": k + 1.0, "syn_ratio": 0.5}}
        for k in range(24) for ip in scanners[:3]])
    _insert(store, DETECTIONS, [
        {"detected_at": NOW - k * 900, "rule": "slow_horizontal_scan", "key": "src", "address": ip, "dst_addr": None,
         "dst_port": 22, "window_s": 60, "flows": 80, "packets": 80, "bytes": 4800, "pps": 1.3, "bps": 640.0,
         "syn_ratio": 1.0, "unique_dst_ips": 55, "unique_dst_ports": 1, "unique_src_ips": None,
         "first_seen": NOW - k * 900 - 60, "last_seen": NOW - k * 900, "anomaly_score": 0.7,
         "actions": ["alert", "blackhole"], "blackhole": True, "samples": "[]"}
        for k, ip in enumerate(scanners[:3])])
    times = iter(range(NOW - 1800, NOW, 60))  # one event a minute: their order is the table's
    events = BlackholeEvents(lambda sql: store.query(sql, "TSV"), DATABASE, clock=lambda: float(next(times)))
    events.record("announce", f"{scanners[0]}/32", "192.0.2.1", ["65535:666"], source="rule",
                  rule="slow_horizontal_scan", expires_at=NOW + 3600)
    events.record("announce", f"{scanners[1]}/32", "192.0.2.1", ["65535:666"], source="rule",
                  rule="slow_horizontal_scan", expires_at=NOW - 600)
    events.record("withdraw", f"{scanners[1]}/32", "192.0.2.1", ["65535:666"], source="rule",
                  rule="slow_horizontal_scan", reason="expired")
    events.record("refused", "84.54.49.0/24", "192.0.2.1", ["65535:666"], source="api",
                  reason="shorter than /32")
    assert events.flush(10)
    events.close()
    stats = [{"ts": NOW - k * 10, "exporter_address": e, "metric": m, "value": v}
             for k in range(6 * 360) for e in EXPORTERS
             for m, v in (("records", 900 + k % 7), ("datagrams", 30), ("dropped.template_missing", k % 3))]
    gauges = [{"ts": NOW - k * 10, "exporter_address": "::", "metric": m, "value": v} for k in range(6 * 360)
              for m, v in (("kernel_drops", 0), ("store_rows_dropped", 0), ("rows_inserted", 1800), ("rows_spooled", 0),
                           ("insert_seconds_avg", 0.02), ("insert_seconds_last", 0.03), ("spool_bytes", 0),
                           ("queue_depth", 1))]
    _insert(store, COLLECTOR_STATS, stats + gauges)
    speeds = {1: 1_000_000_000, 2: 1_000_000_000, 3: 10_000_000_000, 10: 10_000_000_000}
    _insert(store, EXPORTER_INTERFACES, [
        {"ts": NOW, "exporter_address": e, "ifindex": i, "name": f"snmp-if{i}", "alias": "uplink", "speed_bps": s}
        for e in EXPORTERS for i, s in speeds.items()])
    return {"scanners": scanners, "victim": victim}


def _insert(store: FlowStore, table: Table, rows: list[dict[str, Any]]) -> None:
    """Rows written the way the appliance's writers write them: through the table's
    description (storage/tables.py), every column named, so a renamed column fails here."""
    store.query(table.insert_sql(DATABASE, rows), "TSV")


@pytest.fixture(scope="module", params=["one server", "cluster"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlowStore]:
    """The store on one server, and on a cluster (clickhouse.cluster), where the same
    table names are the Distributed tables (support/chdb_cluster.py: a one-node cluster
    in chDB, plain engines instead of Replicated ones)."""
    path = tmp_path_factory.mktemp("dashboards") / "data"
    s = (open_cluster_store(path, database=DATABASE) if request.param == "cluster"
         else open_store(StoreSettings(path=str(path), database=DATABASE)))
    try:
        s.migrate()
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def facts(store: FlowStore) -> dict[str, Any]:
    return _fill(store)


# --------------------------------------------------------------------------- running queries


@dataclass(frozen=True)
class Answer:
    columns: list[tuple[str, str]]  # (name, ClickHouse type)
    rows: list[list[Any]]


def _run(store: FlowStore, sql: str, where: str) -> Answer:
    try:
        body = json.loads(store.query(sql, "JSONCompact"))
    except Exception as err:
        raise AssertionError(f"{where}: query failed: {err}\n--- SQL ---\n{sql}") from err
    return Answer([(m["name"], m["type"]) for m in body["meta"]], body["data"])


@dataclass(frozen=True)
class Scenario:
    """A time range and the variables a user set."""

    name: str
    range_s: int
    pick: str  # "all": every variable on All; "one": one exporter, interface, direction, AS


SCENARIOS = [Scenario("6h-all", 6 * HOUR, "all"), Scenario("2h-one", 2 * HOUR, "one"),
             Scenario("7d-all", 7 * 86400, "all"), Scenario("30d-one", 30 * 86400, "one")]
ROLLUP_FOR = {2 * HOUR: ("flows_1m", "60"), 6 * HOUR: ("flows_5m", "300"), 7 * 86400: ("flows_5m", "300"),
              30 * 86400: ("flows_1h", "3600")}
"""The aggregate rollup and its step by range: 1m up to 3 hours, 5m up to 7 days, 1h beyond
(tools/gen_dashboards.py)."""
WHO_ROLLUP_FOR = {2 * HOUR: "flows_1m", 6 * HOUR: "flows_1m", 7 * 86400: "flows_1h", 30 * 86400: "flows_1h"}
"""The who rollup's step by range: 1m up to a day, 1h beyond (schema.WHO_STEPS)."""
ROW_START = {f"flows_{r.suffix}": r.bucket for r in schema.ROLLUPS}
"""What a rollup's ``timestamp`` is of the flow's start: the time filter sees it."""


def _custom_options(var: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    values, texts = [], {}
    for item in var["query"].split(","):
        text, _, value = item.partition(" : ")
        value = (value or text).strip()
        values.append(value)
        texts[value] = text.strip()
    return values, texts


def _selections(store: FlowStore, dashboard: dict[str, Any], time_range: TimeRange, pick: str,
                facts: dict[str, Any]) -> dict[str, Selection]:
    """Each variable's options from its own query (in dashboard order, as Grafana
    resolves them), then set to All or to one real value."""
    chosen: dict[str, Selection] = {}
    for var in _variables(dashboard):
        name = var["name"]
        where = f"{dashboard['uid']} variable {name}"
        if var["type"] == "constant":  # hidden; Grafana inserts its query as it is
            chosen[name] = Selection((var["query"],), (var["query"],), multi=False)
            continue
        if var["type"] == "custom":
            options, texts = _custom_options(var)
        elif var["type"] == "textbox":
            value = facts["scanners"][0] if name == "host" else ""
            chosen[name] = Selection((value,), (value,), multi=False)
            continue
        else:
            assert var["type"] == "query" and var["datasource"]["type"] == PLUGIN, where
            sql = render(var["query"], time_range, interval_s(time_range), chosen, where)
            answer = _run(store, sql, where)
            assert answer.rows, f"{where}: no options\n{sql}"
            assert 1 <= len(answer.columns) <= 2, f"{where}: value and text columns, got {answer.columns}"
            options = [str(r[0]) for r in answer.rows]
            texts = {str(r[0]): str(r[-1]) for r in answer.rows}
        multi = bool(var.get("multi"))
        if pick == "all" and var.get("includeAll"):
            current: tuple[str, ...] = (ALL,)
        elif name == "direction":
            current = ("1",)
        elif name == "as" and pick == "one":
            current = (str(_top_as(store)),)
        else:
            current = (options[0],)
        chosen[name] = Selection(tuple(options), current, multi=multi, all_value=var.get("allValue"), texts=texts)
    return chosen


def _top_as(store: FlowStore) -> int:
    return int(_q(store, f"SELECT src_as FROM {DATABASE}.flows WHERE src_as != {MY_ASN} "
                         "GROUP BY src_as ORDER BY sum(bytes) DESC LIMIT 1")[0][0])


def _expected_columns(panel: dict[str, Any]) -> list[str] | None:
    for t in panel.get("transformations", []):
        if t["id"] == "organize":
            columns = list(t["options"]["indexByName"])
            renamed = set(t["options"]["renameByName"])
            assert renamed <= set(columns), f"{panel['title']!r}: renames {renamed - set(columns)}, not shown"
            return columns
    return None


def _check_answer(t: Target, answer: Answer, where: str) -> None:
    names = [n for n, _ in answer.columns]
    panel = t.panel
    expected = _expected_columns(panel)
    if expected is not None:
        assert names == expected, f"{where}: returns {names}, the panel shows {expected}"
    by_name = {o["matcher"]["options"] for o in panel["fieldConfig"].get("overrides", [])
               if o["matcher"]["id"] == "byName"}
    if panel["type"] == "timeseries":
        assert names[0] == "time" and answer.columns[0][1].startswith("DateTime"), f"{where}: {answer.columns}"
        labels = [n for n, ty in answer.columns[1:] if "String" in ty]
        values = [n for n, ty in answer.columns[1:] if "String" not in ty]
        assert values and len(labels) <= 1, f"{where}: {answer.columns}"
        assert by_name <= set(values), f"{where}: overrides name {by_name - set(values)}"
        times = [row[0] for row in answer.rows]
        assert times == sorted(times), f"{where}: time series not ordered by time"
    else:
        assert by_name <= set(names), f"{where}: overrides name {by_name - set(names)}"
    if panel["type"] == "stat":
        pattern = panel["options"]["reduceOptions"]["fields"].strip("/")
        assert any(re.fullmatch(pattern, n) for n in names), f"{where}: stat field {pattern} not in {names}"
    if panel["type"] == "geomap":
        for layer in panel["options"]["layers"]:
            assert layer["location"]["lookup"] in names, where
            assert layer["config"]["size"]["field"] in names, where
    if panel["type"] in ("bargauge", "geomap"):
        assert any("String" not in ty for _, ty in answer.columns), f"{where}: nothing to draw"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
@pytest.mark.parametrize("file", sorted(DASHBOARD_FILES))
def test_every_panel_query_runs_on_the_real_schema(store: FlowStore, facts: dict[str, Any], file: str,
                                                   scenario: Scenario) -> None:
    dashboard = DASHBOARD_FILES[file]
    time_range = TimeRange.last(scenario.range_s, NOW)
    chosen = _selections(store, dashboard, time_range, scenario.pick, facts)
    if "rollup" in chosen:
        picked = (chosen["rollup"].chosen[0], chosen["step"].chosen[0])
        assert picked == ROLLUP_FOR[scenario.range_s], f"{file}: {scenario.name} reads {picked}"
    if "who_rollup" in chosen:
        who = chosen["who_rollup"].chosen[0]
        assert who == WHO_ROLLUP_FOR[scenario.range_s], f"{file}: {scenario.name} reads {who}"
        assert who in {f"flows_{r.suffix}" for r in schema.WHO_STEPS}
    empty = []
    targets = [t for t in TARGETS if t.file == file]
    for t in targets:
        where = f"{t.where} [{scenario.name}]"
        interval = interval_s(time_range, t.panel.get("maxDataPoints", 1000), t.panel.get("interval"))
        sql = render(t.target["rawSql"], time_range, interval, chosen, where)
        if (dashboard["uid"], t.panel["title"]) in WHO_PANELS:
            rollup = chosen["who_rollup"].chosen[0]
            assert f"{DATABASE}.{rollup}_{schema.WHO.infix}" in sql, where
            read = _tables_read(store, sql, where)
            if scenario.pick == "all" or AS_ON not in t.target["rawSql"]:
                assert not read.get("flows"), f"{where}: reads {read}"
            else:  # an AS chosen: the flows answer, the rollup (which has no AS to filter on) is not read
                assert not any(n for table, n in read.items() if table.startswith(f"{rollup}_")), f"{where}: {read}"
        answer = _run(store, sql, where)
        _check_answer(t, answer, where)
        if not answer.rows:
            empty.append(t.panel["title"])
    if scenario.pick == "all":
        assert not empty, f"{file} [{scenario.name}]: no rows for {empty}"


def test_rollup_series_add_up_to_the_flows(store: FlowStore, facts: dict[str, Any]) -> None:
    """The overview's bits/s, read from the rollup the range picks, times each bucket's
    length, is the flows table's bytes in the same minutes: nothing lost or doubled."""
    overview = BY_UID["flowenricher-overview"]
    panel = next(p for p in _panels(overview) if p["title"] == "Traffic in and out (bits/s)")
    for range_s in (2 * HOUR, 6 * HOUR, 30 * 86400):  # 1m, 5m, 1h
        time_range = TimeRange.last(range_s, NOW)
        chosen = _selections(store, overview, time_range, "all", facts)
        assert chosen["rollup"].chosen[0] == ROLLUP_FOR[range_s][0]
        interval = interval_s(time_range)
        step = max(int(interval), int(chosen["step"].chosen[0]))
        answer = _run(store, render(panel["targets"][0]["rawSql"], time_range, interval, chosen), "overview")
        got = round(sum(row[1] for row in answer.rows) * step / 8)
        first = time_range.from_ms // 1000
        # the rollup's rows start on its own step: that is what the time filter sees
        row_start = ROW_START[chosen["rollup"].chosen[0]]
        (expected,) = _q(store, f"SELECT sum(bytes) FROM {DATABASE}.flows WHERE flow_direction = 1 "
                                f"AND {row_start}(timestamp_start) BETWEEN toDateTime({first}) AND toDateTime({NOW})")[0]
        assert got == int(expected), f"{range_s} s: {got} from the rollup, {expected} in the flows"


@pytest.mark.parametrize("range_s", [6 * HOUR, 7 * 86400])
@pytest.mark.parametrize(("title", "key", "flows_key"), [
    ("Top sources (bits/s)", "host", "src_addr"),
    ("Top destinations (bits/s)", "host", "dst_addr"),
    ("Top destination ports (bits/s)", "port", "dst_port"),
])
def test_who_rollups_rank_as_the_flows_do(store: FlowStore, facts: dict[str, Any], range_s: int, title: str,
                                          key: str, flows_key: str) -> None:
    """The top-20 a "who" panel reads from its rollup is the flows table's top-20 of the
    same minutes, value for value and byte for byte (the cap never bites at this size)."""
    overview = BY_UID["flowenricher-overview"]
    panel = next(p for p in _panels(overview) if p["title"] == title)
    time_range = TimeRange.last(range_s, NOW)
    chosen = _selections(store, overview, time_range, "all", facts)
    answer = _run(store, render(panel["targets"][0]["rawSql"], time_range, 60, chosen), title)
    names = [n for n, _ in answer.columns]
    got = [(str(row[names.index(key)]), round(row[names.index("bps")] * range_s / 8)) for row in answer.rows]
    row_start = ROW_START[chosen["who_rollup"].chosen[0]]
    value = f"replaceRegexpOne(IPv6NumToString({flows_key}), '^::ffff:', '')" if key == "host" else flows_key
    expected = [(v, int(b)) for v, b in _q(store, f"""
        SELECT {value}, sum(bytes) AS b FROM {DATABASE}.flows
        WHERE {row_start}(timestamp_start) BETWEEN toDateTime({time_range.from_ms // 1000}) AND toDateTime({NOW})
        GROUP BY {flows_key}{", proto" if key == "port" else ""} ORDER BY b DESC LIMIT 20""")]
    assert len(got) == 20 and got == expected


_PREFIX_REFERENCE = """
    SELECT if(ip_version = 4,
              concat(IPv4NumToString(toIPv4(replaceRegexpOne(IPv6NumToString(network), '^::ffff:', ''))),
                     '/', toString(length - 96)),
              concat(IPv6NumToString(network), '/', toString(length))) AS prefix,
      round(b * 8 / {range_s}, 6)
    FROM (SELECT ip_version,
            if(ip_version = 4, 96 + if({side}_mask = 0, 24, least({side}_mask, 32)),
               if({side}_mask = 0, 48, least({side}_mask, 128))) AS length,
            tupleElement(IPv6CIDRToRange({side}_addr, toUInt8(length)), 1) AS network,
            sum(bytes) AS b
          FROM {flows} WHERE {minutes} GROUP BY ip_version, length, network ORDER BY b DESC LIMIT 20)
    ORDER BY b DESC"""

ROLLUP_PANELS_FROM_FLOWS = {
    # title: (dashboard, columns compared, the same answer computed from raw flows)
    "Upstreams: BGP next hop and neighbour AS (bits/s)": ("flowenricher-peering", ("next_hop", "neighbour", "bps"), """
        SELECT replaceRegexpOne(IPv6NumToString(bgp_next_hop), '^::ffff:', ''), peer_dst_as,
          round(sum(bytes) * 8 / {range_s}, 6) AS b
        FROM {flows} WHERE {minutes} AND flow_direction = 2
        GROUP BY bgp_next_hop, peer_dst_as ORDER BY b DESC LIMIT 20"""),
    "Top destination prefixes (bits/s)": ("flowenricher-peering", ("prefix", "bps"), _PREFIX_REFERENCE),
    "Top source prefixes (bits/s)": ("flowenricher-peering", ("prefix", "bps"), _PREFIX_REFERENCE),
    "Top scanners (inbound)": ("flowenricher-security", ("host", "targets", "ports", "flows", "syn_only"), """
        SELECT replaceRegexpOne(IPv6NumToString(src_addr), '^::ffff:', ''),
          uniqExact(dst_addr) AS t, uniqExact(dst_port) AS p,
          count(), countIf(proto = 6 AND bitAnd(tcpflags, 0x12) = 0x02)
        FROM {flows} WHERE {minutes} AND flow_direction = 1
        GROUP BY src_addr HAVING t >= 10 OR p >= 10 ORDER BY t * p DESC, count() DESC, src_addr LIMIT 20"""),
}


@pytest.mark.parametrize("range_s", [6 * HOUR, 7 * 86400])
@pytest.mark.parametrize("title", sorted(ROLLUP_PANELS_FROM_FLOWS))
def test_rollup_panels_answer_as_the_flows_do(store: FlowStore, facts: dict[str, Any], range_s: int,
                                              title: str) -> None:
    """Upstreams, prefixes and scanners read their rollups (schema.WHO_ROLLUPS) and give the
    flows table's answer for the same minutes: the same rows, ranked, with the same rates,
    distinct targets and ports (uniq is practically exact below 65,536 values) and SYN-only flows."""
    uid, compared, reference = ROLLUP_PANELS_FROM_FLOWS[title]
    dashboard = BY_UID[uid]
    panel = next(p for p in _panels(dashboard) if p["title"] == title)
    time_range = TimeRange.last(range_s, NOW)
    chosen = _selections(store, dashboard, time_range, "all", facts)
    answer = _run(store, render(panel["targets"][0]["rawSql"], time_range, 60, chosen), title)
    names = [n for n, _ in answer.columns]
    got = [tuple(str(row[names.index(c)]) if c in ("next_hop", "prefix", "host") else
                 round(float(row[names.index(c)]), 6) for c in compared) for row in answer.rows]
    row_start = ROW_START[chosen["who_rollup"].chosen[0]]
    minutes = f"{row_start}(timestamp_start) BETWEEN toDateTime({time_range.from_ms // 1000}) AND toDateTime({NOW})"
    side = "src" if "source" in title else "dst"
    rows = _q(store, reference.format(flows=f"{DATABASE}.flows", minutes=minutes, range_s=range_s, side=side))
    expected = [tuple(v if i == 0 else round(float(v), 6) for i, v in enumerate(row)) for row in rows]
    assert got and sorted(got) == sorted(expected), f"{title}: {got[:3]} against {expected[:3]}"
    numbers = [[float(v) for v in row[1:]] for row in got]
    rank = [n[0] * n[1] if title == "Top scanners (inbound)" else n[-1] for n in numbers]
    assert rank == sorted(rank, reverse=True), f"{title}: not ranked"


AS_FILTERED = sorted(key for key in WHO_PANELS
                     if AS_ON in next(p for p in _panels(BY_UID[key[0]]) if p["title"] == key[1])["targets"][0]["rawSql"])


@pytest.mark.parametrize("range_s", [6 * HOUR, 7 * 86400])
@pytest.mark.parametrize("key", AS_FILTERED, ids=lambda k: k[1])
def test_an_as_filter_answers_from_the_flows_as_the_rollup_does(store: FlowStore, facts: dict[str, Any],
                                                                 range_s: int, key: tuple[str, str]) -> None:
    """A who panel given every AS of the data as its AS filter (not "All") answers from
    the flows table (its rollup branch is off) and gives what its rollup branch gives
    with "All": the flows branch computes each value (prefixes, scanner states) as the
    rollup's views do.  Then one AS narrows it to flows of that AS.  The AS and country
    shown beside a value are not compared: the panels show any one (``any``, or the
    largest row's, ``argMax``), and this data gives one address or default /24 or /48
    several, whose pick differs between flows and summed rows."""
    uid, title = key
    dashboard = BY_UID[uid]
    sql = next(p for p in _panels(dashboard) if p["title"] == title)["targets"][0]["rawSql"]
    time_range = TimeRange.last(range_s, NOW)
    chosen = _selections(store, dashboard, time_range, "all", facts)
    everyone = tuple(row[0] for row in _q(store, f"SELECT DISTINCT arrayJoin([src_as, dst_as]) FROM {DATABASE}.flows"))
    from_rollup = render(sql, time_range, 60, chosen, title)
    chosen["as"] = Selection(everyone, everyone)
    from_flows = render(sql, time_range, 60, chosen, title)
    assert not _tables_read(store, from_rollup, title).get("flows")
    assert not any(n for t, n in _tables_read(store, from_flows, title).items() if t != "flows" and "top_" in t)
    expected, got = _run(store, from_rollup, title), _run(store, from_flows, title)
    assert expected.rows and got.columns == expected.columns
    names = [n for n, _ in got.columns]
    shown = [i for i, n in enumerate(names) if n not in ("asn", "country")]

    def rows(answer: Answer) -> list[str]:
        return sorted(str([round(row[i], 6) if isinstance(row[i], float) else row[i] for i in shown])
                      for row in answer.rows)

    assert rows(got) == rows(expected), title
    one = str(_top_as(store))
    chosen["as"] = Selection(everyone, (one,))
    narrowed = _run(store, render(sql, time_range, 60, chosen, title), title)
    assert narrowed.rows != expected.rows or len(everyone) == 1, f"{title}: the AS filter changed nothing"


def test_variable_selection_narrows_the_answer(store: FlowStore, facts: dict[str, Any]) -> None:
    """Choosing one exporter and inbound only changes what the overview counts, as the
    same filter on the flows table does (the variables reach the SQL)."""
    overview = BY_UID["flowenricher-overview"]
    panel = next(p for p in _panels(overview) if p["title"] == "Inbound (bits/s, average)")
    time_range = TimeRange.last(6 * HOUR, NOW)
    chosen = _selections(store, overview, time_range, "all", facts)
    exporter = next(o for o in chosen["exporter"].options if o.endswith(EXPORTERS[1]))
    chosen["exporter"] = Selection(chosen["exporter"].options, (exporter,))
    sql = render(panel["targets"][0]["rawSql"], time_range, 60, chosen)
    assert f"exporter_address IN ('{exporter}')" in sql
    ((got,),) = _run(store, sql, "overview").rows
    rollup = chosen["rollup"].chosen[0]
    ((expected,),) = _q(store, f"SELECT sumIf(bytes, flow_direction = 1) * 8 / {6 * HOUR} FROM {DATABASE}.{rollup} "
                               f"WHERE timestamp >= toDateTime({NOW - 6 * HOUR}) AND timestamp <= toDateTime({NOW}) "
                               f"AND exporter_address = toIPv6('{EXPORTERS[1]}')")
    assert got == pytest.approx(float(expected)) and got > 0


def test_host_drill_down_finds_the_scanner(store: FlowStore, facts: dict[str, Any]) -> None:
    host = BY_UID["flowenricher-host"]
    time_range = TimeRange.last(6 * HOUR, NOW)
    chosen = _selections(store, host, time_range, "all", facts)
    assert chosen["host"].chosen == (facts["scanners"][0],)
    for title, column, value in (("Detections of $host", "rule", "slow_horizontal_scan"),
                                 ("Blackholes of $host", "action", "announce")):
        panel = next(p for p in _panels(host) if p["title"] == title)
        answer = _run(store, render(panel["targets"][0]["rawSql"], time_range, 60, chosen), title)
        index = [n for n, _ in answer.columns].index(column)
        assert [row[index] for row in answer.rows] == [value], title


def test_active_blackholes_are_the_unexpired_announcements(store: FlowStore, facts: dict[str, Any]) -> None:
    security = BY_UID["flowenricher-security"]
    panel = next(p for p in _panels(security) if p["title"] == "Active blackholes")
    time_range = TimeRange.last(6 * HOUR, NOW)
    chosen = _selections(store, security, time_range, "all", facts)
    answer = _run(store, render(panel["targets"][0]["rawSql"], time_range, 60, chosen), "active blackholes")
    assert [(row[0], row[4]) for row in answer.rows] == [(f"{facts['scanners'][0]}/32", "slow_horizontal_scan")]


# --------------------------------------------------------------------------- the macros themselves


def test_macros_expand_as_the_plugin_does() -> None:
    r = TimeRange(1_700_000_000_123, 1_700_021_600_456)
    sql = render("SELECT $__timeInterval(t) WHERE $__timeFilter(t) AND $__dateFilter(d) AND x > $__fromTime_ms "
                 "AND y < $__toTime AND z = $__interval_s AND $__timeFilter_ms(t)", r, 20.0, {})
    assert sql == (
        "SELECT toStartOfInterval(toDateTime(t), INTERVAL 20 second) WHERE t >= toDateTime(1700000000) AND "
        "t <= toDateTime(1700021600) AND d >= toDate('2023-11-14') AND d <= toDate('2023-11-15') AND "
        "x > fromUnixTimestamp64Milli(1700000000123) AND y < toDateTime(1700021600) AND z = 20 AND "
        "t >= fromUnixTimestamp64Milli(1700000000123) AND t <= fromUnixTimestamp64Milli(1700021600456)")
    assert interval_s(TimeRange.last(6 * HOUR, NOW)) == 20  # 6 h over 1000 points, rounded as Grafana does
    assert interval_s(TimeRange.last(6 * HOUR, NOW), min_interval="1m") == 60
    assert interval_s(TimeRange.last(30 * 86400, NOW)) == 1800


def test_variables_and_all_as_grafana_formats_them() -> None:
    v = {"exporter": Selection(("a", "b"), (ALL,)), "one": Selection(("x", "y"), ("y",), multi=False),
         "m": Selection(("p", "q"), ("q",))}
    assert interpolate("WHERE $__conditionalAll(e IN ($exporter), $exporter) AND o = '$one' AND m IN (${m})", v) == \
        "WHERE 1=1 AND o = 'y' AND m IN ('q')"
    assert interpolate("e IN ($exporter) AND [[one]] AND ${m:csv}", v) == "e IN ('a','b') AND y AND q"
    assert interpolate("$__conditionalAll(m IN ($m), $m)", v) == "m IN ('q')"
    with pytest.raises(TemplateError, match=r"\$nope is neither"):
        render("SELECT $nope", TimeRange(0, 1000), 1, v)
    with pytest.raises(TemplateError, match="unknown macro"):
        render("SELECT $__timeFilterz(t)", TimeRange(0, 1000), 1, v)
    with pytest.raises(TemplateError, match="expects 1 argument"):
        render("SELECT $__timeFilter(a, b)", TimeRange(0, 1000), 1, v)


# --------------------------------------------------------------------------- a real Grafana


def test_dashboards_import_into_a_real_grafana() -> None:
    url, token = os.environ.get("GRAFANA_URL"), os.environ.get("GRAFANA_TOKEN")
    if not url or not token:
        pytest.skip("no Grafana here (it cannot be installed on this machine); set GRAFANA_URL and GRAFANA_TOKEN "
                    "to post every dashboard to one")
    for file, d in DASHBOARD_FILES.items():
        body = json.dumps({"dashboard": d, "overwrite": True, "message": "flowenricher test"}).encode()
        request = urllib.request.Request(f"{url.rstrip('/')}/api/dashboards/db", data=body, method="POST",
                                         headers={"Authorization": f"Bearer {token}",
                                                  "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                assert json.loads(answer.read())["status"] == "success", file
        except urllib.error.HTTPError as err:
            raise AssertionError(f"{file}: Grafana answered {err.code}: {err.read()[:500]!r}") from err



# --------------------------------------------------------------------------- the database at provisioning


def _sql_strings(dashboard: dict[str, Any]) -> list[str]:
    out = [t["rawSql"] for p in _panels(dashboard) for t in p.get("targets", []) if "rawSql" in t]
    for var in _variables(dashboard):
        if var["type"] == "query":
            out += [var["query"], var.get("definition", "")]
    return out


@pytest.mark.parametrize("file", sorted(SHIPPED))
def test_dashboards_name_no_database_but_their_constant(file: str) -> None:
    """Every table is read as ${database}.<table>; `database` is a hidden constant the role sets."""
    dashboard = SHIPPED[file]
    constants = [v for v in _variables(dashboard) if v["name"] == "database"]
    assert len(constants) == 1 and constants[0]["type"] == "constant" and constants[0]["hide"] == 2, file
    assert _variables(dashboard)[0] is constants[0], f"{file}: the constant comes first, the queries use it"
    for sql in _sql_strings(dashboard):
        assert not re.search(r"\bflowenricher\.", sql), f"{file}: hard-coded database in {sql[:200]}"
        for table in re.findall(r"(?:FROM|JOIN)\s+([A-Za-z_${}.]+)", sql):
            if "." in table or table.startswith("$"):
                assert table.startswith("${database}."), f"{file}: {table}"


def test_provisioning_sets_the_constant_and_keeps_the_rest() -> None:
    shipped = SHIPPED["overview.json"]
    provisioned = GRAFANA_FILTER.dashboard_database(shipped, "netflows")
    constant = provisioned["templating"]["list"][0]
    assert (constant["query"], constant["current"]["value"]) == ("netflows", "netflows")
    assert shipped["templating"]["list"][0]["query"] == "flowenricher"  # the input is not changed
    assert provisioned["panels"] == shipped["panels"] and provisioned["uid"] == shipped["uid"]
    panel = _panels(provisioned)[1]
    chosen = {"database": Selection(("netflows",), ("netflows",), multi=False)}
    assert "netflows." in interpolate(panel["targets"][0]["rawSql"], {**chosen, **{
        v["name"]: Selection(("x",), ("x",), multi=False) for v in _variables(provisioned)[1:]}})
    for bad in ("flow-db", "1db", "db; DROP TABLE x", ""):
        with pytest.raises(ValueError, match="not a ClickHouse identifier"):
            GRAFANA_FILTER.dashboard_database(shipped, bad)
    without = {**shipped, "templating": {"list": shipped["templating"]["list"][1:]}}
    with pytest.raises(ValueError, match="no \\(single\\) constant variable"):
        GRAFANA_FILTER.dashboard_database(without, "netflows")
