"""Blackholes through real GoBGP to real BIRD (the router's side), with the manager.

The lab (support.bgp_lab): gobgpd and BIRD 2 peering over IPv4 and IPv6 in a network
namespace of the test; BIRD imports everything GoBGP sends, so ``birdc show route``
is what the router would hold.  The manager's clock is driven by the test so that
expiry needs no waiting; everything else (gRPC, BGP, BIRD's RIB) is real and timed by
polling with deadlines.
"""

from __future__ import annotations

import json
import re
import time
from functools import partial
from pathlib import Path

import grpc
import pytest
from prometheus_client import CollectorRegistry
from support.bgp_lab import BIRD_V4, GOBGPD, BgpLab, bgp_lab_fixture, wait_until
from support.recording_gobgp import RecordingGoBGP

from appliance.flowenricher.bgp.client import GoBgpClient, GoBgpError, _path, rpc_error
from appliance.flowenricher.bgp.stubs import attribute_pb2 as attrs_pb
from appliance.flowenricher.bgp.stubs import gobgp_pb2 as api
from appliance.flowenricher.blackhole.announcer import GoBgpAnnouncer
from appliance.flowenricher.blackhole.manager import AnnounceRefused, BlackholeManager, Defaults
from appliance.flowenricher.blackhole.safety import Refused, SafetyPolicy, SafetySettings, networks
from appliance.flowenricher.blackhole.state import StateDB
from appliance.flowenricher.common.bgp_values import parse_prefix

__all__ = ["bgp_lab_fixture"]


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def _manager(tmp: Path, lab: BgpLab, clock: Clock) -> tuple[BlackholeManager, GoBgpAnnouncer]:
    announcer = GoBgpAnnouncer(lab.api_target)
    safety = SafetySettings(never=networks(["10.255.0.0/24", "fd00:255::/64"]), own=networks(["84.54.49.0/24"]))
    mgr = BlackholeManager(StateDB(f"sqlite:///{tmp}/state.db"), announcer, SafetyPolicy(safety), tmp / "blackholes.txt",
                           Defaults(), CollectorRegistry(), clock, reconcile_interval_s=0)
    return mgr, announcer


def test_blackhole_reaches_bird_expires_and_survives_restarts(bgp_lab: BgpLab, tmp_path: Path) -> None:
    bgp_lab.start()
    bgp_lab.wait_established()
    clock = Clock()
    mgr, announcer = _manager(tmp_path, bgp_lab, clock)
    try:
        mgr.announce("203.0.113.9", communities=["65535:666", "65001:666"], duration_s=60, rule="test")
        mgr.announce("2001:db8::9", duration_s=600, rule="test")
        wait_until(lambda: bgp_lab.route("203.0.113.9/32"), "the /32 in BIRD")
        wait_until(lambda: bgp_lab.route("2001:db8::9/128"), "the /128 in BIRD")
        v4 = bgp_lab.route("203.0.113.9/32")
        assert re.search(r"BGP\.next_hop: 192\.0\.2\.1", v4), v4
        assert "(65535,666)" in v4 and "(65001,666)" in v4, v4
        v6 = bgp_lab.route("2001:db8::9/128")
        assert "100::1" in v6 and "(65535,666)" in v6, v6
        assert announcer.announced(["203.0.113.9/32", "2001:db8::9/128", "203.0.113.10/32", BIRD_V4]) == \
            {"203.0.113.9/32", "2001:db8::9/128"}  # BIRD's own route is not ours

        # Never-blackhole list and lengths: refused, nothing reaches BIRD.
        for prefix in (BIRD_V4, "198.51.100.0/24"):
            with pytest.raises(Refused):
                mgr.announce(prefix)
        assert not bgp_lab.route("198.51.100.0/24")

        # gobgpd crashes and comes back empty: the next tick announces again.
        bgp_lab.kill_gobgpd()
        mgr.tick()  # GoBGP away: counted, nothing lost
        bgp_lab.start_gobgpd()
        bgp_lab.wait_established()
        def back() -> bool:
            mgr.tick()
            return bool(bgp_lab.route("203.0.113.9/32"))

        wait_until(back, "the /32 back after gobgpd restart")

        # flowenricher restarts (a new manager on the same state) after the IPv4 one expired.
        mgr.state.close()
        announcer.close()
        clock.now += 120
        mgr, announcer = _manager(tmp_path, bgp_lab, clock)
        mgr.tick()
        wait_until(lambda: not bgp_lab.route("203.0.113.9/32"), "the expired /32 gone from BIRD")
        assert bgp_lab.route("2001:db8::9/128")
        assert [b.prefix for b in mgr.active()] == ["2001:db8::9/128"]

        assert mgr.withdraw("2001:db8::9/128") is not None
        wait_until(lambda: not bgp_lab.route("2001:db8::9/128"), "the withdrawn /128 gone from BIRD")
        actions = [json.loads(x)["action"] for x in (tmp_path / "blackholes.txt").read_text().splitlines()]
        assert actions.count("announce") == 2 and actions.count("withdraw") == 2
    finally:
        mgr.state.close()
        announcer.close()


