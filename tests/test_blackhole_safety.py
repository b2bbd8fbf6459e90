"""The RTBH operator's safety rules (issue 14, points 5 and 6), with real components.

gobgpd and BIRD (support.bgp_lab) stand for GoBGP and the router: expiry by
`flowenricher blackhole expire` while the collector is down, the same beside a running
manager (one withdrawal per row), separate caps for source bans and victims, and
NO_EXPORT as BIRD receives it.  The recording GoBGP double (as strict as gobgpd on
values) serves the rules that need a clock: escalation, a lapsing allow-list entry,
the per-minute limit across a restart, and dry run's caps.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from support.bgp_lab import BgpLab, bgp_lab_fixture, wait_until
from support.recording_gobgp import RecordingGoBGP

from appliance.flowenricher.blackhole.announcer import GoBgpAnnouncer
from appliance.flowenricher.blackhole.manager import BlackholeManager, Defaults
from appliance.flowenricher.blackhole.safety import CapReached, Refused, SafetyPolicy, SafetySettings, networks
from appliance.flowenricher.blackhole.state import StateDB
from appliance.flowenricher.config import load_config
from appliance.flowenricher.detect.actions import BlackholeNotifier
from appliance.flowenricher.errors import ConfigError
from appliance.flowenricher.wiring import safety_settings

__all__ = ["bgp_lab_fixture"]

REPO = Path(__file__).resolve().parent.parent
OWN = networks(["84.54.49.0/24", "2a14:4280::/29"])


class Clock:
    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now


def _write_config(tmp: Path, api: str, extra: str = "") -> Path:
    path = tmp / "config.yaml"
    path.write_text(f"""\
storage:
  path: {tmp}
  state_db: sqlite:///{tmp}/state.db
bgp:
  gobgp:
    api: {api}
detection:
  alerts_log: {tmp}/detections.log
