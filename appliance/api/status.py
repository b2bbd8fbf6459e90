"""The status page at ``/``: the embedded mode's one screen (there is no Grafana there).

Made to be read in a few seconds: a health line first (does the store answer, does the
collector, when did each exporter's last flow arrive, flows/s and bits/s now, drops by
place, the store lag and the spool, blackholes by state, GoBGP's sessions and RIB), small charts of the last hours,
then the detections with their addresses, the blackholes with state and reason, the
top talkers, and the recent backtests (each linking to its report in the API).  The raw counters stay on ``/metrics``.

Server-rendered HTML with inline CSS and inline SVG charts drawn here: no script, image
or font from anywhere, so it works on an appliance without internet and in any browser.
Every part is read on its own: a source that is down or absent turns its items into
"unknown: <why>", and the page itself always renders.
"""

from __future__ import annotations

import html
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Any, Literal, TypeVar

from prometheus_client import CollectorRegistry

from appliance.flowenricher.bgp.sessions import ANSWERED_METRIC, SESSION_METRIC
from appliance.flowenricher.blackhole.state import Blackhole

from .errors import ApiError
from .queries import DROP_PLACES, Filters

log = logging.getLogger(__name__)

T = TypeVar("T")

CHART_HOURS = 6
"""How far back the charts look."""
CHART_STEP = 300
"""Seconds per chart bucket: the 5-minute rollup answers it (72 points over 6 hours)."""
RATE_STEP = 60
"""The "now" of flows/s and bits/s: the last complete minute (the 1-minute rollup)."""
DROPS_WINDOW = 300
"""Drops in the health line: the last five minutes of collector_stats."""
STALE_AFTER = 120
"""An exporter whose last flow is older than this is shown as late (a warning)."""
LAG_WARN_S = 30
"""A store lag past this is a warning: at the default settings a flow waits a second or
two for its insert; tens of seconds mean the store is slow or refusing (see the spool)."""
LAG_BAD_S = 300

Level = Literal["ok", "warn", "bad", "unknown"]


@dataclass(frozen=True)
class Fact:
    """One item of the health line: what it is, what it says, and how it should look."""

    label: str
    text: str
    level: Level


@dataclass(frozen=True)
class Chart:
    """One small chart: (bucket start, value) points, or None with the reason it is unknown."""

    title: str
    unit: str
    points: list[tuple[int, float]] | None
    why: str = ""


@dataclass
class StatusView:
    """What the page shows; a None section was unavailable (`errors` says why)."""

    now: float
    zone: tzinfo
    health: list[Fact]
    exporters: list[Fact]
    charts: list[Chart]
    blackholes: list[Blackhole] | None
    detections: list[dict[str, Any]] | None
    top_sources: list[dict[str, Any]] | None
    top_destinations: list[dict[str, Any]] | None
    errors: list[str] = field(default_factory=list)
    backtests: list[dict[str, Any]] = field(default_factory=list)


TopFn = Callable[[str, Filters], list[dict[str, Any]]]
DetectionsFn = Callable[[Filters], list[dict[str, Any]]]


@dataclass
class Sources:
    """Where the page reads from; each callable may raise (an ApiError carries its reason).

    `store_ok` and `collector_ok` are the readiness checks of /health/ready
    (`collector_ok` is None when this API has no collector to ask).  `series(step,
    filters)` is the traffic per bucket (rows with t, flows, bytes); `drops(start, end,
    step)` the lost flows per bucket and place, None without collector_stats;
    `detection_counts(start, end, step)` detections per bucket.  `backtests` are the
    recent backtest jobs (schemas.BacktestJob fields, by their JSON names), newest first.
    """

    store_ok: Callable[[], bool]
    collector_ok: Callable[[], bool | None]
    blackholes: Callable[[], list[Blackhole]]
    registry: CollectorRegistry
    exporters: Callable[[Filters], list[dict[str, Any]]]
    series: Callable[[int, Filters], list[dict[str, Any]]]
    drops: Callable[[int, int, int], list[tuple[int, str, float]] | None]
    detection_counts: Callable[[int, int, int], list[tuple[int, int]]]
    top: TopFn
    detections: DetectionsFn
    backtests: Callable[[], list[dict[str, Any]]] = list


