"""The blackhole manager's rules: safety, persistence, expiry, retries.

The announcer here is a recording in-memory GoBGP (what it holds, and whether it is
"down"), so that hypothesis can drive thousands of sequences; the real gobgpd + BIRD
path is tested in test_blackhole_gobgp.py.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from support.recording_gobgp import RecordingGoBGP

from appliance.flowenricher.blackhole.manager import BlackholeManager, Defaults
from appliance.flowenricher.blackhole.safety import Refused, SafetyPolicy, SafetySettings, networks
from appliance.flowenricher.blackhole.state import StateDB


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


SAFE = SafetySettings(never=networks(["84.54.49.1", "10.255.0.0/24", "2a14:4280::1"]),
                      own=networks(["84.54.49.0/24", "2a14:4280::/29"]), max_active=5, max_per_minute=3)


def _manager(tmp_path: Path, safety: SafetySettings = SAFE) -> tuple[BlackholeManager, RecordingGoBGP, Clock]:
    gobgp, clock = RecordingGoBGP(), Clock()
    mgr = BlackholeManager(StateDB(f"sqlite:///{tmp_path}/state.db"), gobgp, SafetyPolicy(safety),
                           tmp_path / "blackholes.txt", Defaults(duration_s=600), CollectorRegistry(), clock)
    return mgr, gobgp, clock


def test_announce_expire_and_log(tmp_path: Path) -> None:
    mgr, gobgp, clock = _manager(tmp_path)
    mgr.announce("149.202.68.236/32", "192.0.2.1", ["216285:666"], duration_s=60, rule="manual")
    assert gobgp.held == {"149.202.68.236/32": ("192.0.2.1", ("216285:666",))}
    clock.now += 59
    mgr.tick()
    assert "149.202.68.236/32" in gobgp.held
    clock.now += 2
    mgr.tick()
    assert gobgp.held == {} and mgr.active() == []
    lines = [json.loads(x) for x in (tmp_path / "blackholes.txt").read_text().splitlines()]
    assert [x["action"] for x in lines] == ["announce", "confirm", "withdraw"] and lines[2]["reason"] == "expired"


def test_bare_address_is_a_host_route_and_defaults_apply(tmp_path: Path) -> None:
    mgr, gobgp, _ = _manager(tmp_path)
    mgr.announce("203.0.113.9")
    mgr.announce("2001:db8::9")
    assert gobgp.held == {"203.0.113.9/32": ("192.0.2.1", ("65535:666",)), "2001:db8::9/128": ("100::1", ("65535:666",))}


@pytest.mark.parametrize(("prefix", "role", "why"), [
    ("0.0.0.0/0", "manual", "shorter than /32"),
    ("203.0.113.0/24", "manual", "shorter than /32"),
    ("2001:db8::/64", "manual", "shorter than /128"),
    ("84.54.49.1/32", "destination", "never-blackhole"),
    ("10.255.0.7", "manual", "never-blackhole"),
    ("84.54.49.20", "source", "own"),
    ("2a14:4281::5", "source", "own"),
    ("1.2.3.4/31", "manual", "shorter"),
    ("not-an-ip", "manual", "not an IP prefix"),
])
def test_forbidden_announcements_are_refused(tmp_path: Path, prefix: str, role: str, why: str) -> None:
    mgr, gobgp, _ = _manager(tmp_path)
    with pytest.raises(Refused, match=why):
        mgr.announce(prefix, role=role)
    assert gobgp.ever == []


def test_victim_inside_own_prefixes_may_be_blackholed(tmp_path: Path) -> None:
    mgr, gobgp, _ = _manager(tmp_path)
    mgr.request("84.54.49.20", None, [], 60, "udp_flood", {"key": "dst"})
    mgr.request("84.54.49.21", None, [], 60, "scan", {"key": "src"})  # refused, logged, not raised
    assert set(gobgp.held) == {"84.54.49.20/32"}


def test_caps_on_active_and_per_minute(tmp_path: Path) -> None:
    mgr, gobgp, clock = _manager(tmp_path)
    for i in range(3):
        mgr.announce(f"198.51.100.{i}")
    with pytest.raises(Refused, match="last minute"):
        mgr.announce("198.51.100.9")
    clock.now += 61
    mgr.announce("198.51.100.3")
    mgr.announce("198.51.100.4")
    with pytest.raises(Refused, match="maximum is 5"):
        mgr.announce("198.51.100.5")
    mgr.announce("198.51.100.4", duration_s=1200)  # a refresh of an active one is allowed
    assert len(gobgp.held) == 5


def test_a_withdrawal_gobgp_has_not_taken_still_counts_against_the_cap(tmp_path: Path) -> None:
    """Found by the property test below: with a withdrawal stuck while GoBGP was down, a
    new announcement took the freed place and GoBGP held max_active + 1 once it was back."""
    mgr, gobgp, clock = _manager(tmp_path)
    for i in range(5):
        clock.now += 30  # stay under max_per_minute
        mgr.announce(f"198.51.100.{i}")
    gobgp.down = True
    mgr.withdraw("198.51.100.0")
    clock.now += 61
    with pytest.raises(Refused, match="maximum is 5"):
        mgr.announce("198.51.100.9")
    gobgp.down = False
    mgr.tick()
    assert "198.51.100.0/32" not in gobgp.held and len(gobgp.held) == 4
    mgr.announce("198.51.100.9")
    assert len(gobgp.held) == 5


def test_dry_run_announces_nothing(tmp_path: Path) -> None:
    mgr, gobgp, _ = _manager(tmp_path, SafetySettings(dry_run=True))
    mgr.announce("198.51.100.1")
    assert gobgp.ever == [] and mgr.active() == []
    assert json.loads((tmp_path / "blackholes.txt").read_text())["action"] == "dry-run-announce"


def test_gobgp_down_queues_and_retries(tmp_path: Path) -> None:
    mgr, gobgp, clock = _manager(tmp_path)
    gobgp.down = True
    mgr.announce("198.51.100.1", duration_s=30)
    assert mgr.active()[0].announced is False
    gobgp.down = False
    mgr.tick()
    assert "198.51.100.1/32" in gobgp.held
    gobgp.down = True
    clock.now += 31
    mgr.tick()  # expiry while GoBGP is down: withdrawn in the state, pending for GoBGP
    assert mgr.active() == [] and "198.51.100.1/32" in gobgp.held
    gobgp.down = False
    mgr.tick()
    assert gobgp.held == {}


def test_restart_reannounces_active_and_withdraws_expired(tmp_path: Path) -> None:
    mgr, gobgp, clock = _manager(tmp_path)
    mgr.announce("198.51.100.1", duration_s=100)
    mgr.announce("198.51.100.2", duration_s=1000)
    # flowenricher stops; gobgpd restarts empty; 200 s pass.
    mgr.state.close()
    gobgp.held.clear()
    clock.now += 200
    again = BlackholeManager(StateDB(f"sqlite:///{tmp_path}/state.db"), gobgp, SafetyPolicy(SAFE),
                             tmp_path / "blackholes.txt", Defaults(), CollectorRegistry(), clock)
    again.tick()
    assert set(gobgp.held) == {"198.51.100.2/32"}
    assert [b.prefix for b in again.active()] == ["198.51.100.2/32"]


def test_reconcile_removes_what_gobgp_holds_but_is_not_active(tmp_path: Path) -> None:
    """A withdrawal GoBGP missed before a restart of flowenricher (pending withdrawals are
    kept in memory only) is found again from the state DB's history; a route the
    appliance never announced (an operator's own, in the same GoBGP) is not touched, and
    reconcile asks GoBGP about the appliance's prefixes only, never the whole table."""
    mgr, gobgp, _ = _manager(tmp_path)
    mgr.announce("198.51.100.77")
    gobgp.down = True
    mgr.withdraw("198.51.100.77")  # GoBGP does not get it
    gobgp.down = False
    gobgp.held["203.0.113.50/32"] = ("192.0.2.99", ())  # the operator's, not in the state DB
    restarted = BlackholeManager(StateDB(f"sqlite:///{tmp_path}/state.db"), gobgp, SafetyPolicy(SAFE),
                                 tmp_path / "blackholes.txt", Defaults(duration_s=600), CollectorRegistry())
    restarted.reconcile()
    assert gobgp.held == {"203.0.113.50/32": ("192.0.2.99", ())}
    assert gobgp.asked and all(prefixes <= {"198.51.100.77/32"} for prefixes in gobgp.asked)


def _net(addr: object, length: int) -> str:
    return str(ipaddress.ip_network(f"{addr}/{length}", strict=False))


_addresses = st.one_of(
    st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str),
    st.sampled_from(["84.54.49.1", "84.54.49.7", "10.255.0.3", "2a14:4280::1", "2a14:4280::9"]),
    st.tuples(st.ip_addresses(v=4), st.integers(0, 32)).map(lambda t: _net(*t)),
    st.tuples(st.ip_addresses(v=6), st.integers(0, 128)).map(lambda t: _net(*t)),
)
_ops = st.lists(st.tuples(st.sampled_from(["api", "src", "dst", "withdraw", "tick", "down", "up"]), _addresses,
                          st.floats(0, 120)), max_size=40)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_ops)
