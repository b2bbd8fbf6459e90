"""The anomaly score in rules and config: `min_ml_score` (and its former name) in the
rules file, the `anomaly:` config block, and rules using the score through the real
detection engine fed by real anomaly scoring, including with a corrupt model file."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from prometheus_client import CollectorRegistry
from support.anomaly import T0, hand_batch, settings, trained
from support.detect import Collect

from appliance.flowenricher.config import parse_config
from appliance.flowenricher.detect import Detection, DetectionEngine, parse_rule_set
from appliance.flowenricher.detect.anomaly import AnomalyScoring
from appliance.flowenricher.errors import ConfigError
from appliance.flowenricher.generate.traffic import TrafficGenerator

SCANNER, RETRIER = "198.51.100.30", "198.51.100.20"



# ----------------------------------------------------------------- rules file


def test_min_ml_score_and_its_former_name() -> None:
    base = {"name": "ml", "proto": "tcp", "min_flows": 5, "time_window": "60s", "action": "alert"}
    [rule] = parse_rule_set([{**base, "min_ml_score": 0.7}])
    assert rule.min_ml_score == 0.7 and rule.min_anomaly_score == 0.7
    [old] = parse_rule_set([{**base, "min_anomaly_score": 0.6}])
    assert old.min_ml_score == 0.6
    # The score alone is a threshold: the rule is valid without any other.
    [alone] = parse_rule_set([{"name": "odd", "time_window": "60s", "action": "alert", "min_ml_score": 0.8}])
    assert alone.min_ml_score == 0.8 and alone.min_flows == 0
    with pytest.raises(ConfigError) as err:
        parse_rule_set([{**base, "min_ml_score": 0.7, "min_anomaly_score": 0.6}], "detection.yml")
    [problem] = err.value.problems
    assert problem.startswith("detection.yml: $[0].min_anomaly_score: rule 'ml': is the former name of min_ml_score")
    with pytest.raises(ConfigError, match=r"\$\[0\]\.min_ml_score: rule 'ml': 1.5 is greater than the maximum"):
        parse_rule_set([{**base, "min_ml_score": 1.5}])


def test_the_commented_example_in_the_shipped_rules_is_valid() -> None:
    """detection.yml shows an ml rule in comments (it needs anomaly scoring): uncommented,
    it must load."""
    text = (Path(__file__).resolve().parents[1] / "appliance" / "flowenricher" / "examples" / "detection.yml").read_text()
    block = text[text.index("# - name: ml_slow_scan"):]
    rules = yaml.safe_load("\n".join(line.removeprefix("# ") for line in block.splitlines()))
    [rule] = parse_rule_set(rules)
    assert rule.name == "ml_slow_scan" and rule.min_ml_score == 0.67 and rule.min_syn_ratio == 0.8


# ----------------------------------------------------------------- config


def test_anomaly_config_defaults_and_checks() -> None:
    default = parse_config({}).anomaly
    assert (default.enabled, default.window_s, default.train_interval_s, default.contamination) == (
        False, 60.0, 600.0, 0.005)
    assert default.model_path == Path("data/anomaly-model.joblib")
    custom = parse_config({"storage": {"path": "/var/lib/fe"}, "anomaly": {
        "enabled": True, "window": "2m", "train_interval": "5m", "contamination": "auto", "trees": 50}}).anomaly
    assert (custom.enabled, custom.window_s, custom.train_interval_s, custom.contamination, custom.trees) == (
        True, 120.0, 300.0, "auto", 50)
    assert custom.model_path == Path("/var/lib/fe/anomaly-model.joblib")
    with pytest.raises(ConfigError) as err:
        parse_config({"anomaly": {"window": "1500ms", "train_interval": "30s", "contamination": 0.9}}, "config.yaml")
    text = "\n".join(err.value.problems)
    assert "config.yaml: $.anomaly.window: must be whole seconds" in text
    assert "config.yaml: $.anomaly.train_interval: must be at least 1m" in text
    assert "$.anomaly.contamination" in text


# ----------------------------------------------------------------- through the engine


def probes(start: int, seconds: int) -> list[dict[str, Any]]:
    """A slow scanner (one SYN to a new host every 4 s, under every volume rule) and a
    client retrying one server (a SYN every 6 s): both pass a SYN-ratio rule."""
    scan = [{"src": SCANNER, "dst": f"84.54.49.{1 + i % 250}", "port": 3389, "flags": 0x02, "packets": 1,
             "bytes": 44, "at": start + 4 * i} for i in range(seconds // 4)]
    retry = [{"src": RETRIER, "dst": "84.54.49.10", "port": 443, "flags": 0x02, "packets": 2, "bytes": 120,
              "at": start + 6 * i} for i in range(seconds // 6)]
    return scan + retry


def run(engine: DetectionEngine, scoring: AnomalyScoring, start: int, seconds: int, extra: Sequence[dict[str, Any]],
        seed: int = 9) -> None:
    """Normal traffic plus `extra` flows, a batch a second into both, both ticked."""
    gen = TrafficGenerator(scenario="normal", seed=seed)
    for offset in range(seconds):
        at = start + offset
        batch = gen.batch(500, at * 1000, 1000).to_flow_batch()
        batch["received_at"] = np.full(batch.n, at, dtype=np.uint32)
        mine = [row for row in extra if row["at"] == at]
        for part in (batch, hand_batch(mine)) if mine else (batch,):
            scoring.process(part)
            engine.process(part)
        scoring.advance(at + 1)
        engine.tick(at + 1)


# The scanner scores about 0.71 on this model, the retrying client about 0.66 (the
# baseline's 99th percentile is about 0.655): 0.69 keeps the one and not the other.
ML_SCORE = 0.69
RULES = [
    {"name": "ml_slow_scan", "proto": "tcp", "min_flows": 5, "min_syn_ratio": 0.8, "min_ml_score": ML_SCORE,
     "time_window": "60s", "action": "alert"},
    {"name": "syn_sources", "proto": "tcp", "min_flows": 5, "min_syn_ratio": 0.8, "time_window": "60s",
     "action": "alert"},
]


def test_min_ml_score_picks_the_slow_scanner_through_the_engine(tmp_path: Path) -> None:
    scoring = trained(tmp_path, seconds=300)
    sink = Collect()
    engine = DetectionEngine(parse_rule_set(RULES), [sink], CollectorRegistry(), scorer=scoring.score_addresses,
                             listeners=[scoring.note_detection])
    start = T0 + 360
    run(engine, scoring, start, 240, probes(start, 240))
    # Without the score, both SYN sources match; with it, only the scanner.
    assert set(sink.by_rule("syn_sources")) == {SCANNER, RETRIER}
    ml = sink.by_rule("ml_slow_scan")
    assert set(ml) == {SCANNER}
    hit = ml[SCANNER]
    assert hit.anomaly_score is not None and hit.anomaly_score >= ML_SCORE
    assert hit.flows >= 5 and hit.to_dict()["anomaly_score"] == hit.anomaly_score
    # Every detection carries the source's score, whether its rule asks for one or not.
    assert all(d.anomaly_score is not None for d in sink.by_rule("syn_sources").values())
    retrier_score = sink.by_rule("syn_sources")[RETRIER].anomaly_score
    assert retrier_score is not None and retrier_score < ML_SCORE


def test_rules_run_unaffected_when_the_model_file_is_corrupt(tmp_path: Path) -> None:
    (tmp_path / "anomaly-model.joblib").write_bytes(b"\x80\x04garbage")
    # A baseline that never fills keeps a training (which would replace the bad file) out of the test.
    scoring = AnomalyScoring(settings(tmp_path, min_baseline=10**6), seed=1)
    assert scoring.model is None
    sink = Collect()
    engine = DetectionEngine(parse_rule_set(RULES), [sink], CollectorRegistry(), scorer=scoring.score_addresses,
                             listeners=[scoring.note_detection])
    start = T0 + 360
    run(engine, scoring, start, 120, probes(start, 120))
    assert set(sink.by_rule("syn_sources")) == {SCANNER, RETRIER}
    assert sink.by_rule("ml_slow_scan") == {}  # no score: the condition is not met
    assert all(d.anomaly_score is None for d in sink.detections)


def test_a_failing_scorer_or_listener_does_not_stop_the_rules(caplog: pytest.LogCaptureFixture) -> None:
    def broken_scorer(key: str, addresses: Sequence[str]) -> list[float | None]:
        raise RuntimeError("scorer down")

    def broken_listener(detection: Detection) -> None:
        raise RuntimeError("listener down")

    sink = Collect()
    engine = DetectionEngine(parse_rule_set(RULES), [sink], CollectorRegistry(), scorer=broken_scorer,
                             listeners=[broken_listener])
    start = T0 + 360
    for row in probes(start, 60):
        batch = hand_batch([row])
        engine.process(batch)
    engine.tick(start + 61)
    assert set(sink.by_rule("syn_sources")) == {SCANNER, RETRIER}
    assert sink.by_rule("ml_slow_scan") == {}
    assert all(d.anomaly_score is None for d in sink.detections)
    messages = [r.getMessage() for r in caplog.records]
    assert any("the anomaly scorer failed" in m for m in messages)
    assert any("a detection listener failed" in m for m in messages)