class _Unknown(Exception):
    """A source could not answer; the text is the reason shown on the page."""


def _read(what: str, call: Callable[[], T]) -> T:
    """`call()`, or _Unknown with a reason an operator can act on (never a traceback on
    the page: an unexpected failure is logged and named only by its type)."""
    try:
        return call()
    except ApiError as err:
        raise _Unknown(str(err.detail)) from err
    except Exception as err:  # an outside source: whatever it raises, the page renders
        log.exception("status page: reading %s failed", what)
        raise _Unknown(f"{type(err).__name__} (see the API log)") from err


@dataclass
class Scrape:
    """One read of the collector's metrics: every sample summed over its labels
    (`totals`), and the per-neighbour BGP session samples (`sessions`: neighbour ->
    established 1/0)."""

    totals: dict[str, float]
    sessions: dict[str, float]


def registry_values(registry: CollectorRegistry) -> Scrape:
    """Every flowenricher sample of the registry (the collector's own in-process;
    scraped over the control socket by `flowenricher api`), read once."""
    totals: dict[str, float] = {}
    sessions: dict[str, float] = {}
    for family in registry.collect():
        if not family.name.startswith("flowenricher_"):
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            totals[sample.name] = totals.get(sample.name, 0.0) + float(sample.value)
            if sample.name == SESSION_METRIC:
                sessions[sample.labels.get("neighbor", "?")] = float(sample.value)
    return Scrape(totals, sessions)


def _duration(seconds: float) -> str:
    seconds = max(seconds, 0.0)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _ago(seconds: float) -> str:
    return _duration(seconds) + " ago"


def human(value: float, unit: str = "") -> str:
    """`value` with an SI prefix: 1.2 k, 3.4 M (bits/s, flows/s)."""
    for prefix in ("", "k", "M", "G", "T"):
        if abs(value) < 1000 or prefix == "T":
            number = f"{value:.0f}" if prefix == "" and value == int(value) else f"{value:.1f}"
            return f"{number} {prefix}{unit}".rstrip()
        value /= 1000
    return f"{value:.1f} P{unit}"


def human_bytes(value: float) -> str:
    return human(value, "B")


def _traffic_facts(src: Sources, now: int) -> list[Fact]:
    minute = now - now % RATE_STEP
    filters = Filters(minute - RATE_STEP, minute)
    try:
        rows = _read("traffic", lambda: src.series(RATE_STEP, filters))
    except _Unknown as why:
        return [Fact("flows/s", f"unknown: {why}", "unknown"), Fact("bits/s", f"unknown: {why}", "unknown")]
    flows = sum(int(r["flows"]) for r in rows) / RATE_STEP
    bits = sum(int(r["bytes"]) for r in rows) * 8 / RATE_STEP
    level: Level = "ok" if flows > 0 else "warn"
    return [Fact("flows/s", human(flows), level), Fact("bits/s", human(bits, "b/s"), level)]


def _exporter_facts(src: Sources, now: int) -> tuple[Fact, list[Fact]]:
    """The data-flowing item (newest flow of any exporter) and one item per exporter."""
    try:
        rows = _read("exporters", lambda: src.exporters(Filters(now - 3600, now + 1)))
    except _Unknown as why:
        return Fact("last flow", f"unknown: {why}", "unknown"), []
    if not rows:
        return Fact("last flow", "none in the last hour: no data is flowing", "bad"), []
    per = [Fact(str(r["exporter"]), _ago(now - int(r["last_seen"])),
                "ok" if now - int(r["last_seen"]) <= STALE_AFTER else "warn") for r in rows]
    newest = max(int(r["last_seen"]) for r in rows)
    level: Level = "ok" if now - newest <= STALE_AFTER else "bad"
    return Fact("last flow", f"{_ago(now - newest)} ({len(rows)} exporter{'s' if len(rows) != 1 else ''})",
                level), per