my_prefixes: [84.54.49.0/24]
blackhole:
  log_file: {tmp}/blackholes.txt
{extra}""")
    return path


def _cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "appliance.flowenricher.cli", *args], capture_output=True,
                          text=True, env=env, timeout=timeout, check=False)


def _actions(log_file: Path, action: str) -> list[str]:
    return [line["prefix"] for line in map(json.loads, log_file.read_text().splitlines()) if line["action"] == action]


def _lab_manager(tmp: Path, lab: BgpLab, clock: Clock, safety: SafetySettings | None = None,
                 no_export: bool = True, registry: CollectorRegistry | None = None) -> BlackholeManager:
    safety = safety or SafetySettings(own=OWN, never=networks(["10.255.0.0/24"]))
    return BlackholeManager(StateDB(f"sqlite:///{tmp}/state.db"), GoBgpAnnouncer(lab.api_target),
                            SafetyPolicy(safety), tmp / "blackholes.txt", Defaults(no_export=no_export),
                            registry or CollectorRegistry(), clock, reconcile_interval_s=0)


# --------------------------------------------------------------------------- expiry


def test_expire_withdraws_from_bird_while_the_collector_is_down(bgp_lab: BgpLab, tmp_path: Path) -> None:
    bgp_lab.start()
    bgp_lab.wait_established()
    clock = Clock(time.time() - 120)  # announced two minutes ago, for 60 s
    collector = _lab_manager(tmp_path, bgp_lab, clock)
    collector.announce("203.0.113.9", duration_s=60, rule="scan")
    collector.announce("203.0.113.10", duration_s=3600, rule="scan")
    wait_until(lambda: bgp_lab.route("203.0.113.9/32"), "the expired /32 in BIRD before expire runs")
    collector.state.close()  # the collector stops: nobody ticks it any more
    config = _write_config(tmp_path, bgp_lab.api_target)

    done = _cli("blackhole", "expire", "--config", str(config))

    assert done.returncode == 0, done.stderr
    assert "expired 1" in done.stdout and "203.0.113.9/32" in done.stdout
    wait_until(lambda: not bgp_lab.route("203.0.113.9/32"), "the expired /32 withdrawn from BIRD")
    assert bgp_lab.route("203.0.113.10/32"), "the blackhole not yet due stays in BIRD"
    listed = json.loads(_cli("blackhole", "list", "--config", str(config), "--format", "json").stdout)
    assert [(b["prefix"], b["state"]) for b in listed] == [("203.0.113.10/32", "announced")]
    table = _cli("blackhole", "list", "--config", str(config)).stdout.splitlines()
    assert table[0].startswith("PREFIX") and len(table) == 2
    assert table[1].split()[:2] == ["203.0.113.10/32", "announced"] and "65535:666" in table[1]
    assert _actions(tmp_path / "blackholes.txt", "withdraw") == ["203.0.113.9/32"]


def test_expire_beside_a_running_collector_withdraws_each_row_once(bgp_lab: BgpLab, tmp_path: Path) -> None:
    """The timer's run and the collector's tick expire the same rows at the same time,
    from two processes on one SQLite file: each row is withdrawn (and logged) once."""
    bgp_lab.start()
    bgp_lab.wait_established()
    clock = Clock(time.time() - 120)
    collector = _lab_manager(tmp_path, bgp_lab, clock, SafetySettings(own=OWN, max_active=500, max_per_minute=500))
    prefixes = [f"203.0.{113 + i // 200}.{1 + i % 200}/32" for i in range(300)]
    for prefix in prefixes:
        collector.announce(prefix, duration_s=60, rule="scan")
    wait_until(lambda: bgp_lab.route(prefixes[-1]), "the last /32 in BIRD")
    clock.now = time.time()
    config = _write_config(tmp_path, bgp_lab.api_target)
    log_file = tmp_path / "blackholes.txt"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cli = subprocess.Popen([sys.executable, "-m", "appliance.flowenricher.cli", "blackhole", "expire", "--config",
                            str(config)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # The collector starts expiring once the timer's run has begun withdrawing, so
        # both work through the same rows at once.
        wait_until(lambda: _actions(log_file, "withdraw") or cli.poll() is not None, "expire's first withdrawal",
                   timeout=30)
        ours: list[str] = []
        while cli.poll() is None:
            ours += [bh.prefix for bh in collector.expire()]
        ours += [bh.prefix for bh in collector.expire()]
        out, err = cli.communicate(timeout=60)
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    assert cli.returncode == 0, err
    theirs = [line.strip().split(" ")[0] for line in out.splitlines()[1:]]
    assert ours and theirs, f"no overlap: collector {len(ours)}, timer {len(theirs)}"
    assert sorted(ours + theirs) == sorted(prefixes), "every row expired by exactly one of the two"
    withdrawn = _actions(log_file, "withdraw")
    assert len(withdrawn) == len(set(withdrawn)) == len(prefixes), "one withdrawal logged per blackhole"
    rows = collector.state.history(1000)
    assert len(rows) == 300 and all(r.withdraw_reason == "expired" for r in rows)
    wait_until(lambda: not bgp_lab.route(prefixes[0]) and not bgp_lab.route(prefixes[-1]),
               "the first and last /32 withdrawn from BIRD")


def test_expire_says_so_when_gobgp_is_down(tmp_path: Path) -> None:
    state = StateDB(f"sqlite:///{tmp_path}/state.db")
    state.add(prefix="203.0.113.5/32", next_hop="192.0.2.1", communities=["65535:666"], source="rule", rule="scan",
              evidence={}, created_at=time.time() - 100, expires_at=time.time() - 10, announced=True, role="source")
    state.close()
    config = _write_config(tmp_path, f"unix://{tmp_path}/no-gobgp.sock")

    done = _cli("blackhole", "expire", "--config", str(config))

    assert done.returncode == 1 and "did not take the withdrawal of: 203.0.113.5/32" in done.stderr
    assert "expired 1" in done.stdout  # recorded in the state DB; GoBGP's copy is retried by the next run


# --------------------------------------------------------------------------- caps and roles


def test_scanner_bans_at_their_cap_leave_room_for_a_victim(bgp_lab: BgpLab, tmp_path: Path) -> None:
    bgp_lab.start()
    bgp_lab.wait_established()
    safety = SafetySettings(own=OWN, max_active=3, max_active_victims=2, max_per_minute=100)
    registry = CollectorRegistry()
    mgr = _lab_manager(tmp_path, bgp_lab, Clock(), safety, registry=registry)
    for i in range(1, 5):  # the fourth scanner finds the source cap full
        mgr.request(f"198.51.100.{i}", None, [], 600, "scan", {"key": "src"})
    assert sorted(bh.prefix for bh in mgr.active()) == [f"198.51.100.{i}/32" for i in range(1, 4)]

    mgr.request("84.54.49.20", None, [], 600, "udp_flood", {"key": "dst"})

    wait_until(lambda: bgp_lab.route("84.54.49.20/32"), "the victim's /32 in BIRD")
    assert not bgp_lab.route("198.51.100.4/32")
    mgr.request("84.54.49.21", None, [], 600, "udp_flood", {"key": "dst"})
    with pytest.raises(CapReached, match="2 victim blackholes active, the configured maximum is 2"):
        mgr.announce("84.54.49.22")
    assert registry.get_sample_value("flowenricher_blackhole_cap_reached_total", {"cap": "source"}) == 1
    assert registry.get_sample_value("flowenricher_blackhole_cap_reached_total", {"cap": "victim"}) == 1


def test_victims_only_inside_my_prefixes_and_sources_only_outside(tmp_path: Path) -> None:
    policy = SafetyPolicy(SafetySettings(own=OWN))
    net = networks(["198.51.100.7"])[0]
    with pytest.raises(Refused, match="a victim blackhole must be inside my_prefixes"):
        policy.check(net, "destination", {}, 0.0)
    with pytest.raises(Refused, match="never blocked as a source"):
        policy.check(networks(["2a14:4280::5"])[0], "source", {}, 0.0)
    policy.check(networks(["84.54.49.7"])[0], "destination", {}, 0.0)


def test_no_export_is_on_the_route_bird_receives(bgp_lab: BgpLab, tmp_path: Path) -> None:
    bgp_lab.start()
    bgp_lab.wait_established()
    mgr = _lab_manager(tmp_path, bgp_lab, Clock())
    mgr.announce("203.0.113.9", communities=["65001:666"], duration_s=600)
    mgr.announce("2001:db8::9", duration_s=600)
    wait_until(lambda: bgp_lab.route("2001:db8::9/128"), "the /128 in BIRD")
    v4, v6 = bgp_lab.route("203.0.113.9/32"), bgp_lab.route("2001:db8::9/128")
    assert "(65535,65281)" in v4 and "(65001,666)" in v4, v4
    assert "(65535,65281)" in v6 and "(65535,666)" in v6, v6
    assert mgr.active()[0].communities == ("65001:666",)  # the API shows what was asked

    (tmp_path / "off").mkdir()
    off = _lab_manager(tmp_path / "off", bgp_lab, Clock(), no_export=False)
    off.announce("203.0.113.77", duration_s=600)
    wait_until(lambda: bgp_lab.route("203.0.113.77/32"), "the /32 announced without NO_EXPORT")
    assert "(65535,65281)" not in bgp_lab.route("203.0.113.77/32")


# --------------------------------------------------------------------------- time rules


def _manager(tmp: Path, safety: SafetySettings, clock: Clock | None = None,
             notifier: BlackholeNotifier | None = None) -> tuple[BlackholeManager, RecordingGoBGP, Clock]:
    gobgp, clock = RecordingGoBGP(), clock or Clock(1_800_000_000.0)
    mgr = BlackholeManager(StateDB(f"sqlite:///{tmp}/state.db"), gobgp, SafetyPolicy(safety), tmp / "blackholes.txt",
                           Defaults(), CollectorRegistry(), clock, notifier=notifier)
    return mgr, gobgp, clock


def test_a_repeat_offender_gets_a_doubled_ban_up_to_the_maximum(tmp_path: Path) -> None:
    safety = SafetySettings(own=OWN, max_duration_s=300, repeat_factor=2, repeat_window_s=3600)
    mgr, _, clock = _manager(tmp_path, safety)
    bans = []
    for _ in range(4):
        mgr.request("198.51.100.66", None, [], 60, "scan", {"key": "src"})
        [bh] = mgr.active()
        bans.append(round(bh.expires_at - clock.now) if bh.expires_at else None)
        clock.now += 400  # expired: the next detection is a new ban within the window
        mgr.tick()
    assert bans == [60, 120, 240, 300]
    clock.now += 3600  # out of the window: back to the rule's time
    mgr.request("198.51.100.66", None, [], 60, "scan", {"key": "src"})
    [bh] = mgr.active()
    assert bh.expires_at == clock.now + 60
    mgr.announce("198.51.100.67", duration_s=10_000)  # no request lasts beyond max_duration
    assert mgr.state.find_active("198.51.100.67/32").expires_at == clock.now + 300  # type: ignore[union-attr]


def test_an_expired_allow_list_entry_no_longer_protects(tmp_path: Path) -> None:
    now = time.time()
    soon = datetime.fromtimestamp(now + 3600, UTC).isoformat()
    past = datetime.fromtimestamp(now - 60, UTC).isoformat()
    config = _write_config(tmp_path, "127.0.0.1:50051", f"""\
  never:
    - 198.51.100.1
    - {{prefix: 198.51.100.2, until: "{soon}"}}
    - {{prefix: 198.51.100.3, until: "{past}", comment: "a partner, lapsed"}}
