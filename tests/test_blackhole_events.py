"""blackhole_events: every action of the real blackhole manager lands in the real schema
on chDB (the table the security dashboard reads), and a store that fails never stops an
announcement.  GoBGP is the recording stand-in (the gobgpd + BIRD path has its own tests)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from support.recording_gobgp import RecordingGoBGP

from appliance.flowenricher.blackhole.events import BlackholeEvents
from appliance.flowenricher.blackhole.manager import BlackholeManager, Defaults
from appliance.flowenricher.blackhole.safety import Refused, SafetyPolicy, SafetySettings, networks
from appliance.flowenricher.blackhole.state import StateDB
from appliance.flowenricher.detect.outbox import DeliveryMetrics
from appliance.flowenricher.storage import StoreSettings, open_store
from appliance.flowenricher.storage.base import FlowStore

SAFE = SafetySettings(never=networks(["84.54.49.1"]), own=networks(["84.54.49.0/24"]), max_active=5, repeat_factor=1,
                      max_per_minute=100)
T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FlowStore]:
    s = open_store(StoreSettings(path=str(tmp_path_factory.mktemp("events") / "data")))
    try:
        s.migrate()
        yield s
    finally:
        s.close()


def _rows(store: FlowStore) -> list[dict[str, object]]:
    text = store.query("SELECT toUnixTimestamp64Milli(ts) AS ms, action, prefix, next_hop, communities, rule, reason, "
                       "toUnixTimestamp(expires_at) AS expires, dry_run, source FROM flowenricher.blackhole_events "
                       "ORDER BY ts, action", "JSONEachRow").decode()
    return [json.loads(line) for line in text.splitlines()]


def test_manager_actions_become_rows(tmp_path: Path, store: FlowStore) -> None:
    store.query("TRUNCATE TABLE flowenricher.blackhole_events", "TSV")
    clock = Clock()
    events = BlackholeEvents(lambda sql: store.query(sql, "TSV"), "flowenricher", clock=clock)
    manager = BlackholeManager(StateDB(f"sqlite:///{tmp_path}/state.db"), RecordingGoBGP(), SafetyPolicy(SAFE),
                               tmp_path / "blackholes.txt", Defaults(duration_s=600), CollectorRegistry(), clock,
                               events=events)
    manager.announce("198.51.100.7", communities=["65535:666"], source="api", rule="manual")
    clock.now += 10
    manager.request("203.0.113.9", None, [], 60, "syn_flood", {"key": "src", "pps": 90000})
    clock.now += 10
    manager.announce("198.51.100.7", duration_s=1200, source="api")  # extends the first
    clock.now += 10
    with pytest.raises(Refused):
        manager.announce("84.54.49.1", source="api")
    clock.now += 10
    manager.withdraw("198.51.100.7")
    clock.now += 60
    manager.tick()  # the rule's blackhole expires
    assert events.flush(10)
    events.close()
    rows = _rows(store)
    assert [(r["action"], r["prefix"], r["source"]) for r in rows] == [
        ("announce", "198.51.100.7/32", "api"),
        ("announce", "203.0.113.9/32", "detection"),
        ("announce", "198.51.100.7/32", "api"),
        ("refused", "84.54.49.1/32", "api"),
        ("withdraw", "198.51.100.7/32", "api"),
        ("expire", "203.0.113.9/32", "detection"),
    ]
    assert [r["ms"] for r in rows] == [int(T0 * 1000) + k * 10_000 for k in range(5)] + [int(T0 * 1000) + 100_000]
    first, detection, extension, refused, withdrawn, expired = rows
    assert first["next_hop"] == "192.0.2.1" and first["communities"] == ["65535:666"] and first["rule"] == "manual"
    assert first["expires"] == int(T0) + 600 and first["dry_run"] == 0
    assert detection["rule"] == "syn_flood" and detection["expires"] == int(T0) + 70
    assert extension["reason"] == "extended" and extension["expires"] == int(T0) + 1220
    assert "never" in str(refused["reason"]) and refused["expires"] is None
    assert withdrawn["reason"] == "api" and expired["reason"] == "expired"


def test_dry_run_is_marked(tmp_path: Path, store: FlowStore) -> None:
    store.query("TRUNCATE TABLE flowenricher.blackhole_events", "TSV")
    events = BlackholeEvents(lambda sql: store.query(sql, "TSV"), "flowenricher")
    manager = BlackholeManager(StateDB(f"sqlite:///{tmp_path}/state.db"), RecordingGoBGP(),
                               SafetyPolicy(dataclasses.replace(SAFE, dry_run=True)), None, events=events)
    manager.announce("198.51.100.8", source="api", rule="it's manual")
    events.close()
    (row,) = _rows(store)
    assert (row["action"], row["dry_run"], row["reason"], row["rule"]) == ("announce", 1, "dry run", "it's manual")


def test_a_failing_store_never_stops_an_announcement(tmp_path: Path) -> None:
    registry = CollectorRegistry()

    def down(sql: str) -> None:
        raise ConnectionError("ClickHouse is away")

    events = BlackholeEvents(down, "flowenricher", DeliveryMetrics(registry), attempts=2, backoff_s=0.01)
    gobgp = RecordingGoBGP()
    manager = BlackholeManager(StateDB(f"sqlite:///{tmp_path}/state.db"), gobgp, SafetyPolicy(SAFE), None,
                               events=events)
    manager.announce("198.51.100.9", source="api")
    assert "198.51.100.9/32" in gobgp.held
    assert events.flush(10)
    events.close()
    assert registry.get_sample_value("flowenricher_detection_delivery_failures_total",
                                     {"action": "blackhole_events"}) == 2
    assert registry.get_sample_value("flowenricher_detection_deliveries_dropped_total",
                                     {"action": "blackhole_events", "reason": "retries"}) == 1


def test_unknown_action_or_source_is_refused() -> None:
    events = BlackholeEvents(lambda sql: None, "flowenricher")
    try:
        with pytest.raises(ValueError, match="action 'announced'"):
            events.record("announced", "198.51.100.1/32", "192.0.2.1", [], source="api")
        with pytest.raises(ValueError, match="source 'cli'"):
            events.record("announce", "198.51.100.1/32", "192.0.2.1", [], source="cli")
    finally:
        events.close()


def test_the_security_dashboard_shows_each_blackholes_last_proof(tmp_path: Path, store: FlowStore) -> None:
    """Confirm, verify and lost rows of the real manager, read back by the real SQL of the
    security dashboard's "Active blackholes" table on chDB."""
    store.query("TRUNCATE TABLE flowenricher.blackhole_events", "TSV")
    clock, gobgp = Clock(), RecordingGoBGP()
    routes: set[str] = set()

    class Router:
        def holds(self, asked: object) -> set[str]:
            return set(routes)

    events = BlackholeEvents(lambda sql: store.query(sql, "TSV"), "flowenricher", clock=clock)
    manager = BlackholeManager(StateDB(f"sqlite:///{tmp_path}/state.db"), gobgp, SafetyPolicy(SAFE), None,
                               Defaults(duration_s=600), CollectorRegistry(), clock, reconcile_interval_s=5,
                               events=events, verifier=Router())
    gobgp.established = {4}
    for prefix in ("198.51.100.1", "198.51.100.2", "198.51.100.3", "2001:db8::4"):
        manager.announce(prefix, source="api")
    routes.update({"198.51.100.1/32", "198.51.100.2/32"})
    clock.now += 1
    manager.tick()
    routes.discard("198.51.100.2/32")
    clock.now += 60
    manager.tick()
    assert events.flush(10)
    events.close()
    panels = json.loads((Path(__file__).parent.parent / "roles/grafana/files/dashboards/security.json").read_text())
    (sql,) = [t["rawSql"] for p in panels["panels"] if p["title"] == "Active blackholes" for t in p["targets"]]
    # the dashboard reads ${database}.<table>: its constant, which the grafana role sets to the store's database
    assert "${database}.blackhole_events" in sql
    sql = sql.replace("${database}", "flowenricher")
    shown = store.query(sql.replace("now()", f"toDateTime({int(clock.now)})"), "JSONEachRow").decode()
    proof = {row["prefix"]: row["proof"] for row in map(json.loads, shown.splitlines())}
    assert proof == {"198.51.100.1/32": "verified", "198.51.100.2/32": "proof lost", "198.51.100.3/32": "confirmed",
                     "2001:db8::4/128": "announced"}
