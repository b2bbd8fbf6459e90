"""Runs the API's flow queries on the store and decodes the rows.

The store (chDB in-process, or a ClickHouse server) is an outside source: when it
fails, the call gets a 503, the failure is counted and logged at most once a minute,
and nothing else is affected.  Rows come back as ``JSONEachRow`` and are decoded here,
so routes only see dicts of plain values.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from appliance.flowenricher.common.ratelimit import RateLimitedLog
from appliance.flowenricher.storage.tables import COLLECTOR_STATS, DETECTIONS, Table

from . import queries
from .errors import Unavailable
from .queries import Filters, Metric, Source, Tables

log = logging.getLogger(__name__)

QueryFn = Callable[[str, str], bytes]
"""Runs one statement on the flow store: ``query(sql, fmt) -> bytes`` (FlowStore.query)."""


class FlowRepository:
    """The flow store as the API sees it."""

    def __init__(self, query: QueryFn | None, tables: Tables, registry: CollectorRegistry | None = None) -> None:
        self._query = query
        self.tables = tables
        self._errors = Counter("flowenricher_api_store_errors", "API queries the flow store failed to answer",
                               registry=registry)
        self._failure_log = RateLimitedLog(log, 60.0)

    def rows(self, sql: str) -> list[dict[str, Any]]:
        """The result rows of `sql`; Unavailable (503) when the store cannot answer."""
        if self._query is None:
            raise Unavailable("no flow store is configured")
        try:
            raw = self._query(sql, "JSONEachRow")
        except Exception as err:  # an outside source: whatever it raises, the API answers 503
            self._errors.inc()
            self._failure_log.error("api: flow store query failed: %s", err)
            raise Unavailable("the flow store did not answer; see the service log") from err
        return [json.loads(line) for line in raw.splitlines() if line.strip()]

    def ping(self) -> bool:
        try:
            return self.rows("SELECT 1 AS ok") == [{"ok": 1}]
        except Unavailable:
            return False

    def top(self, by: str, metric: Metric, filters: Filters, limit: int) -> tuple[list[dict[str, Any]], Source]:
        sql, source = queries.top_sql(self.tables, by, metric, filters, limit)
        return [_metrics(row, key=str(row["key"])) for row in self.rows(sql)], source

    def series(self, step: int, metric: Metric, filters: Filters, by: str | None,
               limit: int) -> tuple[list[dict[str, Any]], Source]:
        sql, source = queries.series_sql(self.tables, step, metric, filters, by, limit)
        out = []
        for row in self.rows(sql):
            extra: dict[str, Any] = {"t": int(row["t"])}
            if by is not None:
                extra["key"] = str(row["key"])
            out.append(_metrics(row, **extra))
        return out, source

    def exporters(self, filters: Filters) -> list[dict[str, Any]]:
        out = []
        for row in self.rows(queries.exporters_sql(self.tables, filters)):
            out.append(_metrics(row, exporter=row["exporter"], first_seen=int(row["first_seen"]),
                                last_seen=int(row["last_seen"]), protocols=list(row["protocols"]),
                                sampling_rates=[int(x) for x in row["sampling_rates"]]))
        return out

    def interfaces(self, filters: Filters) -> dict[str, dict[int, str]]:
        """Interfaces seen in flows per exporter: ifindex -> name ("" when unnamed)."""
        seen: dict[str, dict[int, str]] = {}
        for row in self.rows(queries.interfaces_sql(self.tables, filters)):
            seen.setdefault(row["exporter"], {})[int(row["ifindex"])] = str(row["name"])
        return seen

    def detections(self, filters: Filters, rule: str | None, key: str | None, limit: int) -> list[dict[str, Any]]:
        """Rows of the detections table, newest first; none when the table does not exist."""
        if not self.has_table(DETECTIONS):
            return []
        rows = self.rows(queries.detections_sql(self.tables, filters, rule, key, limit))
        for row in rows:
            samples = row.get("samples")
            if isinstance(samples, str) and samples.startswith("["):
                with contextlib.suppress(ValueError):  # the sample flows, stored as JSON text
                    row["samples"] = json.loads(samples)
        return rows

    def has_table(self, table: Table) -> bool:
        """Whether `table` exists (the API may start before the collector has created it)."""
        return bool(self.rows(queries.table_exists_sql(self.tables.database, table)))

    def drops(self, start: int, end: int, step: int) -> list[tuple[int, str, float]] | None:
        """(bucket, place, lost flows) from collector_stats; None when that table does not
        exist (no stats recorder has run), which is not the same as no drops."""
        if not self.has_table(COLLECTOR_STATS):
            return None
        return [(int(r["t"]), str(r["place"]), float(r["dropped"]))
                for r in self.rows(queries.drops_sql(self.tables.database, start, end, step))]

    def detection_counts(self, start: int, end: int, step: int) -> list[tuple[int, int]]:
        """(bucket, detections); none while the detections table does not exist."""
        if not self.has_table(DETECTIONS):
            return []
        return [(int(r["t"]), int(r["detections"]))
                for r in self.rows(queries.detection_counts_sql(self.tables, start, end, step))]


def _metrics(row: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {**extra, "bytes": int(row["bytes_sum"]), "packets": int(row["packets_sum"]),
            "flows": int(row["flows_sum"])}