def test_ipv6_attacker_of_an_original_rule_gets_the_ipv6_next_hop(bgp_lab: BgpLab, tmp_path: Path) -> None:
    """A rule in the original format (one IPv4 blackhole_next_hop) catches an IPv6
    scanner: the /128 reaches BIRD with the configured IPv6 next hop (an IPv4 one made
    BIRD drop it: "mismatched address family"), the IPv4 attacker keeps the rule's."""
    bgp_lab.start()
    bgp_lab.wait_established()
    mgr, announcer = _manager(tmp_path, bgp_lab, Clock())
    try:
        for address in ("198.51.100.66/32", "2001:db8:bad::66/128"):
            mgr.request(address, "192.0.2.66", ["65001:666"], 600, "scan", {"key": "src"})
        wait_until(lambda: bgp_lab.route("2001:db8:bad::66/128"), "the /128 in BIRD")
        wait_until(lambda: bgp_lab.route("198.51.100.66/32"), "the /32 in BIRD")
        v6 = bgp_lab.route("2001:db8:bad::66/128")
        assert re.search(r"BGP\.next_hop: 100::1\b", v6) and "(65001,666)" in v6, v6
        assert re.search(r"BGP\.next_hop: 192\.0\.2\.66\b", bgp_lab.route("198.51.100.66/32"))
        assert {(bh.prefix, bh.next_hop, bh.state) for bh in mgr.active()} == {
            ("198.51.100.66/32", "192.0.2.66", "announced"), ("2001:db8:bad::66/128", "100::1", "announced")}
    finally:
        mgr.state.close()
        announcer.close()


def test_a_refused_blackhole_never_shows_as_announced(bgp_lab: BgpLab, tmp_path: Path) -> None:
    """A row the announcer cannot send (stored by a version that did not check its
    community) fails at once on the next tick: state failed with the reason, nothing in
    GoBGP or BIRD, counted, not retried; the good one beside it is in BIRD."""
    bgp_lab.start()
    bgp_lab.wait_established()
    registry = CollectorRegistry()
    announcer = GoBgpAnnouncer(bgp_lab.api_target)
    mgr = BlackholeManager(StateDB(f"sqlite:///{tmp_path}/state.db"), announcer, SafetyPolicy(SafetySettings()),
                           tmp_path / "blackholes.txt", Defaults(), registry, Clock(), reconcile_interval_s=0)
    try:
        mgr.state.add(prefix="203.0.113.7/32", next_hop="192.0.2.1", communities=["65001:70000"], source="api",
                      rule="", evidence={}, created_at=time.time(), expires_at=None, announced=False)
        mgr.announce("203.0.113.8", communities=["216285:666"])
        for _ in range(3):
            mgr.tick()
        wait_until(lambda: bgp_lab.route("203.0.113.8/32"), "the good /32 in BIRD")
        failed = [bh for bh in mgr.state.history() if bh.prefix == "203.0.113.7/32"]
        assert [bh.state for bh in failed] == ["failed"]
        assert "the value after the AS number is 0-65535" in failed[0].failed_reason
        assert announcer.announced(["203.0.113.7/32", "203.0.113.8/32"]) == {"203.0.113.8/32"}
        assert not bgp_lab.route("203.0.113.7/32")
        assert registry.get_sample_value("flowenricher_blackhole_failed_total", {"source": "api"}) == 1
        assert registry.get_sample_value("flowenricher_blackhole_gobgp_errors_total") == 0  # no retry loop
    finally:
        mgr.state.close()
        announcer.close()