""")
    policy = SafetyPolicy(safety_settings(load_config(config)))
    mgr, gobgp, _ = _manager(tmp_path, policy.settings, Clock(now))
    for address in ("198.51.100.1", "198.51.100.2"):
        with pytest.raises(Refused, match="never-blackhole list"):
            mgr.announce(address)
    mgr.announce("198.51.100.3")
    assert list(gobgp.held) == ["198.51.100.3/32"]
    mgr._clock = Clock(now + 3601)  # the second entry lapses too
    mgr.announce("198.51.100.2")
    assert sorted(gobgp.held) == ["198.51.100.2/32", "198.51.100.3/32"]


def test_an_allow_list_entry_without_a_time_zone_is_refused(tmp_path: Path) -> None:
    config = _write_config(tmp_path, "127.0.0.1:50051", "  never: [{prefix: 198.51.100.2, until: '2026-12-31'}]\n")
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert f"{config}: $.blackhole.never[0].until: '2026-12-31' has no time zone" in str(err.value.problems)


def test_the_per_minute_limit_holds_across_a_restart(tmp_path: Path) -> None:
    safety = SafetySettings(own=OWN, max_per_minute=3)
    mgr, _, clock = _manager(tmp_path, safety)
    for i in range(3):
        mgr.announce(f"198.51.100.{i}")
    mgr.state.close()
    clock.now += 20
    restarted, gobgp, _ = _manager(tmp_path, safety, clock)  # a new process on the same state DB
    with pytest.raises(CapReached, match="3 new blackholes in the last minute"):
        restarted.announce("198.51.100.9")
    restarted.policy = SafetyPolicy(safety)  # a reload builds a new policy: still counted
    with pytest.raises(CapReached):
        restarted.announce("198.51.100.9")
    clock.now += 41
    restarted.announce("198.51.100.9")
    assert "198.51.100.9/32" in gobgp.held


def test_dry_run_refuses_over_the_caps(tmp_path: Path) -> None:
    mgr, gobgp, clock = _manager(tmp_path, SafetySettings(own=OWN, dry_run=True, max_active=2, max_per_minute=100))
    mgr.announce("198.51.100.1", duration_s=60)
    mgr.announce("198.51.100.2", duration_s=60)
    mgr.announce("198.51.100.2", duration_s=60)  # a refresh is not a new one
    with pytest.raises(CapReached, match="2 source blackholes active"):
        mgr.announce("198.51.100.3", duration_s=60)
    clock.now += 61
    mgr.tick()
    mgr.announce("198.51.100.3", duration_s=60)  # the would-be blackholes expired
    (tmp_path / "pm").mkdir()
    per_minute, _, _ = _manager(tmp_path / "pm", SafetySettings(dry_run=True, max_per_minute=2))
    per_minute.announce("198.51.100.1")
    per_minute.announce("198.51.100.2")
    with pytest.raises(CapReached, match="last minute"):
        per_minute.announce("198.51.100.3")
    assert gobgp.ever == [] and mgr.active() == []


# --------------------------------------------------------------------------- notifications


class _Hook(BaseHTTPRequestHandler):
    received: list[dict[str, object]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(name="webhook")
def webhook_fixture() -> Iterator[tuple[str, list[dict[str, object]]]]:
    received: list[dict[str, object]] = []
    handler = type("Hook", (_Hook,), {"received": received})
    server = HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook", received
    finally:
        server.shutdown()
        server.server_close()


def test_announce_withdraw_failure_and_cap_are_notified(tmp_path: Path,
                                                        webhook: tuple[str, list[dict[str, object]]]) -> None:
    url, received = webhook
    notifier = BlackholeNotifier(alerts_log=tmp_path / "detections.log", webhooks=[url])
    mgr, gobgp, clock = _manager(tmp_path, SafetySettings(own=OWN, max_active=1, max_per_minute=100),
                                 notifier=notifier)
    mgr.announce("198.51.100.1", duration_s=60, rule="by-hand")
    for address in ("198.51.100.2", "198.51.100.3"):  # the cap: told once, not per refusal
        with pytest.raises(CapReached):
            mgr.announce(address)
    clock.now += 61
    mgr.tick()
    gobgp.refusing = "invalid nexthop address"
    mgr.announce("198.51.100.4")
    assert notifier.flush(10)
    notifier.close()
    seen = [(n["action"], n["prefix"]) for n in received]
    assert seen == [("announce", "198.51.100.1/32"), ("cap", "198.51.100.2/32"), ("withdraw", "198.51.100.1/32"),
                    ("announce", "198.51.100.4/32"), ("failed", "198.51.100.4/32")]
    assert "invalid nexthop address" in str(received[-1]["reason"])
    logged = [json.loads(line) for line in (tmp_path / "detections.log").read_text().splitlines()]
    assert [(n["event"], n["action"]) for n in logged][:2] == [("blackhole", "announce"), ("blackhole", "cap")]


# --------------------------------------------------------------------------- config


def test_config_keys_defaults_and_the_old_single_cap(tmp_path: Path) -> None:
    config = _write_config(tmp_path, "127.0.0.1:50051", "  max_active: 7\n")
    cfg = load_config(config)
    bh = cfg.blackhole
    assert (bh.max_active_sources, bh.max_active_victims, bh.no_export) == (None, 20, True)
    assert (bh.max_duration_s, bh.repeat_factor, bh.repeat_window_s) == (7 * 86400, 2.0, 86400)
    safety = safety_settings(cfg)
    assert (safety.cap("source"), safety.cap("victim")) == (7, 20)
    bad = _write_config(tmp_path, "127.0.0.1:50051", "  max_active_sources: -1\n  no_export: maybe\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    problems = "\n".join(err.value.problems)
    assert f"{bad}: $.blackhole.max_active_sources: -1 is less than the minimum of 0" in problems
    assert f"{bad}: $.blackhole.no_export:" in problems
