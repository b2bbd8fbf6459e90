"""Backtests on stored generated traffic with known attacks, on both stores.

The same traffic goes, second by second, into the detection engine as the service runs
it (process, then tick once a second) and into the store; the backtest then replays
the store.  What the tests hold it to: the detections equal the live engine's rule for
rule and key for key; a rules file with a threshold lowered finds a superset (and the
compare report says which are new); tuning over a benign mix suggests a threshold above
every benign key and below the attack; nothing reaches GoBGP, while blackholes are
reported as the dry-run policy would have announced or refused them.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.backtest import FPS, RULES, SECONDS, T0, config, store_and_detect, write_rules
from support.stores import STORE_KINDS, migrated_store

from appliance.flowenricher.backtest import ReplayWindow, run_backtest
from appliance.flowenricher.detect.rules import load_rule_set
from appliance.flowenricher.generate.traffic import TrafficGenerator
from appliance.flowenricher.storage import FlowStore


@pytest.fixture(params=STORE_KINDS)
def attack_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[FlowStore, set[Any], Path]]:
    rules_path = write_rules(tmp_path / "a.yml", RULES)
    with migrated_store(request.param, tmp_path) as store:
        live = store_and_detect(store, load_rule_set(rules_path), "attacks")
        yield store, live, rules_path


def test_backtest_equals_the_live_engine_and_a_lower_threshold_finds_a_superset(
        attack_store: tuple[FlowStore, set[Any], Path], tmp_path: Path) -> None:
    store, live, rules_path = attack_store
    assert {rule for rule, _ in live} >= {"horizontal_scan", "vertical_scan", "syn_flood"}, live
    lowered: list[dict[str, Any]] = [dict(rule) for rule in RULES]
    for rule in lowered:
        rule["min_flows"] = max(2, rule["min_flows"] // 25)
        for option in ("unique_dst_ips", "unique_dst_ports", "unique_src_ips"):
            if option in rule:
                rule[option] = max(2, rule[option] // 25)
    b_path = write_rules(tmp_path / "b.yml", lowered)
    cfg = config(tmp_path)
    report = run_backtest(store.query, store.settings.qualified_table, cfg,
                          [("a.yml", load_rule_set(rules_path)), ("b.yml", load_rule_set(b_path))],
                          ReplayWindow(T0, T0 + SECONDS))
    assert report.flows > FPS * SECONDS * 0.9
    assert report.late == 0 and report.outside == 0
    assert report.detected_keys(0) == live
    a, b = report.detected_keys(0), report.detected_keys(1)
    assert b >= a and b != a
    assert report.compare is not None
    assert len(report.compare["both"]) == len(a)
    assert not report.compare["only_a"]
    assert {(i["rule"], (i["address"], i.get("dst_addr"), i.get("dst_port")))
            for i in report.compare["only_b"]} == b - a
    scan = report.records[0]["horizontal_scan"]
    assert scan.first is not None and scan.last is not None and T0 <= scan.first <= scan.last <= T0 + SECONDS
    assert scan.samples and scan.samples[0]["samples"], "a sampled detection carries its flows"
    assert report.announcer_calls == 0


def test_blackholes_are_dry_run_and_refusals_say_why(tmp_path: Path) -> None:
    """The scanner is outside my_prefixes: its ban would be announced; the SYN flood's
    victim is inside, but on the never-blackhole list here: refused, with the reason.
    A socket stands where GoBGP's API is configured and must never be connected to."""
    guard = socket.socket()
    guard.bind(("127.0.0.1", 0))
    guard.listen(1)
    guard.setblocking(False)
    rules_path = write_rules(tmp_path / "a.yml", RULES)
    gen = TrafficGenerator(scenario="attacks", seed=3)
    victim = next(t for t in gen.truths if t.kind == "syn_flood").victims[0]
    cfg = config(tmp_path, blackhole={"dry_run": False, "never": [victim]},
                 bgp={"gobgp": {"api": f"127.0.0.1:{guard.getsockname()[1]}"}})
    with migrated_store("embedded", tmp_path) as store:
        store_and_detect(store, load_rule_set(rules_path), "attacks")
        report = run_backtest(store.query, store.settings.qualified_table, cfg,
                              [("a.yml", load_rule_set(rules_path))], ReplayWindow(T0, T0 + SECONDS))
    scan, flood = report.records[0]["horizontal_scan"], report.records[0]["syn_flood"]
    assert scan.announced_prefixes and scan.would_announce >= 1
    assert flood.detections and f"{victim}/32" in flood.refused
    assert "never-blackhole" in flood.refused[f"{victim}/32"]
    assert report.announcer_calls == 0
    with pytest.raises(BlockingIOError):
        guard.accept()
    guard.close()


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_tuning_puts_the_threshold_between_benign_keys_and_the_attack(kind: str, tmp_path: Path) -> None:
    """A rule at a threshold no one reaches (so it fires on nothing): the suggestion for
    zero keys a day lies above every benign source and below the horizontal scanner."""
    rules = [{"name": "sweep", "proto": "tcp", "same_dst_port": True, "unique_dst_ips": 5000,
              "time_window": "60s", "action": "alert"}]
    rules_path = write_rules(tmp_path / "t.yml", rules)
    cfg = config(tmp_path)
    with migrated_store(kind, tmp_path) as store:
        store_and_detect(store, load_rule_set(rules_path), "normal", seconds=120)
        benign = run_backtest(store.query, store.settings.qualified_table, cfg,
                              [("t.yml", load_rule_set(rules_path))], ReplayWindow(T0, T0 + 120), tune_per_day=0)
    (item,) = benign.tuning
    suggested = item["suggested"]
    assert item["keys_not_fired"] > 50
    assert suggested > item["percentiles"]["max"]
    with migrated_store(kind, tmp_path / "attack") as store:
        store_and_detect(store, load_rule_set(rules_path), "horizontal_scan", seconds=120)
        attack = run_backtest(store.query, store.settings.qualified_table, cfg,
                              [("t.yml", load_rule_set(rules_path))], ReplayWindow(T0, T0 + 120), tune_per_day=0)
    scanner_peak = attack.tuning[0]["percentiles"]["max"]
    assert suggested < scanner_peak, (suggested, scanner_peak)
    # The suggested threshold, applied, fires on the scanner and on nothing in the benign mix.
    rules[0]["unique_dst_ips"] = int(suggested)
    applied = write_rules(tmp_path / "applied.yml", rules)
    with migrated_store(kind, tmp_path / "attack2") as store:
        live = store_and_detect(store, load_rule_set(applied), "horizontal_scan", seconds=120)
    with migrated_store(kind, tmp_path / "benign2") as store:
        assert not store_and_detect(store, load_rule_set(applied), "normal", seconds=120)
    assert {rule for rule, _ in live} == {"sweep"}