# What the double and the production path (GoBgpAnnouncer -> gobgpd -> BIRD) must agree
# on: (prefix, next hop, communities) -> accepted.  Every accepted route must also reach
# BIRD with its next hop: gobgpd takes far more (common/bgp_values.py), which is why the
# announcer checks first.
VERDICT_CASES = [
    ("203.0.113.1/32", "192.0.2.1", ("65535:666",), True),
    ("203.0.113.2/32", "192.0.2.1", ("216285:666",), True),
    ("203.0.113.3/32", "192.0.2.1", ("65001:666:7", "no-export", "blackhole"), True),
    ("203.0.113.4", "192.0.2.1", (), True),
    ("2001:db8::1/128", "100::1", ("65535:666",), True),
    ("2001:db8::2/128", "192.0.2.1", (), False),  # next hop of the other family
    ("203.0.113.5/32", "100::1", (), False),
    ("203.0.113.6/32", "192.0.2.1", ("65001:65536",), False),
    ("203.0.113.7/32", "192.0.2.1", ("1:2:4294967296",), False),
    ("203.0.113.8/32", "192.0.2.1", ("666",), False),
    ("203.0.113.9/33", "192.0.2.1", (), False),
    ("203.0.113.10/24", "192.0.2.1", (), False),  # host bits set
    ("203.0.113.300/32", "192.0.2.1", (), False),
    ("203.0.113.11/32", "0.0.0.0", (), False),
    ("203.0.113.12/32", "224.0.0.1", (), False),
    ("203.0.113.13/32", "192.0.2.300", (), False),
    ("2001:db8::3/128", "fe80::1", (), False),
]


@pytest.mark.parametrize("backend", ["double", "gobgpd"])
def test_the_double_refuses_what_gobgpd_refuses(backend: str, request: pytest.FixtureRequest) -> None:
    if backend == "double":
        target: RecordingGoBGP | GoBgpAnnouncer = RecordingGoBGP()
    else:
        lab: BgpLab = request.getfixturevalue("bgp_lab")
        lab.start()
        lab.wait_established()
        target = GoBgpAnnouncer(lab.api_target)
    try:
        verdicts = {}
        for prefix, hop, communities, _ in VERDICT_CASES:
            try:
                target.announce(prefix, hop, communities)
                verdicts[prefix] = True
            except AnnounceRefused:
                verdicts[prefix] = False
        assert verdicts == {prefix: accepted for prefix, _, _, accepted in VERDICT_CASES}
        accepted = {str(parse_prefix(p)): hop for p, hop, _, ok in VERDICT_CASES if ok}
        assert target.announced([*accepted, "203.0.113.5/32", "2001:db8::2/128"]) == set(accepted)
        if backend == "gobgpd":
            for prefix, hop in accepted.items():
                wait_until(partial(lab.route, prefix), f"{prefix} in BIRD")
                assert f"BGP.next_hop: {hop}" in lab.route(prefix), lab.route(prefix)
            route = lab.route("203.0.113.3/32")  # large and well-known communities as announced
            assert "(65001, 666, 7)" in route and "(65535,65281)" in route and "(65535,666)" in route, route
            lab.wait_established(timeout=2)  # no route reset a session
        # Confirmed: sent to an Established peer of the family.  Both agree with the IPv6
        # session up, and with it down (BIRD's side disabled; the double's `established`).
        assert target.confirmed([*accepted, "203.0.113.5/32"]) == set(accepted)
        v4 = {p for p in accepted if ":" not in p}
        if isinstance(target, RecordingGoBGP):
            target.established = {4}
        else:
            lab.birdc("disable", "gobgp6")
        wait_until(lambda: target.confirmed(accepted) == v4, "only the IPv4 routes confirmed with IPv6 down")
    finally:
        if isinstance(target, GoBgpAnnouncer):
            target.close()