def _drop_facts(src: Sources, now: int) -> list[Fact]:
    try:
        rows = _read("drops", lambda: src.drops(now - DROPS_WINDOW, now + 1, DROPS_WINDOW))
    except _Unknown as why:
        return [Fact("drops", f"unknown: {why}", "unknown")]
    if rows is None:
        return [Fact("drops", "unknown: no collector_stats table (the stats recorder has not run)", "unknown")]
    if not rows:  # the recorder writes every counter each snapshot, zeros too: silence is not "no drops"
        return [Fact("drops", "unknown: nothing recorded in collector_stats in the last 5 min", "unknown")]
    by_place = {name: 0.0 for name, _ in DROP_PLACES}
    for _, place, dropped in rows:
        by_place[place] = by_place.get(place, 0.0) + dropped
    text = ", ".join(f"{name} {by_place[name]:,.0f}" for name, _ in DROP_PLACES)
    lost = sum(by_place.values())
    return [Fact("drops, last 5 min", text, "ok" if lost == 0 else "bad")]


def _registry_facts(scrape: Scrape | None, why: str) -> list[Fact]:
    """The store lag, the spool, the BGP sessions and RIB, from the collector's metrics."""
    labels = ("store lag", "spool", "BGP sessions", "BGP RIB")
    if scrape is None:
        return [Fact(label, f"unknown: {why}", "unknown") for label in labels]
    values = scrape.totals
    facts = []
    lag = values.get("flowenricher_store_lag_seconds")
    if lag is None:
        facts.append(Fact("store lag", "unknown: the collector reports no store metrics here", "unknown"))
    else:
        level: Level = "ok" if lag <= LAG_WARN_S else "warn" if lag <= LAG_BAD_S else "bad"
        text = "every flow received is stored" if lag == 0 else f"the oldest flow not yet stored has waited {_duration(lag)}"
        facts.append(Fact("store lag", text, level))
    if "flowenricher_store_spool_rows" in values or "flowenricher_store_spool_bytes" in values:
        rows = values.get("flowenricher_store_spool_rows", 0.0)
        size = values.get("flowenricher_store_spool_bytes", 0.0)
        pending = values.get("flowenricher_store_pending_rows")
        text = f"{rows:,.0f} rows, {human_bytes(size)}"
        if pending is not None:
            text += f"; {pending:,.0f} rows waiting for the next insert"
        facts.append(Fact("spool", text, "ok" if rows == 0 else "warn"))
    else:
        facts.append(Fact("spool", "unknown: the collector reports no store metrics here", "unknown"))
    facts.append(_session_fact(scrape))
    if "flowenricher_rib_synchronized" in values:
        synced = values["flowenricher_rib_synchronized"] >= 1
        prefixes = values.get("flowenricher_rib_prefixes", 0.0)
        facts.append(Fact("BGP RIB", f"{'following GoBGP' if synced else 'NOT synchronized'}, {prefixes:,.0f} prefixes",
                          "ok" if synced else "bad"))
    else:
        facts.append(Fact("BGP RIB", "unknown: no BGP RIB mirror runs (bgp enrichment off)", "unknown"))
    return facts


