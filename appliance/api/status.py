"""The status page at ``/``: the embedded mode's one screen (there is no Grafana there).

Server-rendered HTML with inline CSS and no script, image or font from anywhere, so it
works on an appliance without internet and in any browser.  It shows the active
blackholes, recent detections, the top talkers of the last hour and the ingest
counters.  A section whose source is down says so; the page itself always renders.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any

from prometheus_client import CollectorRegistry

from appliance.flowenricher.blackhole.state import Blackhole

from .errors import ApiError
from .queries import Filters

_COUNTER_PREFIXES = ("flowenricher_",)
_SKIP_PREFIXES = ("flowenricher_traffic_", "flowenricher_api_")
_DETECTION_COLUMNS = ("detected_at", "time", "timestamp", "rule", "key", "flows", "packets", "bytes")


@dataclass
class StatusView:
    """What the page shows; a None section was unavailable (`errors` says why)."""

    now: float
    zone: tzinfo
    blackholes: list[Blackhole]
    detections: list[dict[str, Any]] | None
    top_sources: list[dict[str, Any]] | None
    top_destinations: list[dict[str, Any]] | None
    counters: list[tuple[str, float]]
    errors: list[str] = field(default_factory=list)


def ingest_counters(registry: CollectorRegistry) -> list[tuple[str, float]]:
    """Every flowenricher counter and gauge of the registry, summed over its labels."""
    totals: dict[str, float] = {}
    for family in registry.collect():
        if family.type not in ("counter", "gauge") or not family.name.startswith(_COUNTER_PREFIXES):
            continue
        if family.name.startswith(_SKIP_PREFIXES):
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            totals[sample.name] = totals.get(sample.name, 0.0) + float(sample.value)
    return sorted(totals.items())


TopFn = Callable[[str, Filters], list[dict[str, Any]]]
DetectionsFn = Callable[[Filters], list[dict[str, Any]]]


def collect(now: float, zone: tzinfo, blackholes: list[Blackhole], registry: CollectorRegistry,
            top: TopFn, detections: DetectionsFn) -> StatusView:
    """Gather the page: `top(by, filters)` and `detections(filters)` may raise ApiError (503)."""
    hour = Filters(int(now) - 3600, int(now) + 1)
    view = StatusView(now, zone, blackholes, None, None, None, ingest_counters(registry))
    try:
        view.top_sources = top("src_host", hour)
        view.top_destinations = top("dst_host", hour)
    except ApiError as err:
        view.errors.append(f"top talkers: {err.detail}")
    try:
        view.detections = detections(Filters(int(now) - 86400, int(now) + 1))
    except ApiError as err:
        view.errors.append(f"detections: {err.detail}")
    return view


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _when(epoch: float | None, zone: tzinfo) -> str:
    if epoch is None:
        return "never"
    return datetime.fromtimestamp(epoch, UTC).astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %z")


def human_bytes(value: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} PB"


def _table(headers: Sequence[str], rows: Iterable[Sequence[object]], empty: str) -> str:
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    if not body:
        return f'<p class="empty">{_e(empty)}</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _top(rows: list[dict[str, Any]] | None) -> str:
    if rows is None:
        return '<p class="down">unavailable</p>'
    return _table(("address", "bytes", "packets", "flows"),
                  ((r["key"], human_bytes(r["bytes"]), r["packets"], r["flows"]) for r in rows), "no flows")


def _detections(rows: list[dict[str, Any]] | None) -> str:
    if rows is None:
        return '<p class="down">unavailable</p>'
    if not rows:
        return '<p class="empty">none in the last 24 hours</p>'
    columns = [c for c in _DETECTION_COLUMNS if c in rows[0]] or list(rows[0])[:6]
    return _table(columns, ([row.get(c, "") for c in columns] for row in rows), "")


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .4em}
table{border-collapse:collapse;background:#fff;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left}th{background:#eee}
td:nth-child(n+2){font-variant-numeric:tabular-nums}
.empty{color:#777}.down{color:#b00}.meta{color:#666;font-size:.85em}
section{display:inline-block;vertical-align:top;margin-right:2em}
"""


def _state(bh: Blackhole, now: float) -> str:
    """The blackhole's state, and for how long a route not yet confirmed has waited
    (requested and announced say nothing yet about the router)."""
    if bh.state in ("requested", "announced") and bh.waiting_since is not None:
        return f"{bh.state}, not confirmed for {max(now - bh.waiting_since, 0):.0f} s"
    return bh.state


def render(view: StatusView) -> str:
    """The page's HTML; every value is escaped."""
    zone = view.zone
    blackholes = _table(
        ("prefix", "next hop", "communities", "source", "rule", "since", "expires", "state"),
        ((b.prefix, b.next_hop, " ".join(b.communities), b.source, b.rule, _when(b.created_at, zone),
          _when(b.expires_at, zone), _state(b, view.now)) for b in view.blackholes),
        "no active blackholes")
    counters = _table(("counter", "value"), ((name, f"{value:,.0f}") for name, value in view.counters),
                      "no counters yet")
    problems = "".join(f'<p class="down">{_e(line)}</p>' for line in view.errors)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="30">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>flowenricher status</title><style>{_STYLE}</style></head>
<body>
<h1>flowenricher</h1>
<p class="meta">{_e(_when(view.now, zone))} &middot; refreshes every 30 s &middot;
<a href="/docs">API (Swagger)</a> &middot; <a href="/redoc">API reference</a></p>
{problems}
<h2>Active blackholes ({len(view.blackholes)})</h2>
{blackholes}
<h2>Recent detections</h2>
{_detections(view.detections)}
<h2>Top talkers, last hour</h2>
<section><h3>sources</h3>{_top(view.top_sources)}</section>
<section><h3>destinations</h3>{_top(view.top_destinations)}</section>
<h2>Ingest counters</h2>
{counters}
</body></html>
"""