def test_the_command_reports_jsonl_and_refuses_a_bad_range(tmp_path: Path) -> None:
    rules_path = write_rules(tmp_path / "a.yml", RULES)
    data = tmp_path / "data"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({"storage": {"path": str(data)},
                                                           "my_prefixes": ["84.54.49.0/24"]}))
    with migrated_store("embedded", tmp_path) as store:
        live = store_and_detect(store, load_rule_set(rules_path), "scan", seconds=90)
    cmd = [sys.executable, "-m", "appliance.cli", "backtest", "--config", str(tmp_path / "config.yaml"),
           "--rules", str(rules_path)]
    done = subprocess.run([*cmd, "--from", str(T0), "--to", "2027-01-15T08:01:30Z", "--format", "jsonl",
                           "--tune", "1"], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines[0]["kind"] == "summary" and lines[0]["flows"] > 0
    found = {(line["rule"], key["address"]) for line in lines if line["kind"] == "rule" for key in line["top_keys"]}
    assert found == {(rule, key[0]) for rule, key in live}
    assert any(line["kind"] == "tuning" for line in lines)
    bad = subprocess.run([*cmd, "--from", "yesterday", "--to", str(T0)], capture_output=True, text=True,
                         timeout=120, check=False)
    assert bad.returncode == 2 and "--from: 'yesterday' is not a time" in bad.stderr
    empty = subprocess.run([*cmd, "--from", str(T0 + 10), "--to", str(T0)], capture_output=True, text=True,
                           timeout=120, check=False)
    assert empty.returncode == 2 and "the range is empty" in empty.stderr
