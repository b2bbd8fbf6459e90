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
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from support.bgp_lab import BIRD_V4, BgpLab, bgp_lab_fixture, wait_until

from appliance.flowenricher.bgp.announcer import GoBgpAnnouncer
from appliance.flowenricher.blackhole.manager import BlackholeManager, Defaults
from appliance.flowenricher.blackhole.safety import Refused, SafetyPolicy, SafetySettings, networks
from appliance.flowenricher.blackhole.state import StateDB

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