def test_no_sequence_announces_what_design_forbids(tmp_path_factory: pytest.TempPathFactory,
                                                   ops: list[tuple[str, str, float]]) -> None:
    tmp = tmp_path_factory.mktemp("bh")
    mgr, gobgp, clock = _manager(tmp)
    for op, addr, dt in ops:
        clock.now += dt
        if op == "api":
            with contextlib.suppress(Refused):
                mgr.announce(addr)
        elif op in ("src", "dst"):
            mgr.request(addr, None, [], 60, "rule", {"key": op})
        elif op == "withdraw":
            with contextlib.suppress(Refused):
                mgr.withdraw(addr)
        elif op == "tick":
            mgr.tick()
        else:
            gobgp.down = op == "down"
        victims = sum(1 for p in gobgp.held if mgr.policy.pool_of(ipaddress.ip_network(p)) == "victim")
        assert victims <= SAFE.cap("victim") and len(gobgp.held) - victims <= SAFE.cap("source")
    for prefix in gobgp.ever:
        net = ipaddress.ip_network(prefix)
        assert net.prefixlen == (32 if net.version == 4 else 128)
        assert not any(n.version == net.version and n.overlaps(net) for n in SAFE.never)
    gobgp.down = False
    clock.now += 10_000
    mgr.tick()
    assert gobgp.held == {}  # everything expired is withdrawn once GoBGP answers


def test_a_state_db_of_an_earlier_version_gains_the_failed_column(tmp_path: Path) -> None:
    """An existing state DB (without failed_reason) opens, keeps its rows and can fail one."""
    url = f"sqlite:///{tmp_path}/state.db"
    old = StateDB(url)
    old.add(prefix="203.0.113.1/32", next_hop="192.0.2.1", communities=["65535:666"], source="api", rule="",
            evidence={}, created_at=1.0, expires_at=None, announced=True)
    with old.engine.begin() as connection:
        connection.exec_driver_sql("ALTER TABLE blackholes DROP COLUMN failed_reason")
    old.close()
    state = StateDB(url)
    try:
        [kept] = state.active()
        assert (kept.prefix, kept.state, kept.failed_reason) == ("203.0.113.1/32", "announced", "")
        state.update(kept.id, withdrawn_at=2.0, failed_reason="GoBGP refused it: no")
        assert state.history()[0].state == "failed"
    finally:
        state.close()
