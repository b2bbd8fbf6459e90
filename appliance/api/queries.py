"""SQL for the API's flow questions: top N, time series, exporters, detections.

Nothing a client sends is spliced into SQL as text except through :func:`quote`
(common/sql.py's string literal):
dimensions come from :data:`TOP_DIMENSIONS` (names of columns.py, checked at import),
times and limits are integers, addresses are parsed before they are rendered.

Which table answers: the flows table is exact for anything; the rollups
(``<table>_1m/_5m/_1h``, storage/schema.py) hold only the rollup dimensions, summed per
time bucket, and answer long ranges far faster.  A query uses the coarsest rollup
whose step divides its time range (and its series step) when every column it groups
or filters by is in the rollups, so the answer is the same as from the flows table;
otherwise it reads the flows.  Ranges are half-open: ``from <= t < to``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from appliance.flowenricher.columns import ALIASES, BY_NAME, DIRECTION_NAMES, Kind
from appliance.flowenricher.common.addresses import display_sql, stored_text
from appliance.flowenricher.common.sql import string as quote
from appliance.flowenricher.storage.schema import ROLLUP_DIMENSIONS, ROLLUPS, Rollup, rollup_description
from appliance.flowenricher.storage.tables import COLLECTOR_STATS, DETECTIONS, Table

Metric = Literal["bytes", "packets", "flows"]
METRICS: tuple[Metric, ...] = ("bytes", "packets", "flows")

TOP_DIMENSIONS: tuple[str, ...] = (
    "src_host", "dst_host", "src_addr", "dst_addr",
    "src_as", "dst_as", "src_as_name", "dst_as_name",
    "peer_src_as", "peer_dst_as", "peer_src_as_name", "peer_dst_as_name",
    "src_host_country", "dst_host_country", "src_host_city", "dst_host_city",
    "src_net_name", "dst_net_name", "src_net_customer", "dst_net_customer",
    "src_port", "dst_port", "proto", "flow_direction",
    "input_interface", "output_interface", "input_interface_name", "output_interface_name",
    "next_hop", "bgp_next_hop", "exporter_address", "flow_protocol",
)
"""What top N and series may group by: flow column names (columns.py), aliases included."""


ROLLUP_STEPS: dict[str, int] = {r.suffix: r.step_s for r in ROLLUPS}
"""Seconds per bucket of each rollup, by suffix."""

MAX_POINTS = 10_000
"""Most buckets one series query may ask for."""
_AUTO_STEPS = (60, 300, 900, 1800, 3600, 7200, 21600, 43200, 86400, 7 * 86400)
_AUTO_POINTS = 720


def address_literal(text: str) -> str:
    """An address as an IPv6 value matching the address columns (IPv4 as ::ffff:a.b.c.d).

    Raises ValueError for anything that is not an IP address.
    """
    return f"toIPv6({quote(stored_text(text))})"


def stored_column(name: str) -> str:
    """The stored column dimension `name` groups by (an alias groups by the column it
    renders, so grouping compares 16-byte addresses, not text made for every row)."""
    if name not in TOP_DIMENSIONS:
        raise ValueError(f"{name!r} is not a dimension; expected one of: {', '.join(TOP_DIMENSIONS)}")
    return {"src_host": "src_addr", "dst_host": "dst_addr"}.get(name, name)


_unknown = [n for n in TOP_DIMENSIONS if (n not in BY_NAME and n not in ALIASES) or stored_column(n) not in BY_NAME]
assert not _unknown, f"TOP_DIMENSIONS not (stored) in columns.py: {_unknown}"


def render_sql(name: str, ref: str) -> str:
    """Dimension `name`, grouped as `ref`, as the answer's text ``key``: addresses dotted
    or IPv6, directions by name, everything else as written."""
    column = BY_NAME[stored_column(name)]
    if column.kind is Kind.ADDR:
        return display_sql(ref)
    if name == "flow_direction":
        names = ", ".join(quote(n) for n in DIRECTION_NAMES)
        return f"if({ref} < {len(DIRECTION_NAMES)}, [{names}][{ref} + 1], toString({ref}))"
    return f"toString({ref})"


@dataclass(frozen=True)
class Tables:
    """Where the flows are: ``database.table`` and its rollups ``database.table_<suffix>``."""

    database: str
    table: str

    @property
    def flows(self) -> str:
        return f"{self.database}.{self.table}"

    def rollup(self, r: Rollup) -> Table:
        return rollup_description(self.table, r)

    @property
    def detections(self) -> str:
        return DETECTIONS.qualified(self.database)


@dataclass(frozen=True)
class Filters:
    """Restrictions every flow query accepts: a time range (unix seconds, half-open),
    a flow direction (index into DIRECTION_NAMES) and an exporter address."""

    start: int
    end: int
    direction: int | None = None
    exporter: str | None = None

    def columns(self) -> set[str]:
        used = set()
        if self.direction is not None:
            used.add("flow_direction")
        if self.exporter is not None:
            used.add("exporter_address")
        return used

    def where(self, time_column: str) -> str:
        parts = [f"{time_column} >= toDateTime({int(self.start)})", f"{time_column} < toDateTime({int(self.end)})"]
        if self.direction is not None:
            parts.append(f"flow_direction = {int(self.direction)}")
        if self.exporter is not None:
            parts.append(f"exporter_address = {address_literal(self.exporter)}")
        return " AND ".join(parts)


@dataclass(frozen=True)
class Source:
    """The table a query reads and how it names time and flow counts there."""

    table: str
    name: str  # "flows" or the rollup suffix, reported to the client
    time_column: str
    flows_expr: str


def pick_source(tables: Tables, columns: set[str], filters: Filters, step: int | None = None) -> Source:
    """The coarsest rollup that answers exactly, else the flows table (see module doc)."""
    if {stored_column(c) if c in TOP_DIMENSIONS else c for c in columns} <= set(ROLLUP_DIMENSIONS):
        for rollup in reversed(ROLLUPS):
            size = ROLLUP_STEPS[rollup.suffix]
            aligned = filters.start % size == 0 and filters.end % size == 0
            if aligned and (step is None or step % size == 0):
                table = tables.rollup(rollup)
                return Source(table.qualified(tables.database), rollup.suffix, table.time_column, "sum(flows)")
    return Source(tables.flows, "flows", "timestamp_start", "count()")


def _metrics_sql(source: Source) -> str:
    """The three sums, aliased apart from the column names (an alias equal to the column
    it sums confuses older ClickHouse analyzers)."""
    return f"sum(bytes) AS bytes_sum, sum(packets) AS packets_sum, {source.flows_expr} AS flows_sum"


def top_sql(tables: Tables, by: str, metric: Metric, filters: Filters, limit: int) -> tuple[str, Source]:
    """Top `limit` values of dimension `by` over the range, by `metric`; only those rows are
    rendered as text."""
    raw = stored_column(by)
    source = pick_source(tables, {by} | filters.columns(), filters)
    order = f"{_order(metric)}_sum DESC"
    sql = (
        f"SELECT {render_sql(by, 'k')} AS key, bytes_sum, packets_sum, flows_sum FROM ("
        f"SELECT {raw} AS k, {_metrics_sql(source)} FROM {source.table}"
        f" WHERE {filters.where(source.time_column)}"
        f" GROUP BY k ORDER BY {order}, k LIMIT {int(limit)}) ORDER BY {order}, key"
    )
    return sql, source


def _order(metric: Metric) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r} is not one of {METRICS}")
    return metric


def _sum(metric: Metric, source: Source) -> str:
    """`metric` summed over a group, where the select list gives it no alias."""
    return source.flows_expr if _order(metric) == "flows" else f"sum({metric})"


def auto_step(start: int, end: int) -> int:
    """A step giving at most a few hundred points: what a graph of the range can show."""
    span = max(end - start, 1)
    for step in _AUTO_STEPS:
        if span / step <= _AUTO_POINTS:
            return step
    return _AUTO_STEPS[-1] * (span // (_AUTO_STEPS[-1] * _AUTO_POINTS) + 1)


def widen(start: int, end: int, step: int) -> tuple[int, int]:
    """The range grown to whole steps, so every bucket is complete."""
    return start - start % step, end + (-end) % step


def series_sql(tables: Tables, step: int, metric: Metric, filters: Filters, by: str | None = None,
               limit: int = 10) -> tuple[str, Source]:
    """Traffic per `step`-second bucket; with `by`, one series per top-`limit` value of it.

    `filters` must already be widened to whole steps (see :func:`widen`).
    """
    columns = filters.columns() | ({by} if by else set())
    source = pick_source(tables, columns, filters, step)
    bucket = f"intDiv(toUnixTimestamp({source.time_column}), {int(step)}) * {int(step)}"
    where = filters.where(source.time_column)
    if by is None:
        sql = (
            f"SELECT {bucket} AS t, {_metrics_sql(source)} FROM {source.table} WHERE {where}"
            " GROUP BY t ORDER BY t"
        )
        return sql, source
    raw = stored_column(by)
    top = (
        f"SELECT {raw} FROM {source.table} WHERE {where} GROUP BY {raw}"
        f" ORDER BY {_sum(metric, source)} DESC, {raw} LIMIT {int(limit)}"
    )
    sql = (
        f"SELECT t, {render_sql(by, 'k')} AS key, bytes_sum, packets_sum, flows_sum FROM ("
        f"SELECT {bucket} AS t, {raw} AS k, {_metrics_sql(source)} FROM {source.table}"
        f" WHERE {where} AND {raw} IN ({top}) GROUP BY t, k) ORDER BY t, key"
    )
    return sql, source


_FLOWS_SOURCE = Source("", "flows", "timestamp_start", "count()")


def exporters_sql(tables: Tables, filters: Filters) -> str:
    """Per exporter: flows, bytes, packets, first and last flow, protocols, sampling rates."""
    exporter = display_sql("exporter_address")
    return (
        f"SELECT {exporter} AS exporter, {_metrics_sql(_FLOWS_SOURCE)},"
        " toUnixTimestamp(min(timestamp_start)) AS first_seen, toUnixTimestamp(max(received_at)) AS last_seen,"
        " arraySort(groupUniqArray(toString(flow_protocol))) AS protocols,"
        " arraySort(groupUniqArray(sampling_rate)) AS sampling_rates"
        f" FROM {tables.flows} WHERE {filters.where('timestamp_start')} GROUP BY exporter ORDER BY exporter"
    )


def interfaces_sql(tables: Tables, filters: Filters, limit: int = 10_000) -> str:
    """(exporter, ifindex, name) of every interface seen in flows, in or out."""
    exporter = display_sql("exporter_address")
    where = filters.where("timestamp_start")
    sides = [
        f"SELECT {exporter} AS exporter, {side}_interface AS ifindex, anyLast(toString({side}_interface_name)) AS name"
        f" FROM {tables.flows} WHERE {where} GROUP BY exporter, ifindex"
        for side in ("input", "output")
    ]
    return (
        f"SELECT exporter, ifindex, max(name) AS name FROM ({' UNION ALL '.join(sides)})"
        f" GROUP BY exporter, ifindex ORDER BY exporter, ifindex LIMIT {int(limit)}"
    )


def table_exists_sql(database: str, table: Table) -> str:
    """One row when `table` exists in `database` (the API may start before the collector
    has run the migrations that create it)."""
    return (f"SELECT 1 AS present FROM system.tables WHERE database = {quote(database)}"
            f" AND name = {quote(table.name)}")


_ADDRESS_TYPES = ("IPv6", "Nullable(IPv6)")


def detections_sql(tables: Tables, filters: Filters, rule: str | None, key: str | None, limit: int) -> str:
    """Recent detections, newest first, every column of tables.DETECTIONS.

    `key` is the address a rule counted per (matched against ``address``) or, when it is
    not an address, the ``key`` column's text.  IPv6 columns come back as text, IPv4
    dotted, like the flow queries' keys.
    """
    time_column = DETECTIONS.time_column
    parts = [f"{time_column} >= toDateTime({int(filters.start)})", f"{time_column} < toDateTime({int(filters.end)})"]
    if rule is not None:
        parts.append(f"rule = {quote(rule)}")
    if key is not None:
        try:
            parts.append(f"address = {address_literal(key)}")
        except ValueError:
            parts.append(f"toString(key) = {quote(key)}")
    names = ", ".join(DETECTIONS.names)
    shown = ", ".join(f"{display_sql(c.name)} AS {c.name}" if c.ch_type in _ADDRESS_TYPES else c.name
                      for c in DETECTIONS.columns)
    inner = (f"SELECT {names} FROM {tables.detections} WHERE {' AND '.join(parts)} ORDER BY {time_column} DESC"
             f" LIMIT {int(limit)}")
    return (f"SELECT {shown} FROM ({inner}) ORDER BY {time_column} DESC"
            " SETTINGS date_time_output_format = 'iso'")


DROP_PLACES: tuple[tuple[str, str], ...] = (
    ("kernel", "metric = 'kernel_drops'"),
    ("decoder", "startsWith(metric, 'dropped.')"),
    ("store", "metric = 'store_rows_dropped'"),
)
"""Where a flow can be lost, and which collector_stats metrics (stats_recorder.py) count
it there: the kernel's UDP socket buffer, the decoders (malformed datagrams, unknown
templates), the store (rows given up after the spool)."""


def drops_sql(database: str, start: int, end: int, step: int) -> str:
    """Lost flows per `step`-second bucket and place (DROP_PLACES) from collector_stats,
    where counters are stored as their increase per snapshot, so a sum is a count."""
    place = "multiIf(" + ", ".join(f"{cond}, {quote(name)}" for name, cond in DROP_PLACES) + ", '')"
    any_place = " OR ".join(f"({cond})" for _, cond in DROP_PLACES)
    ts = COLLECTOR_STATS.time_column
    return (f"SELECT intDiv(toUnixTimestamp({ts}), {int(step)}) * {int(step)} AS t, {place} AS place,"
            f" sum(value) AS dropped FROM {COLLECTOR_STATS.qualified(database)}"
            f" WHERE {ts} >= toDateTime({int(start)}) AND {ts} < toDateTime({int(end)}) AND ({any_place})"
            " GROUP BY t, place ORDER BY t, place")


def detection_counts_sql(tables: Tables, start: int, end: int, step: int) -> str:
    """Detections per `step`-second bucket, every rule together."""
    ts = DETECTIONS.time_column
    return (f"SELECT intDiv(toUnixTimestamp({ts}), {int(step)}) * {int(step)} AS t, count() AS detections"
            f" FROM {tables.detections}"
            f" WHERE {ts} >= toDateTime({int(start)}) AND {ts} < toDateTime({int(end)}) GROUP BY t ORDER BY t")