def _session_fact(scrape: Scrape) -> Fact:
    """GoBGP's sessions: how many are Established, and the neighbours that are not."""
    answered = scrape.totals.get(ANSWERED_METRIC)
    if answered is None:
        return Fact("BGP sessions", "unknown: the collector does not watch GoBGP's sessions", "unknown")
    stale = "" if answered >= 1 else " (GoBGP does not answer now: as last seen)"
    if answered < 1 and not scrape.sessions:
        return Fact("BGP sessions", "unknown: GoBGP does not answer", "bad")
    if not scrape.sessions:
        return Fact("BGP sessions", "none configured in GoBGP", "warn")
    up = sorted(n for n, v in scrape.sessions.items() if v >= 1)
    down = sorted(n for n, v in scrape.sessions.items() if v < 1)
    text = f"{len(up)} of {len(scrape.sessions)} established"
    if down:
        text += "; down: " + ", ".join(down)
    level: Level = "bad" if not up else "warn" if down or answered < 1 else "ok"
    return Fact("BGP sessions", text + stale, level)


def _blackhole_fact(blackholes: list[Blackhole] | None, why: str) -> Fact:
    if blackholes is None:
        return Fact("blackholes", f"unknown: {why}", "unknown")
    if not blackholes:
        return Fact("blackholes", "none active", "ok")
    states = Counter(b.state for b in blackholes)
    text = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
    return Fact("blackholes", text, "bad" if "failed" in states else "warn" if "requested" in states else "ok")


def chart_range(now: int) -> tuple[int, int]:
    """The charts' [start, end): complete buckets only (a partial last one would look like
    traffic falling)."""
    end = now - now % CHART_STEP
    return end - CHART_HOURS * 3600, end


def _charts(src: Sources, now: int, store_up: bool, store_why: str) -> list[Chart]:
    start, end = chart_range(now)
    titles = (("flows/s", ""), ("bits/s", "b/s"), ("drops per 5 min", ""), ("detections per 5 min", ""))
    if not store_up:
        return [Chart(title, unit, None, store_why) for title, unit in titles]
    charts = []
    try:
        rows = _read("traffic series", lambda: src.series(CHART_STEP, Filters(start, end)))
        charts += [Chart("flows/s", "", [(int(r["t"]), int(r["flows"]) / CHART_STEP) for r in rows]),
                   Chart("bits/s", "b/s", [(int(r["t"]), int(r["bytes"]) * 8 / CHART_STEP) for r in rows])]
    except _Unknown as why:
        charts += [Chart("flows/s", "", None, str(why)), Chart("bits/s", "b/s", None, str(why))]
    try:
        drops = _read("drops series", lambda: src.drops(start, end, CHART_STEP))
        if drops is None:
            charts.append(Chart("drops per 5 min", "", None, "no collector_stats table"))
        else:
            summed: Counter[int] = Counter()
            for t, _, dropped in drops:
                summed[t] += int(dropped)
            charts.append(Chart("drops per 5 min", "", sorted(summed.items())))
    except _Unknown as why:
        charts.append(Chart("drops per 5 min", "", None, str(why)))
    try:
        counts = _read("detection counts", lambda: src.detection_counts(start, end, CHART_STEP))
        charts.append(Chart("detections per 5 min", "", [(t, float(n)) for t, n in counts]))
    except _Unknown as why:
        charts.append(Chart("detections per 5 min", "", None, str(why)))
    return charts


