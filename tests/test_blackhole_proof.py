"""The blackhole states past "GoBGP took it": confirmed, verified, and their loss.

The announcer is the recording GoBGP of support.recording_gobgp (its `established`
families stand for Established router peers, as gobgpd's adj-RIB-out has them); the
router is a plain table of the routes it holds.  Both are doubles of the manager's
collaborators; the real gobgpd + BIRD path of the same states is in
test_blackhole_gobgp.py, and the real RouterOS API reader in test_blackhole_router.py.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry
from support.recording_gobgp import RecordingGoBGP

from appliance.flowenricher.blackhole.manager import BlackholeManager, Defaults
from appliance.flowenricher.blackhole.safety import SafetyPolicy, SafetySettings, networks
from appliance.flowenricher.blackhole.state import StateDB


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class RouterTable:
    """The router's active discarding routes: the prefixes it holds; `down` refuses reads."""

    def __init__(self) -> None:
        self.routes: set[str] = set()
        self.down = False
        self.reads = 0

    def holds(self, routes: Sequence[tuple[str, str]]) -> set[str]:
        self.reads += 1
        if self.down:
            raise ConnectionRefusedError("router 192.0.2.254:8729: connection refused")
        return {prefix for prefix, _hop in routes if prefix in self.routes}


class Notices:
    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    def blackhole_notice(self, action: str, prefix: str, source: str, rule: str, reason: str) -> None:
        self.seen.append((action, prefix, reason))


SAFE = SafetySettings(own=networks(["84.54.49.0/24"]), max_active=10, max_per_minute=10)


def _manager(tmp_path: Path, router: RouterTable | None = None, clock: Clock | None = None,
             timeout: float = 10.0) -> tuple[BlackholeManager, RecordingGoBGP, Clock, CollectorRegistry, Notices]:
    gobgp, registry, notices = RecordingGoBGP(), CollectorRegistry(), Notices()
    clock = clock or Clock()
    mgr = BlackholeManager(StateDB(f"sqlite:///{tmp_path}/state.db"), gobgp, SafetyPolicy(SAFE),
                           tmp_path / "blackholes.txt", Defaults(duration_s=3600), registry, clock,
                           reconcile_interval_s=5, notifier=notices, verifier=router, confirm_timeout_s=timeout,
                           verify_interval_s=30)
    return mgr, gobgp, clock, registry, notices


def _states(mgr: BlackholeManager) -> dict[str, str]:
    return {b.prefix: b.state for b in mgr.active()}


