"""GoBGP's sessions as metrics and on the status page, against a real gobgpd peering with
a real BIRD (tests/support/bgp_lab.py): a session BIRD takes down shows as down, a
gobgpd that dies shows as "does not answer" with the last seen state, and the status
page's line reads those metrics."""

from __future__ import annotations

from datetime import UTC

from prometheus_client import CollectorRegistry
from support.bgp_lab import BIRD_V4, BIRD_V6, BgpLab, StaticRoute, bgp_lab_fixture, wait_until  # noqa: F401

from appliance.api import status
from appliance.flowenricher.bgp.sessions import ACCEPTED_METRIC, ANSWERED_METRIC, SESSION_METRIC, SessionWatch

ROUTES = [StaticRoute("198.51.100.0/24", (64500,)), StaticRoute("2001:db8:100::/48", (64500,))]


def _value(registry: CollectorRegistry, name: str, neighbor: str | None = None) -> float | None:
    return registry.get_sample_value(name, {"neighbor": neighbor} if neighbor else {})


def _line(registry: CollectorRegistry) -> tuple[str, str]:
    fact = status._session_fact(status.registry_values(registry))
    return fact.level, fact.text


def test_sessions_follow_gobgpd_and_bird(bgp_lab: BgpLab) -> None:
    bgp_lab.start(ROUTES)
    registry = CollectorRegistry()
    watch = SessionWatch(bgp_lab.api_target, registry, interval_s=0.2, timeout_s=1.0)
    try:
        bgp_lab.wait_established()
        sessions = watch.poll()
        assert sessions is not None
        assert sorted(s.neighbor for s in sessions) == sorted([BIRD_V4, BIRD_V6])
        assert all(s.state == "established" and s.peer_as == 65000 and s.since for s in sessions)
        assert _value(registry, ANSWERED_METRIC) == 1
        assert _value(registry, SESSION_METRIC, BIRD_V4) == 1 and _value(registry, SESSION_METRIC, BIRD_V6) == 1
        wait_until(lambda: watch.poll() and _value(registry, ACCEPTED_METRIC, BIRD_V4) == 1,
                   "BIRD's IPv4 route accepted by GoBGP")
        assert _line(registry) == ("ok", "2 of 2 established")

        watch.start()  # the thread from here on
        bgp_lab.birdc("disable", "gobgp6")
        wait_until(lambda: _value(registry, SESSION_METRIC, BIRD_V6) == 0, "the IPv6 session seen down")
        assert _value(registry, SESSION_METRIC, BIRD_V4) == 1
        assert _line(registry) == ("warn", f"1 of 2 established; down: {BIRD_V6}")

        bgp_lab.kill_gobgpd()
        wait_until(lambda: _value(registry, ANSWERED_METRIC) == 0, "GoBGP seen as not answering")
        level, text = _line(registry)
        assert level == "warn" and text.endswith("(GoBGP does not answer now: as last seen)"), text
    finally:
        watch.close()


def test_no_gobgpd_at_all() -> None:
    """Nothing listens on the socket: 'does not answer', never an exception, and the
    rendered page carries the line."""
    registry = CollectorRegistry()
    watch = SessionWatch("unix:///nonexistent/gobgp.sock", registry, timeout_s=0.5)
    try:
        assert watch.poll() is None
        assert _value(registry, ANSWERED_METRIC) == 0
        assert _line(registry) == ("bad", "unknown: GoBGP does not answer")
        facts = status._registry_facts(status.registry_values(registry), "")
        page = status.render(status.StatusView(0, UTC, facts, [], [], [], [], [], []))
        assert "BGP sessions" in page and "unknown: GoBGP does not answer" in page
    finally:
        watch.close()