def test_gobgpd_refusals_and_outages_are_told_apart(bgp_lab: BgpLab) -> None:
    """What gobgpd answers (gRPC status): a refusal is UNKNOWN with its reason (final), a
    stopped gobgpd UNAVAILABLE and one without its config "hasn't started yet" (both
    retried).  The refusal is provoked with a raw path, past the client's checks."""
    bgp_lab.start()
    bgp_lab.wait_established()

    def add_raw(target: str, next_hop: str) -> GoBgpError:
        with GoBgpClient(target, timeout=2) as client:
            path = _path("203.0.113.1/32", "192.0.2.1", [], None)
            path.pattrs[1].Pack(attrs_pb.NextHopAttribute(next_hop=next_hop))
            try:
                client.stub.AddPath(api.AddPathRequest(table_type=api.GLOBAL, path=path), timeout=2)
            except grpc.RpcError as err:
                return rpc_error(target, "AddPath", err)
        raise AssertionError(f"gobgpd took next hop {next_hop}")

    refused = add_raw(bgp_lab.api_target, "192.0.2.300")
    assert refused.code == grpc.StatusCode.UNKNOWN and refused.refused
    assert "invalid nexthop address: 192.0.2.300" in str(refused)
    bgp_lab.kill_gobgpd()
    down = add_raw(bgp_lab.api_target, "192.0.2.1")
    assert down.code == grpc.StatusCode.UNAVAILABLE and not down.refused
    # gobgpd up without a config: its BGP server is not started yet.
    assert bgp_lab.ns is not None
    socket = bgp_lab.dir / "bare.sock"
    bgp_lab.net.spawn(bgp_lab.ns, [GOBGPD, "--api-hosts", f"unix://{socket}", "--pprof-disable", "-p"],
                      name="gobgpd-bare").wait_for(socket.exists, 10, "gobgpd's API socket")
    early = add_raw(f"unix://{socket}", "192.0.2.1")
    assert "hasn't started yet" in str(early) and not early.refused


def test_confirmed_follows_the_router_sessions(bgp_lab: BgpLab, tmp_path: Path) -> None:
    """Confirmed means sent: in gobgpd's adj-RIB-out towards the Established peer of the
    route's family.  BIRD's IPv6 session disabled: the /128 drops back to announced (and
    out of BIRD), is told as unconfirmed after the timeout, and comes back confirmed with
    the session.  gobgpd killed: nothing stays confirmed (back to requested), and after
    its restart everything is confirmed and in BIRD again."""
    bgp_lab.start()
    bgp_lab.wait_established()
    clock = Clock()
    announcer = GoBgpAnnouncer(bgp_lab.api_target)
    notices: list[tuple[str, str]] = []

    class Notify:
        def blackhole_notice(self, action: str, prefix: str, source: str, rule: str, reason: str) -> None:
            notices.append((action, prefix))

    safety = SafetySettings(never=networks(["10.255.0.0/24", "fd00:255::/64"]), own=networks(["84.54.49.0/24"]))
    mgr = BlackholeManager(StateDB(f"sqlite:///{tmp_path}/state.db"), announcer, SafetyPolicy(safety), None,
                           Defaults(), CollectorRegistry(), clock, reconcile_interval_s=0, notifier=Notify(),
                           confirm_timeout_s=5)

    def states() -> dict[str, str]:
        return {b.prefix: b.state for b in mgr.active()}

    def ticked_until(expected: dict[str, str]) -> bool:
        mgr.tick()
        return states() == expected

    both = {"203.0.113.9/32": "confirmed", "2001:db8::9/128": "confirmed"}
    try:
        mgr.announce("203.0.113.9")
        mgr.announce("2001:db8::9")
        mgr.tick()
        assert states() == both
        wait_until(lambda: bgp_lab.route("2001:db8::9/128") and bgp_lab.route("203.0.113.9/32"), "both in BIRD")

        bgp_lab.birdc("disable", "gobgp6")
        wait_until(partial(ticked_until, {"203.0.113.9/32": "confirmed", "2001:db8::9/128": "announced"}),
                   "the /128 no longer confirmed with BIRD's IPv6 session down")
        assert not bgp_lab.route("2001:db8::9/128")
        assert ("lost", "2001:db8::9/128") in notices and ("unconfirmed", "2001:db8::9/128") not in notices
        clock.now += 5
        mgr.tick()
        assert ("unconfirmed", "2001:db8::9/128") in notices

        bgp_lab.birdc("enable", "gobgp6")
        wait_until(partial(ticked_until, both), "the /128 confirmed again", timeout=20)
        wait_until(lambda: bgp_lab.route("2001:db8::9/128"), "the /128 back in BIRD")

        bgp_lab.kill_gobgpd()
        mgr.tick()
        assert states() == {"203.0.113.9/32": "requested", "2001:db8::9/128": "requested"}
        bgp_lab.start_gobgpd()
        bgp_lab.wait_established()
        wait_until(partial(ticked_until, both), "both confirmed after gobgpd's restart", timeout=20)
        wait_until(lambda: bgp_lab.route("2001:db8::9/128") and bgp_lab.route("203.0.113.9/32"),
                   "both back in BIRD")
    finally:
        mgr.state.close()
        announcer.close()
