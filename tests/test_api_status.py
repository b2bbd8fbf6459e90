"""The status page's collect and render on their own: whatever a source raises, the page
renders and says which items are unknown and why; charts are inline SVG scaled to their
data, "no data" when a source has no rows."""

from __future__ import annotations

import re
from datetime import UTC
from typing import Any

from prometheus_client import CollectorRegistry, Gauge

from appliance.api import status
from appliance.api.errors import Unavailable
from appliance.api.queries import Filters

NOW = 1_800_000_000


def _broken(*_: Any) -> Any:
    raise RuntimeError("boom: a bug, not an outage")


def _sources(**over: Any) -> status.Sources:
    parts: dict[str, Any] = {
        "store_ok": lambda: True, "collector_ok": lambda: True, "blackholes": list, "registry": CollectorRegistry(),
        "exporters": lambda _f: [{"exporter": "10.0.0.1", "last_seen": NOW - 5},
                                 {"exporter": "10.0.0.2", "last_seen": NOW - 900}],
        "series": lambda step, f: [{"t": f.start, "flows": 6 * step, "bytes": 1000 * step}],
        "drops": lambda start, end, step: [(start, "kernel", 3.0), (start, "decoder", 2.0)],
        "detection_counts": lambda start, end, step: [],
        "top": lambda by, f: [], "detections": lambda f: [],
    }
    parts.update(over)
    return status.Sources(**parts)


def _facts(view: status.StatusView) -> dict[str, tuple[str, str]]:
    return {f.label: (f.level, f.text) for f in view.health}


def test_every_source_failing_still_renders_and_says_why() -> None:
    registry = CollectorRegistry()
    registry.register(_Failing())
    src = _sources(blackholes=_broken, registry=registry, exporters=_broken, series=_broken, drops=_broken,
                   detection_counts=_broken, top=_broken, detections=_broken)
    view = status.collect(NOW, UTC, src)
    page = status.render(view)
    facts = _facts(view)
    assert facts["store"] == ("ok", "answers")  # the checks themselves answered
    for label in ("last flow", "flows/s", "bits/s", "drops", "store lag", "spool", "BGP sessions", "BGP RIB",
                  "blackholes"):
        assert facts[label] == ("unknown", "unknown: RuntimeError (see the API log)"), label
    assert "boom" not in page  # the exception's text goes to the log, not the page
    assert page.count("<svg") == 4 and page.count("unknown: RuntimeError (see the API log)</text>") == 4


def test_an_outage_gives_its_reason() -> None:
    def down(*_: Any) -> Any:
        raise Unavailable("the collector (flowenricher run) is not answering; see the API's log")

    view = status.collect(NOW, UTC, _sources(collector_ok=lambda: False, blackholes=down))
    facts = _facts(view)
    assert facts["collector"] == ("bad", "DOWN: flowenricher run does not answer")
    assert facts["blackholes"] == ("unknown", "unknown: the collector (flowenricher run) is not answering; "
                                              "see the API's log")
    assert facts["spool"] == ("unknown", "unknown: the collector does not answer")
    assert facts["store lag"] == facts["BGP sessions"] == ("unknown", "unknown: the collector does not answer")


def test_health_line_values() -> None:
    registry = CollectorRegistry()
    Gauge("flowenricher_store_spool_rows", "", registry=registry).set(1200)
    Gauge("flowenricher_store_spool_bytes", "", registry=registry).set(2_500_000)
    Gauge("flowenricher_rib_synchronized", "", registry=registry).set(1)
    Gauge("flowenricher_rib_prefixes", "", ["family"], registry=registry).labels("ipv4").set(950_000)
    lag = Gauge("flowenricher_store_lag_seconds", "", registry=registry)
    lag.set(2)
    Gauge("flowenricher_bgp_sessions_answered", "", registry=registry).set(1)
    up = Gauge("flowenricher_bgp_session_established", "", ["neighbor"], registry=registry)
    up.labels("192.0.2.1").set(1)
    up.labels("2001:db8::1").set(1)
    view = status.collect(NOW, UTC, _sources(registry=registry))
    facts = _facts(view)
    assert facts["flows/s"] == ("ok", "6") and facts["bits/s"] == ("ok", "8.0 kb/s")
    assert facts["last flow"] == ("ok", "5 s ago (2 exporters)")
    assert [(f.label, f.level, f.text) for f in view.exporters] == [
        ("10.0.0.1", "ok", "5 s ago"), ("10.0.0.2", "warn", "15 min ago")]
    assert facts["drops, last 5 min"] == ("bad", "kernel 3, decoder 2, store 0")
    assert facts["spool"] == ("warn", "1,200 rows, 2.5 MB")
    assert facts["BGP RIB"] == ("ok", "following GoBGP, 950,000 prefixes")
    assert facts["BGP sessions"] == ("ok", "2 of 2 established")
    assert facts["store lag"] == ("ok", "the oldest flow not yet stored has waited 2 s")
    lag.set(0)
    up.labels("192.0.2.1").set(0)
    up.labels("2001:db8::1").set(0)
    facts = _facts(status.collect(NOW, UTC, _sources(registry=registry)))
    assert facts["store lag"] == ("ok", "every flow received is stored")
    assert facts["BGP sessions"] == ("bad", "0 of 2 established; down: 192.0.2.1, 2001:db8::1")
    lag.set(900)
    assert _facts(status.collect(NOW, UTC, _sources(registry=registry)))["store lag"] == (
        "bad", "the oldest flow not yet stored has waited 15 min")


def test_chart_svg_scales_and_says_no_data() -> None:
    start, end = status.chart_range(NOW)
    assert end % status.CHART_STEP == 0 and end <= NOW and end - start == status.CHART_HOURS * 3600
    drawn = status.chart_svg(status.Chart("flows/s", "", [(start, 10.0), (end - status.CHART_STEP, 40.0)]),
                             start, end, UTC)
    points = re.search(r'<polyline points="([^"]+)"', drawn)
    assert points is not None
    xy = [tuple(map(float, p.split(","))) for p in points.group(1).split()]
    assert len(xy) == status.CHART_HOURS * 3600 // status.CHART_STEP
    assert xy[-1][1] < xy[0][1] < xy[1][1]  # the maximum at the top, the empty buckets on the floor
    assert "max 40" in drawn
    empty = status.chart_svg(status.Chart("drops", "", []), start, end, UTC)
    assert "no data" in empty and "<polyline" not in empty
    unknown = status.chart_svg(status.Chart("drops", "", None, "no <table>"), start, end, UTC)
    assert "unknown: no &lt;table&gt;" in unknown


class _Failing:
    """A registry collector that raises, as a broken metrics source would."""

    def collect(self) -> Any:
        raise RuntimeError("boom")

    def describe(self) -> list[Any]:
        return []


def test_filters_given_to_the_sources() -> None:
    seen: dict[int, Filters] = {}

    def series(step: int, f: Filters) -> list[dict[str, Any]]:
        seen.setdefault(step, f)
        return []

    status.collect(NOW + 30, UTC, _sources(series=series))
    minute = NOW + 30 - (NOW + 30) % 60
    assert seen[60] == Filters(minute - 60, minute)  # the last complete minute
    start, end = status.chart_range(NOW + 30)
    assert seen[status.CHART_STEP] == Filters(start, end)
