"""What keeps a backtest's memory independent of the range, where its flows come from,
and min_ml_score in a replay.

Memory: the rows the reader holds follow the flow rate times how far ahead of receipt
the flows start (the exporters' clock), not the range nor the `lead_s` bound; each rule
lists at most ``detection.max_keys_per_rule`` keys and counts the rest; tuning's day
table is pruned at twice that.  Each is asserted on the structure itself, so a change
that lets one grow with the range fails here whatever the machine's load.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow.ipc as ipc
import pytest
from support.backtest import config, write_rules
from support.stores import STORE_KINDS, migrated_store

from appliance.flowenricher.backtest import FlowReader, ReplayWindow, rollup_fit, run_backtest
from appliance.flowenricher.batch import FlowBatch, str_to_addr
from appliance.flowenricher.detect.engine import flow_times
from appliance.flowenricher.detect.rules import load_rule_set
from appliance.flowenricher.storage import FlowStore
from appliance.flowenricher.storage.schema import WHO_CAP
from appliance.flowenricher.storage.tables import ANOMALY_SCORES

T0 = 1_800_000_000
FPS = 100
AHEAD_S = 30  # an exporter whose clock runs this far ahead, for part of the range


def _flows(seconds: range, sources: list[str], ahead: range = range(0), rotate: bool = False) -> FlowBatch:
    """FPS inbound TCP SYN flows a second from `sources` in turn (`rotate`: from one
    source a second, in turn) to a /24 of distinct hosts, received at their second;
    those of the seconds in `ahead` start AHEAD_S later."""
    n = len(seconds) * FPS
    at = np.repeat(np.array(list(seconds), dtype=np.uint32), FPS)
    start = at + np.where(np.isin(at, list(ahead)), AHEAD_S, 0).astype(np.uint32)
    turn = (at - seconds[0]) if rotate else np.arange(n)
    src = np.array([np.frombuffer(str_to_addr(s), dtype=np.uint8) for s in sources])[turn % len(sources)]
    dst = np.tile(np.frombuffer(str_to_addr("84.54.49.0"), dtype=np.uint8), (n, 1))
    dst[:, 15] = np.arange(n) % 250
    return FlowBatch(n, {
        "received_at": at, "timestamp_start": start, "timestamp_end": start, "src_addr": src, "dst_addr": dst,
        "dst_port": np.full(n, 22, dtype=np.uint16), "proto": np.full(n, 6, dtype=np.uint8),
        "tcpflags": np.full(n, 2, dtype=np.uint8), "packets": np.ones(n, dtype=np.uint64),
        "bytes": np.full(n, 60, dtype=np.uint64), "flow_direction": np.ones(n, dtype=np.uint8)})


@pytest.fixture(params=STORE_KINDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FlowStore]:
    with migrated_store(request.param, tmp_path) as opened:
        yield opened


def _replay(store: FlowStore, window: ReplayWindow) -> tuple[FlowReader, int]:
    """The reader after replaying `window` (each second's flows checked to be that
    second's), and the most rows it held at once: rows its queries returned less rows it
    had handed over, counted here from the answers, not by the reader."""
    read = 0

    def query(sql: str, fmt: str) -> bytes:
        nonlocal read
        data = store.query(sql, fmt)
        if fmt == "ArrowStream" and data:
            read += ipc.open_stream(data).read_all().num_rows
        return data

    reader = FlowReader(query, store.settings.qualified_table, window)
    expected, handed, held = window.start, 0, 0
    for second, batch in reader.seconds():
        held = max(held, read - handed)
        assert second == expected
        expected += 1
        if batch is not None:
            assert set(flow_times(batch).tolist()) == {second}
            handed += batch.n
    assert expected == window.end
    return reader, held


def test_rows_held_follow_the_clock_lead_not_the_range(store: FlowStore) -> None:
    """A 180 s range holds no more than a 40 s one, but for the 30 s an exporter's clock
    runs ahead in it; holding `lead_s` (600 s) would hold the whole range here."""
    store.insert(_flows(range(T0, T0 + 200), ["198.51.100.1"], ahead=range(T0 + 120, T0 + 130)))
    short, short_held = _replay(store, ReplayWindow(T0 + 10, T0 + 50, chunk_s=10))
    long, long_held = _replay(store, ReplayWindow(T0 + 10, T0 + 190, chunk_s=10))
    assert short.flows == 40 * FPS and long.flows == 180 * FPS
    assert short.late == long.late == 0
    assert short_held <= (10 + 2) * FPS, short_held
    assert long_held <= (10 + AHEAD_S + 2) * FPS, long_held
    assert long.peak_held >= long_held  # what the report says covers it


def test_keys_and_tuning_stay_under_the_key_cap(tmp_path: Path) -> None:
    """A new source a second fires a rule: the report lists max_keys_per_rule of them and
    counts the rest's detections; tuning's day table never holds more than twice the cap
    (plus one observation), pruning the rest into the histogram."""
    sources = [f"198.51.100.{i}" for i in range(1, 61)]
    rules_path = write_rules(tmp_path / "a.yml", [
        {"name": "ssh", "proto": "tcp", "dst_ports": [22], "min_flows": 5, "time_window": "10s", "action": "alert"}])
    cfg = config(tmp_path, detection={"max_keys_per_rule": 4})
    with migrated_store("embedded", tmp_path) as opened:
        opened.insert(_flows(range(T0, T0 + 60), sources, rotate=True))
        rules = load_rule_set(rules_path)
        report = run_backtest(opened.query, opened.settings.qualified_table, cfg, [("a", rules), ("b", rules)],
                              ReplayWindow(T0, T0 + 60), tune_per_day=1)
    record = report.records[0]["ssh"]
    assert len(record.keys) == 4
    assert record.unlisted_detections > 0 and record.detections == record.unlisted_detections + sum(
        key.detections for key in record.keys.values())
    line = next(item for item in report.to_lines() if item["kind"] == "rule")
    assert line["keys_capped"] and line["unlisted_detections"] == record.unlisted_detections
    assert report.compare is not None and {item["rules_file"] for item in report.compare["not_compared"]} == {"a", "b"}
    (tuning,) = report.tuning
    assert tuning["keys_pruned"] > 0
    assert tuning["peak_day_keys"] <= 2 * 4 + 4


def test_every_rule_reads_flows_and_says_why_no_rollup(tmp_path: Path) -> None:
    """No rule shape is given exactly by a rollup (the engine's receipt-time sliding
    windows against minutes of start time; WHO_CAP): the source is flows, with why."""
    shipped = load_rule_set(Path(__file__).parents[1] / "appliance/flowenricher/examples/detection.yml")
    plain = load_rule_set(write_rules(tmp_path / "plain.yml", [
        {"name": "bytes_to_host", "key": "dst", "direction": "any", "min_bytes": 10**9, "time_window": "5m",
         "action": "alert"}]))
    for rule in [*shipped, *plain]:
        fit = rollup_fit(rule)
        assert fit.source == "flows"
        assert "timestamp_start" in fit.reason and "receipt second" in fit.reason, fit.reason
    assert f"at most {WHO_CAP} rows" in rollup_fit(plain[0]).reason
    assert "dst_port" in rollup_fit(shipped[3]).reason  # ssh_bruteforce: the host rollup has no port


def test_min_ml_score_reads_the_stored_anomaly_scores(tmp_path: Path) -> None:
    """Two sources scan alike; the stored scores put one above the rule's min_ml_score
    and one below: only it is detected, as live.  Without anomaly scoring enabled the
    service ignores min_ml_score, and so does the backtest."""
    scanner, other = "198.51.100.7", "198.51.100.8"
    rules_path = write_rules(tmp_path / "a.yml", [
        {"name": "scan", "proto": "tcp", "unique_dst_ips": 20, "min_ml_score": 0.7, "time_window": "30s",
         "action": "alert"}])
    with migrated_store("embedded", tmp_path) as opened:
        opened.insert(_flows(range(T0, T0 + 240), [scanner, other]))
        table = ANOMALY_SCORES.qualified(opened.settings.database)
        for start in range(T0 // 60 * 60 - 60, T0 + 240, 60):
            opened.query(ANOMALY_SCORES.insert_sql(opened.settings.database, [
                {"ts": start, "window_s": 60, "src_addr": str_to_addr(address), "score": score,
                 "exporter_address": bytes(16), "features": {}}
                for address, score in ((scanner, 0.9), (other, 0.65))]), "TSV")
        assert opened.query(f"SELECT count() FROM {table}", "TSV").strip() != b"0"
        window = ReplayWindow(T0, T0 + 240)
        scored = run_backtest(opened.query, opened.settings.qualified_table,
                              config(tmp_path, anomaly={"enabled": True}), [("a", load_rule_set(rules_path))], window)
        ignored = run_backtest(opened.query, opened.settings.qualified_table, config(tmp_path),
                               [("a", load_rule_set(rules_path))], window)
    assert {key[0] for _, key in scored.detected_keys()} == {scanner}
    assert scored.records[0]["scan"].ml_score.startswith("stored anomaly scores (exact")
    assert {key[0] for _, key in ignored.detected_keys()} == {scanner, other}
    assert ignored.records[0]["scan"].ml_score.startswith("ignored")
