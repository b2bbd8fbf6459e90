"""Rules reload: a changed detection.yml (or SIGHUP) replaces the running rules; an
invalid one keeps them and says why."""

from __future__ import annotations

import logging
import os
import signal
import textwrap
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from appliance.flowenricher.detect import DetectionEngine, RulesWatcher, load_rule_set

GOOD = """\
- {name: scan, proto: tcp, unique_dst_ips: 50, time_window: 60s, action: alert}
"""
BETTER = """\
- {name: scan, proto: tcp, unique_dst_ips: 50, time_window: 60s, action: alert}
- {name: flood, key: dst, proto: udp, unique_src_ips: 10, min_pps: 1000, time_window: 10s, action: alert}
"""
BROKEN = """\
- {name: scan, proto: tcp, unique_dst_ips: 50, time_window: 60s, action: alert}
- {name: flood, key: dst, proto: udp, unique_dst_ips: 10, time_window: 2m, action: alert}
"""


def write(path: Path, text: str, mtime_ns: int) -> None:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    os.utime(path, ns=(mtime_ns, mtime_ns))  # a distinct stamp even within one clock tick


def setup(tmp_path: Path) -> tuple[Path, DetectionEngine, RulesWatcher, CollectorRegistry]:
    path = tmp_path / "detection.yml"
    write(path, GOOD, 1_000_000_000_000_000_000)
    registry = CollectorRegistry()
    engine = DetectionEngine(load_rule_set(path, max_window_s=60), [], registry)
    watcher = RulesWatcher(path, engine.reload, max_window_s=60, registry=registry)
    return path, engine, watcher, registry


def test_a_changed_file_is_reloaded_and_an_unchanged_one_is_not(tmp_path: Path) -> None:
    path, engine, watcher, registry = setup(tmp_path)
    assert not watcher.check()
    write(path, BETTER, 1_000_000_001_000_000_000)
    assert watcher.check()
    assert [r.name for r in engine.rules] == ["scan", "flood"]
    assert not watcher.check()
    assert registry.get_sample_value("flowenricher_detection_rules_reloads_total", {"result": "ok"}) == 1


def test_an_invalid_file_keeps_the_running_rules(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path, engine, watcher, registry = setup(tmp_path)
    write(path, BROKEN, 1_000_000_001_000_000_000)
    with caplog.at_level(logging.ERROR):
        assert not watcher.check()
    assert [r.name for r in engine.rules] == ["scan"]
    assert f"{path} is invalid, the running rules stay" in caplog.text
    assert f"{path}: $[1].unique_dst_ips: rule 'flood': with key: dst each key is one destination" in caplog.text
    assert f"{path}: $[1].time_window: rule 'flood': '2m' is longer than detection.flow_cache_max_window" \
        in caplog.text
    assert registry.get_sample_value("flowenricher_detection_rules_reloads_total", {"result": "invalid"}) == 1
    assert not watcher.check()  # reported once, not on every check

    path.unlink()  # a file that went away keeps the rules too
    assert not watcher.check()
    assert [r.name for r in engine.rules] == ["scan"]
    write(path, BETTER, 1_000_000_002_000_000_000)
    assert watcher.check()
    assert [r.name for r in engine.rules] == ["scan", "flood"]


def test_sighup_reloads_and_tick_checks_at_its_interval(tmp_path: Path) -> None:
    path, engine, watcher, _ = setup(tmp_path)
    previous = signal.getsignal(signal.SIGHUP)
    try:
        watcher.install_sighup()
        # Same size and stamp as before (the edit is invisible to a stat), then SIGHUP.
        write(path, GOOD.replace("scan", "scam"), 1_000_000_000_000_000_000)
        watcher.tick(now=100.0)
        assert [r.name for r in engine.rules] == ["scan"]
        os.kill(os.getpid(), signal.SIGHUP)
        watcher.tick(now=100.5)
        assert [r.name for r in engine.rules] == ["scam"]
    finally:
        signal.signal(signal.SIGHUP, previous)
    write(path, BETTER, 1_000_000_003_000_000_000)
    watcher.tick(now=101.0)  # within the interval: not looked at yet
    assert [r.name for r in engine.rules] == ["scam"]
    watcher.tick(now=103.0)
    assert [r.name for r in engine.rules] == ["scan", "flood"]