def _metric(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def test_confirmed_only_with_a_peer_of_the_family_and_told_when_late(tmp_path: Path) -> None:
    mgr, gobgp, clock, registry, notices = _manager(tmp_path)
    gobgp.established = {4}  # the IPv6 session is down
    mgr.announce("203.0.113.9")
    mgr.announce("2001:db8::9")
    mgr.tick()
    assert _states(mgr) == {"203.0.113.9/32": "confirmed", "2001:db8::9/128": "announced"}
    assert _metric(registry, "flowenricher_blackholes_state", state="announced") == 1
    assert _metric(registry, "flowenricher_blackholes_state", state="confirmed") == 1
    clock.now += 9
    mgr.tick()
    assert notices.seen == [("announce", "203.0.113.9/32", ""), ("announce", "2001:db8::9/128", "")]
    clock.now += 1
    mgr.tick()
    mgr.tick()  # told once per wait, not once per tick
    late = [n for n in notices.seen if n[0] == "unconfirmed"]
    assert [n[1] for n in late] == ["2001:db8::9/128"] and "not confirmed after 10 s" in late[0][2]
    assert "every Established router peer" in late[0][2]
    assert _metric(registry, "flowenricher_blackhole_unconfirmed_total", source="api") == 1
    gobgp.established = {4, 6}
    mgr.tick()
    assert _states(mgr) == {"203.0.113.9/32": "confirmed", "2001:db8::9/128": "confirmed"}
    assert _metric(registry, "flowenricher_blackholes_state", state="announced") == 0
    actions = [json.loads(line)["action"] for line in (tmp_path / "blackholes.txt").read_text().splitlines()]
    assert actions == ["announce", "announce", "confirm", "unconfirmed", "confirm"]


def test_a_lost_confirmation_is_dropped_told_and_timed_again(tmp_path: Path) -> None:
    mgr, gobgp, clock, registry, notices = _manager(tmp_path)
    mgr.announce("203.0.113.9")
    mgr.tick()
    assert _states(mgr) == {"203.0.113.9/32": "confirmed"}
    gobgp.established = set()  # the router's session went down
    clock.now += 1
    mgr.tick()  # proven routes are asked again only every reconcile interval
    assert _states(mgr) == {"203.0.113.9/32": "confirmed"}
    clock.now += 5
    mgr.tick()
    assert _states(mgr) == {"203.0.113.9/32": "announced"}
    assert [n[0] for n in notices.seen] == ["announce", "lost"]
    assert _metric(registry, "flowenricher_blackhole_lost_total", proof="confirmed") == 1
    clock.now += 9.5
    mgr.tick()
    assert [n[0] for n in notices.seen] == ["announce", "lost"]  # the new wait began at the loss
    clock.now += 1
    mgr.tick()
    assert [n[0] for n in notices.seen] == ["announce", "lost", "unconfirmed"]


def test_gobgp_that_cannot_be_asked_proves_nothing(tmp_path: Path) -> None:
    """A dead gobgpd takes its sessions with it: a route it held is not "confirmed" any
    more because the state DB last saw it so; it is requested again and re-announced."""
    mgr, gobgp, clock, _registry, _notices = _manager(tmp_path)
    mgr.announce("203.0.113.9")
    mgr.tick()
    gobgp.down = True
    gobgp.held.clear()  # what a restart of gobgpd leaves
    clock.now += 5
    mgr.tick()
    assert _states(mgr) == {"203.0.113.9/32": "requested"}
    gobgp.down = False
    clock.now += 1
    mgr.tick()
    assert _states(mgr) == {"203.0.113.9/32": "confirmed"} and "203.0.113.9/32" in gobgp.held


def test_verified_on_the_router_and_lost_there(tmp_path: Path) -> None:
    router = RouterTable()
    mgr, _gobgp, clock, registry, notices = _manager(tmp_path, router)
    mgr.announce("203.0.113.9")
    mgr.announce("203.0.113.10")
    router.routes = {"203.0.113.9/32"}  # the router's filter dropped .10
    mgr.tick()
    assert _states(mgr) == {"203.0.113.9/32": "verified", "203.0.113.10/32": "confirmed"}
    reads = router.reads
    clock.now += 1
    mgr.tick()  # only the unverified one is read again each tick
    assert router.reads == reads + 1
    router.down = True
    clock.now += 30
    mgr.tick()  # an unreadable router changes no state: it is told as an error
    assert _states(mgr) == {"203.0.113.9/32": "verified", "203.0.113.10/32": "confirmed"}
    assert _metric(registry, "flowenricher_blackhole_router_errors_total") >= 1
    router.down = False
    router.routes = set()
    clock.now += 1
    mgr.tick()
    assert _states(mgr) == {"203.0.113.9/32": "confirmed", "203.0.113.10/32": "confirmed"}
    assert ("lost", "203.0.113.9/32", "no longer active in the router's route table") in notices.seen
    assert _metric(registry, "flowenricher_blackholes_state", state="verified") == 0


def test_reannouncing_changed_values_drops_the_proofs(tmp_path: Path) -> None:
    router = RouterTable()
    router.routes = {"203.0.113.9/32"}
    mgr, gobgp, clock, _registry, _notices = _manager(tmp_path, router)
    mgr.announce("203.0.113.9")
    mgr.tick()
    assert _states(mgr) == {"203.0.113.9/32": "verified"}
    gobgp.established = set()
    row = mgr.announce("203.0.113.9", communities=["65001:666"])
    assert row.state == "announced" and row.confirmed_at is None and row.verified_at is None
    assert row.waiting_since == clock.now


def test_the_check_thread_confirms_within_milliseconds_without_a_tick(tmp_path: Path) -> None:
    mgr, gobgp, _clock, _registry, _notices = _manager(tmp_path, clock=None)
    real = BlackholeManager(mgr.state, gobgp, mgr.policy, None, Defaults(duration_s=60), CollectorRegistry(),
                            confirm_timeout_s=2)
    real.start()
    try:
        started = time.monotonic()
        real.announce("203.0.113.9")
        while real.active()[0].state != "confirmed":
            assert time.monotonic() - started < 1.0, "not confirmed within 1 s"
            time.sleep(0.002)
    finally:
        real.close()


def test_a_state_db_of_the_previous_release_gains_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE blackholes (id INTEGER PRIMARY KEY, prefix VARCHAR(64), next_hop VARCHAR(64), "
                   "communities JSON, source VARCHAR(16), rule VARCHAR(128), evidence JSON, created_at FLOAT, "
                   "expires_at FLOAT, withdrawn_at FLOAT, withdraw_reason VARCHAR(64), announced BOOLEAN, "
                   "failed_reason VARCHAR(512) NOT NULL DEFAULT '', role VARCHAR(16) NOT NULL DEFAULT '')")
        db.execute("INSERT INTO blackholes VALUES (1, '203.0.113.9/32', '192.0.2.1', '[\"65535:666\"]', 'api', '', "
                   "'{}', 1800000000, NULL, NULL, '', 1, '', 'source')")
    clock = Clock()
    gobgp = RecordingGoBGP()
    mgr = BlackholeManager(StateDB(f"sqlite:///{path}"), gobgp, SafetyPolicy(SAFE), None, Defaults(),
                           CollectorRegistry(), clock)
    assert _states(mgr) == {"203.0.113.9/32": "announced"}
    mgr.tick()  # reconcile finds it missing in GoBGP, announces it, and it is confirmed
    assert _states(mgr) == {"203.0.113.9/32": "confirmed"}


def test_a_router_that_does_not_answer_holds_no_announcement_up(tmp_path: Path) -> None:
    """The router is read without the manager's lock: while a read waits out its timeout
    (here 1.5 s), a detection's announcement goes through at once."""

    class SlowRouter(RouterTable):
        def holds(self, routes: Sequence[tuple[str, str]]) -> set[str]:
            time.sleep(1.5)
            return super().holds(routes)

    gobgp = RecordingGoBGP()
    mgr = BlackholeManager(StateDB(f"sqlite:///{tmp_path}/state.db"), gobgp, SafetyPolicy(SAFE), None,
                           Defaults(duration_s=60), CollectorRegistry(), verifier=SlowRouter(), confirm_timeout_s=5)
    mgr.start()
    try:
        mgr.announce("203.0.113.9")
        time.sleep(0.2)  # the check thread confirmed it and is now reading the router
        started = time.monotonic()
        mgr.request("198.51.100.7", None, [], 60, "scan", {"key": "src"})
        assert time.monotonic() - started < 0.5
        assert "198.51.100.7/32" in gobgp.held
    finally:
        mgr.close()