def collect(now: float, zone: tzinfo, src: Sources) -> StatusView:
    """Gather the page; every source is read on its own, none of them can fail the page."""
    t = int(now)
    health: list[Fact] = []
    store_up = src.store_ok()
    store_why = "the flow store does not answer"
    health.append(Fact("store", "answers" if store_up else "DOWN: does not answer a query", "ok" if store_up else "bad"))
    collector = src.collector_ok()
    if collector is None:
        health.append(Fact("collector", "unknown: this API has no collector to ask", "unknown"))
    else:
        health.append(Fact("collector", "answers" if collector else "DOWN: flowenricher run does not answer",
                           "ok" if collector else "bad"))
    collector_why = "the collector does not answer" if collector is False else "not reported"
    exporters: list[Fact] = []
    if store_up:
        last, exporters = _exporter_facts(src, t)
        health.append(last)
        health += _traffic_facts(src, t)
        health += _drop_facts(src, t)
    else:
        health += [Fact(label, f"unknown: {store_why}", "unknown") for label in ("last flow", "flows/s", "bits/s",
                                                                                 "drops")]
    scrape: Scrape | None = None
    registry_why = collector_why
    if collector is not False:
        try:
            scrape = _read("metrics", lambda: registry_values(src.registry))
        except _Unknown as why:
            registry_why = str(why)
    health += _registry_facts(scrape, registry_why)
    blackholes: list[Blackhole] | None = None
    blackholes_why = ""
    try:
        blackholes = _read("blackholes", src.blackholes)
    except _Unknown as why:
        blackholes_why = str(why)
    health.append(_blackhole_fact(blackholes, blackholes_why))

    view = StatusView(now, zone, health, exporters, _charts(src, t, store_up, store_why), blackholes, None, None,
                      None)
    view.backtests = src.backtests()  # this process's memory: cannot be down
    if blackholes is None:
        view.errors.append(f"blackholes: {blackholes_why}")
    if not store_up:
        view.errors.append(f"detections and top talkers: {store_why}")
        return view
    hour = Filters(t - 3600, t + 1)
    try:
        view.top_sources = _read("top sources", lambda: src.top("src_host", hour))
        view.top_destinations = _read("top destinations", lambda: src.top("dst_host", hour))
    except _Unknown as why:
        view.errors.append(f"top talkers: {why}")
    try:
        view.detections = _read("detections", lambda: src.detections(Filters(t - 86400, t + 1)))
    except _Unknown as why:
        view.errors.append(f"detections: {why}")
    return view


# --------------------------------------------------------------------------- HTML


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _when(epoch: float | None, zone: tzinfo) -> str:
    if epoch is None:
        return "never"
    return datetime.fromtimestamp(epoch, UTC).astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %z")


def _stored_time(value: object, zone: tzinfo) -> str:
    """A detections row's time (ISO text from the store) in the appliance's time zone."""
    try:
        return _when(datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp(), zone)
    except ValueError:
        return str(value)


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


def _target(row: dict[str, Any]) -> str:
    """The destination a rule counted per, when it keeps one (address and port)."""
    dst, port = row.get("dst_addr"), row.get("dst_port")
    if dst and port is not None:
        return f"{dst} port {port}"
    return str(dst or (f"port {port}" if port is not None else ""))


def _detections(rows: list[dict[str, Any]] | None, zone: tzinfo) -> str:
    if rows is None:
        return '<p class="down">unavailable</p>'
    return _table(("time", "rule", "key", "address", "towards", "flows", "pps", "actions"),
                  ((_stored_time(r.get("detected_at"), zone), r.get("rule", ""), r.get("key", ""),
                    r.get("address", ""), _target(r), f"{int(r.get('flows') or 0):,}",
                    human(float(r.get("pps") or 0.0)), ", ".join(r.get("actions") or ())) for r in rows),
                  "none in the last 24 hours")


def _state(bh: Blackhole, now: float) -> str:
    """The blackhole's state, and for how long a route not yet confirmed has waited
    (requested and announced say nothing yet about the router)."""
    if bh.state in ("requested", "announced") and bh.waiting_since is not None:
        return f"{bh.state}, not confirmed for {max(now - bh.waiting_since, 0):.0f} s"
    return bh.state


def _reason(bh: Blackhole) -> str:
    """Why the prefix is blackholed: the rule and its evidence, or who asked."""
    if bh.rule:
        evidence = bh.evidence or {}
        parts = [f"rule {bh.rule}"]
        if evidence.get("key"):
            parts.append(f"as {evidence['key']}")
        if evidence.get("flows") is not None:
            parts.append(f"{int(evidence['flows']):,} flows")
        if evidence.get("pps") is not None:
            parts.append(f"{human(float(evidence['pps']))} pps")
        text = ", ".join(parts)
    else:
        text = f"by {bh.source}" + (f" ({bh.role})" if bh.role else "")
    if bh.failed_reason:
        text += f"; failed: {bh.failed_reason}"
    return text


