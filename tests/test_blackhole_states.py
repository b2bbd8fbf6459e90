"""Property: the blackhole states tell the truth about BIRD, whatever happens.

Real gobgpd and BIRD (support.bgp_lab: BIRD imports everything, so its table is what
the router holds).  Hypothesis draws sequences of detections (source bans and victim
RTBH, IPv4 and IPv6), API calls (announce, withdraw), time passing (expiry),
restarts of flowenricher (a new manager on the same state DB), gobgpd killed and
started again, and BIRD's sessions disabled and enabled.  After every step and a tick:

* a blackhole said to be confirmed or verified is in BIRD (allowing BGP its few
  milliseconds), and with gobgpd down none is said to be anything but requested;
* once gobgpd and the sessions are up again, every active blackhole becomes confirmed
  and BIRD holds exactly the active ones: none stays requested or announced, none is
  left behind in the router.

Each example is a few seconds of real BGP (a gobgpd restart waits for BIRD to
reconnect), so the example count is small; the in-memory rules of the same manager get
thousands of sequences in test_blackhole_manager.py.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from support.bgp_lab import BgpLab, bgp_lab_fixture

from appliance.flowenricher.blackhole.announcer import GoBgpAnnouncer
from appliance.flowenricher.blackhole.manager import AnnounceError, BlackholeManager, Defaults
from appliance.flowenricher.blackhole.safety import Refused, SafetyPolicy, SafetySettings, networks
from appliance.flowenricher.blackhole.state import IN_GOBGP, StateDB

__all__ = ["bgp_lab_fixture"]

SOURCES = ("198.51.100.1", "198.51.100.2", "2001:db8:bad::1", "2001:db8:bad::2")
VICTIMS = ("84.54.49.10", "2a14:4280::10")
ALL = tuple(f"{a}/{128 if ':' in a else 32}" for a in SOURCES + VICTIMS)
SAFETY = SafetySettings(never=networks(["10.255.0.0/24", "fd00:255::/64"]),
                        own=networks(["84.54.49.0/24", "2a14:4280::/32"]), max_active=10, max_per_minute=1000)

step = st.one_of(
    st.tuples(st.just("detect"), st.sampled_from(SOURCES), st.sampled_from([30.0, 120.0])),
    st.tuples(st.just("victim"), st.sampled_from(VICTIMS), st.sampled_from([30.0, 120.0])),
    st.tuples(st.just("api-announce"), st.sampled_from(SOURCES + VICTIMS), st.just(0.0)),
    st.tuples(st.just("api-withdraw"), st.sampled_from(SOURCES + VICTIMS), st.just(0.0)),
    st.tuples(st.just("time"), st.just(""), st.sampled_from([20.0, 60.0, 200.0])),
    st.tuples(st.just("restart"), st.just(""), st.just(0.0)),
    st.tuples(st.just("gobgpd-down"), st.just(""), st.just(0.0)),
    st.tuples(st.just("gobgpd-up"), st.just(""), st.just(0.0)),
    st.tuples(st.sampled_from(["session-down", "session-up"]), st.sampled_from(["gobgp4", "gobgp6"]), st.just(0.0)),
)


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


class Run:
    """One example: a manager on its own state DB, beside the shared lab."""

    def __init__(self, lab: BgpLab, where: Path) -> None:
        self.lab = lab
        self.where = where
        self.clock = Clock()
        self.announcer = GoBgpAnnouncer(lab.api_target, timeout=2.0)
        self.manager = self._manager()
        self.disabled: set[str] = set()

    def _manager(self) -> BlackholeManager:
        return BlackholeManager(StateDB(f"sqlite:///{self.where}/state.db"), self.announcer, SafetyPolicy(SAFETY),
                                None, Defaults(), CollectorRegistry(), self.clock, reconcile_interval_s=0,
                                confirm_timeout_s=5)

    def bird(self) -> set[str]:
        """The prefixes of this test's pool that BIRD holds from gobgpd."""
        held = set()
        for protocol in ("gobgp4", "gobgp6"):
            for line in self.lab.birdc("show", "route", "protocol", protocol).splitlines():
                first = line.split(maxsplit=1)[0] if line.strip() else ""
                if first in ALL:
                    held.add(first)
        return held

    def states(self) -> dict[str, str]:
        return {b.prefix: b.state for b in self.manager.active()}

    def apply(self, action: str, what: str, value: float) -> None:
        mgr = self.manager
        with contextlib.suppress(Refused):
            if action == "detect":
                mgr.request(what, None, ["65001:666"], value, "scan", {"key": "src"})
            elif action == "victim":
                mgr.request(what, None, ["65535:666"], value, "ddos", {"key": "dst"})
            elif action == "api-announce":
                mgr.announce(what, communities=["216285:666"], duration_s=300)
            elif action == "api-withdraw":
                mgr.withdraw(what)
        if action == "time":
            self.clock.now += value
        elif action == "restart":
            mgr.state.close()
            self.manager = self._manager()
        elif action == "gobgpd-down" and self.lab.gobgpd is not None:
            self.lab.kill_gobgpd()
        elif action == "gobgpd-up" and self.lab.gobgpd is None:
            self.lab.start_gobgpd()
        elif action == "session-down":
            self.lab.birdc("disable", what)
            self.disabled.add(what)
        elif action == "session-up":
            self.lab.birdc("enable", what)
            self.disabled.discard(what)
        self.manager.tick()

    def check(self, where: str) -> None:
        """After a step: what is said to be proven is in BIRD; nothing is proven without gobgpd."""
        states = self.states()
        if self.lab.gobgpd is None:
            assert all(s == "requested" for s in states.values()), f"{where}: gobgpd is down, yet {states}"
            return
        proven = {p for p, s in states.items() if s in ("confirmed", "verified")}
        deadline = time.monotonic() + 2.0
        while not proven <= self.bird():
            if time.monotonic() > deadline:
                self.manager.tick()
                still = {p for p, s in self.states().items() if s in ("confirmed", "verified")}
                assert still <= self.bird(), f"{where}: said confirmed, not in BIRD: {still - self.bird()}"
                break
            time.sleep(0.02)

    def settle(self, where: str) -> None:
        """Everything up again: every active blackhole confirmed, BIRD holds exactly them."""
        if self.lab.gobgpd is None:
            self.lab.start_gobgpd()
        for protocol in sorted(self.disabled):
            self.lab.birdc("enable", protocol)
        self.disabled.clear()
        self.lab.wait_established()
        deadline = time.monotonic() + 20
        while True:
            self.manager.tick()
            states = self.states()
            held = self.bird()
            if all(s == "confirmed" for s in states.values()) and held == set(states):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{where}: not settled in 20 s: states {states}, BIRD holds {sorted(held)}")
            time.sleep(0.05)

    def close(self) -> None:
        """Withdraw what this example left, so the next one starts from an empty BIRD."""
        with contextlib.suppress(Exception):
            for bh in self.manager.active():
                self.manager.withdraw(bh.prefix)
            self.manager.tick()
        for prefix in ALL:
            with contextlib.suppress(AnnounceError):
                self.announcer.withdraw(prefix, "", ())
        self.manager.state.close()
        self.announcer.close()


@pytest.mark.slow
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(steps=st.lists(step, min_size=1, max_size=9))
def test_states_never_claim_what_bird_does_not_hold(bgp_lab: BgpLab, steps: list[tuple[str, str, float]]) -> None:
    if bgp_lab.ns is None:
        bgp_lab.start()
        bgp_lab.wait_established()
    with tempfile.TemporaryDirectory(prefix="bh-states-") as where:
        run = Run(bgp_lab, Path(where))
        try:
            for number, (action, what, value) in enumerate(steps):
                label = f"step {number} {action} {what} {value:g}".strip()
                run.apply(action, what, value)
                run.check(label)
            run.settle("after the sequence")
            in_gobgp = {b.prefix for b in run.manager.active() if b.state in IN_GOBGP}
            assert in_gobgp == run.bird()
        finally:
            run.close()
        assert not run.bird() or bgp_lab.gobgpd is None