def _blackholes(view: StatusView) -> str:
    if view.blackholes is None:
        return '<p class="down">unavailable</p>'
    zone = view.zone
    return _table(
        ("prefix", "state", "reason", "next hop", "communities", "since", "expires"),
        ((b.prefix, _state(b, view.now), _reason(b), b.next_hop, " ".join(b.communities), _when(b.created_at, zone),
          _when(b.expires_at, zone)) for b in view.blackholes),
        "no active blackholes")


def _backtest_state(job: dict[str, Any]) -> str:
    state = str(job["state"])
    if state in ("queued", "running"):
        progress = job["progress"]
        return f"{state}, {progress['share']:.0%} ({progress['flows']:,} flows, {progress['elapsed_s']:.0f} s)"
    if state == "failed" and job.get("error"):
        return f"failed: {job['error']}"
    return state


def _backtests(jobs: list[dict[str, Any]], zone: tzinfo) -> str:
    """Recent backtests; each row links to the job's JSON (its report once done)."""
    if not jobs:
        return '<p class="empty">none since the API started (POST /api/v1/backtest)</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in ("started", "range", "rules", "state", "detections per rule",
                                                  "report"))
    rows = []
    for job in jobs:
        span = f"{_when(job['from'].timestamp(), zone)} .. {_when(job['to'].timestamp(), zone)}"
        rules = str(job["rules"]) + (" vs compare" if job.get("compare") else "")
        found = ", ".join(f"{rule}: {count:,}" for rule, count in job["detections"].items())
        if job["state"] == "done" and not found:
            found = "no rules"
        cells = [_when(job["created_at"].timestamp(), zone), span, rules, _backtest_state(job), found]
        link = f'<a href="{_e(job["url"])}">JSON</a>'
        rows.append(f'<tr class="backtest {_e(job["state"])}">' + "".join(f"<td>{_e(c)}</td>" for c in cells)
                    + f"<td>{link}</td></tr>")
    return f'<table id="backtests"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


_W, _H, _PAD = 320, 90, 4


def chart_svg(chart: Chart, start: int, end: int, zone: tzinfo) -> str:
    """`chart` as an inline SVG line over [start, end): buckets without a row are zero
    (the rollups and collector_stats hold no row for an empty bucket); "no data" when the
    source has no row at all, the reason when it is unknown."""
    label = f"{chart.title}: "
    if chart.points is None:
        body = f'<text x="{_W / 2}" y="{_H / 2}" text-anchor="middle" class="unknown">unknown: {_e(chart.why)}</text>'
        label += f"unknown: {chart.why}"
    elif not chart.points:
        body = f'<text x="{_W / 2}" y="{_H / 2}" text-anchor="middle" class="nodata">no data</text>'
        label += "no data"
    else:
        values = dict(chart.points)
        buckets = list(range(start, end, CHART_STEP))
        top = max(max(values.values()), 0.0) or 1.0
        span = max(len(buckets) - 1, 1)
        xy = [(_PAD + (_W - 2 * _PAD) * i / span, _H - _PAD - (_H - 2 * _PAD - 12) * values.get(t, 0.0) / top)
              for i, t in enumerate(buckets)]
        line = " ".join(f"{x:.1f},{y:.1f}" for x, y in xy)
        area = f"{_PAD},{_H - _PAD} {line} {_W - _PAD},{_H - _PAD}"
        latest = chart.points[-1][1]
        body = (f'<polygon points="{area}" class="area"/><polyline points="{line}" class="line"/>'
                f'<text x="{_PAD}" y="11" class="axis">max {_e(human(top, chart.unit))}</text>'
                f'<text x="{_W - _PAD}" y="11" text-anchor="end" class="axis">last {_e(human(latest, chart.unit))}'
                "</text>")
        label += f"max {human(top, chart.unit)}"
    first = datetime.fromtimestamp(start, UTC).astimezone(zone).strftime("%H:%M")
    last = datetime.fromtimestamp(end, UTC).astimezone(zone).strftime("%H:%M")
    return (f'<figure class="chart"><figcaption>{_e(chart.title)}</figcaption>'
            f'<svg viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" role="img" aria-label="{_e(label)}">'
            f'<rect x="0" y="0" width="{_W}" height="{_H}" class="frame"/>{body}</svg>'
            f'<div class="axis"><span>{_e(first)}</span><span>{_e(last)}</span></div></figure>')


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.2em;color:#222;background:#fafafa}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.2em 0 .4em}h3{font-size:1em;margin:.4em 0}
table{border-collapse:collapse;background:#fff;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left}th{background:#eee}
td{font-variant-numeric:tabular-nums}
.empty{color:#777}.down{color:#b00}.meta{color:#666;font-size:.85em}
section{display:inline-block;vertical-align:top;margin-right:2em}
ul.health{list-style:none;padding:0;margin:.4em 0;display:flex;flex-wrap:wrap;gap:.4em}
ul.health li{padding:.3em .6em;border-radius:4px;border:1px solid #ccc;background:#fff;font-size:.9em}
ul.health li b{font-weight:600;margin-right:.3em}
li.ok{border-color:#3a3!important;background:#efe!important}li.warn{border-color:#c90!important;background:#ffd!important}
li.bad{border-color:#c33!important;background:#fdd!important}li.unknown{border-color:#999!important;color:#555;
background:#eee!important}
.charts{display:flex;flex-wrap:wrap;gap:1em}
figure.chart{margin:0;background:#fff;border:1px solid #ddd;padding:.3em}
figcaption{font-size:.85em;color:#444}
svg .frame{fill:#fff}svg .line{fill:none;stroke:#2766b0;stroke-width:1.5}svg .area{fill:#dbe8f7}
svg text{font-size:10px;fill:#555}svg .nodata{fill:#777;font-size:13px}svg .unknown{fill:#b00;font-size:11px}
div.axis{display:flex;justify-content:space-between;font-size:.75em;color:#777}
"""


def _facts(facts: list[Fact]) -> str:
    return "".join(f'<li class="{f.level}"><b>{_e(f.label)}</b>{_e(f.text)}</li>' for f in facts)


def render(view: StatusView) -> str:
    """The page's HTML; every value is escaped."""
    zone = view.zone
    start, end = chart_range(int(view.now))
    charts = "".join(chart_svg(c, start, end, zone) for c in view.charts)
    exporters = (f'<h3>Last flow per exporter</h3><ul class="health exporters">{_facts(view.exporters)}</ul>'
                 if view.exporters else "")
    problems = "".join(f'<p class="down">{_e(line)}</p>' for line in view.errors)
    count = "?" if view.blackholes is None else str(len(view.blackholes))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="30">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>flowenricher status</title><style>{_STYLE}</style></head>
<body>
<h1>flowenricher</h1>
<p class="meta">{_e(_when(view.now, zone))} &middot; refreshes every 30 s &middot;
<a href="/docs">API (Swagger)</a> &middot; <a href="/redoc">API reference</a> &middot; <a href="/metrics">raw
counters</a></p>
<ul class="health" id="health">{_facts(view.health)}</ul>
{exporters}
{problems}
<h2>Last {CHART_HOURS} hours</h2>
<div class="charts">{charts}</div>
<h2>Recent detections</h2>
{_detections(view.detections, zone)}
<h2>Active blackholes ({count})</h2>
{_blackholes(view)}
<h2>Top talkers, last hour</h2>
<section><h3>sources</h3>{_top(view.top_sources)}</section>
<section><h3>destinations</h3>{_top(view.top_destinations)}</section>
<h2>Backtests</h2>
{_backtests(view.backtests, zone)}
</body></html>
"""
