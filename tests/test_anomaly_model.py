"""The Isolation Forest model and the running scorer: training and scores, the packed
scorer against scikit-learn's own, saving and loading (refusing bad files by name),
swapping a new model in without a restart, the baseline leaving detected sources out,
and scores stored in a real embedded ClickHouse (chDB)."""

from __future__ import annotations

import ipaddress
import logging
import pickle
import time
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.ensemble import IsolationForest
from support.anomaly import T0, feed, hand_batch, settings, trained

from appliance.flowenricher.detect.anomaly import (
    MODEL_FORMAT,
    AnomalyModel,
    AnomalyScoring,
    ModelError,
    ScoringUnavailable,
    transform,
)
from appliance.flowenricher.detect.detection import Detection
from appliance.flowenricher.detect.features import FEATURE_NAMES
from appliance.flowenricher.generate.traffic import TrafficGenerator
from appliance.flowenricher.storage import StoreSettings, open_store

WIDTH = len(FEATURE_NAMES)


def ordinary(n: int, seed: int = 0) -> np.ndarray:
    """Vectors of a cloud of similar sources."""
    rng = np.random.default_rng(seed)
    return rng.lognormal(mean=1.0, sigma=0.3, size=(n, WIDTH))


def test_outliers_score_higher_and_scores_stay_in_0_1() -> None:
    model = AnomalyModel.train(ordinary(2000), seed=1, contamination="auto")
    inliers = model.score(ordinary(200, seed=2))
    outliers = model.score(ordinary(20, seed=3) * 1000)
    assert np.all((inliers > 0) & (inliers <= 1)) and np.all((outliers > 0) & (outliers <= 1))
    assert outliers.min() > np.percentile(inliers, 99)
    assert model.samples == 2000 and model.feature_names == FEATURE_NAMES
    assert model.threshold == pytest.approx(0.5)  # contamination "auto": the paper's threshold


def test_packed_scorer_equals_scikit_learn() -> None:
    vectors = np.vstack([ordinary(3000), ordinary(50, seed=4) * 50])
    model = AnomalyModel.train(vectors, seed=3, contamination=0.01)
    # More rows than one chunk of the packed scorer, so the chunks join in order.
    probe = np.vstack([ordinary(5000, seed=5), ordinary(20, seed=6) * 30, np.zeros((3, WIDTH))])
    expected = -model.forest.score_samples(transform(probe))
    np.testing.assert_allclose(model.score(probe), expected, rtol=1e-12, atol=1e-12)
    assert model.threshold == pytest.approx(-model.forest.offset_)


def test_training_refuses_bad_shapes() -> None:
    with pytest.raises(ValueError, match=f"{WIDTH} columns"):
        AnomalyModel.train(np.ones((10, WIDTH - 1)))
    with pytest.raises(ValueError, match="at least 2"):
        AnomalyModel.train(np.ones((1, WIDTH)))
    model = AnomalyModel.train(ordinary(100))
    with pytest.raises(ValueError, match=f"{WIDTH} columns"):
        model.score(np.ones((2, WIDTH + 1)))


def test_saved_model_loads_with_its_metadata(tmp_path: Path) -> None:
    model = AnomalyModel.train(ordinary(500), seed=2, now=1_700_000_000.0)
    path = tmp_path / "models" / "anomaly.joblib"
    model.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["anomaly.joblib"]  # no temporary file left
    raw = joblib.load(path)
    assert raw["format"] == MODEL_FORMAT and raw["feature_names"] == list(FEATURE_NAMES)
    assert raw["sklearn_version"] and raw["trained_at"] == 1_700_000_000.0 and raw["samples"] == 500
    loaded = AnomalyModel.load(path)
    probe = ordinary(50, seed=9)
    np.testing.assert_array_equal(loaded.score(probe), model.score(probe))


def _write(path: Path, content: object) -> Path:
    joblib.dump(content, path)
    return path


@pytest.mark.parametrize("make, reason", [
    (lambda p: p, "no model file"),
    (lambda p: (p.write_bytes(b"\x00garbage\xff" * 10), p)[1], "not a readable model file"),
    (lambda p: _write(p, {"format": 1, "model": "a string"}), "no IsolationForest inside"),
    (lambda p: _write(p, [1, 2, 3]), "no IsolationForest inside"),
])
def test_unusable_files_are_refused_by_name(tmp_path: Path, make: object, reason: str) -> None:
    path = tmp_path / "m.joblib"
    assert callable(make)
    make(path)
    with pytest.raises(ModelError, match=reason) as err:
        AnomalyModel.load(path)
    assert str(path) in str(err.value)


def test_truncated_and_mismatched_models_are_refused(tmp_path: Path) -> None:
    good = tmp_path / "good.joblib"
    AnomalyModel.train(ordinary(300)).save(good)
    truncated = tmp_path / "truncated.joblib"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(ModelError, match="not a readable model file"):
        AnomalyModel.load(truncated)
    data = joblib.load(good)
    with pytest.raises(ModelError, match="model format 99"):
        AnomalyModel.load(_write(tmp_path / "format.joblib", {**data, "format": 99}))
    with pytest.raises(ModelError, match="trained on features"):
        AnomalyModel.load(_write(tmp_path / "names.joblib", {**data, "feature_names": ["a", "b"]}))
    narrow = IsolationForest(n_estimators=5).fit(np.ones((10, 3)))
    with pytest.raises(ModelError, match="takes 3 features"):
        AnomalyModel.load(_write(tmp_path / "narrow.joblib", {**data, "model": narrow}))
    # Plain pickle of something else altogether.
    other = tmp_path / "other.joblib"
    other.write_bytes(pickle.dumps({"hello": "world"}))
    with pytest.raises(ModelError, match="no IsolationForest"):
        AnomalyModel.load(other)


def test_corrupt_model_turns_scoring_off_with_one_log_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "anomaly-model.joblib"
    path.write_bytes(b"not a model")
    with caplog.at_level(logging.INFO, logger="appliance.flowenricher.detect.anomaly"):
        scoring = AnomalyScoring(settings(tmp_path), seed=1)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and str(path) in errors[0].getMessage()
    assert "scoring is off" in errors[0].getMessage()
    assert scoring.model is None
    with pytest.raises(ScoringUnavailable):
        scoring.score_vectors(ordinary(3))
    # Windows still close; nothing is scored; the rules' hook answers None.
    scoring.process(hand_batch([{"src": "198.51.100.1"}]))
    [(window, scores)] = scoring.advance(T0 + 60)
    assert len(window) == 1 and np.isnan(scores).all()
    assert scoring.score_addresses("src", ["198.51.100.1"]) == [None]
    # The same bad file is not reported again at every check.
    caplog.clear()
    scoring.check_model_file()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_missing_model_is_said_once_and_scoring_waits_for_training(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="appliance.flowenricher.detect.anomaly"):
        scoring = AnomalyScoring(settings(tmp_path), seed=1)
    assert scoring.model is None
    assert any("no model at" in r.getMessage() for r in caplog.records)
    assert scoring.score_addresses("src", ["198.51.100.1"]) == [None]


def test_new_model_file_is_swapped_in_without_restart(tmp_path: Path) -> None:
    scoring = trained(tmp_path, seconds=180)
    first = scoring.model
    assert first is not None
    probe = ordinary(20, seed=11)
    before = scoring.score_vectors(probe)
    # The operator installs another model (another baseline) over the file.
    replacement = AnomalyModel.train(ordinary(1000, seed=12), seed=5)
    time.sleep(0.01)  # a distinct mtime
    replacement.save(scoring.model_path)
    scoring.check_model_file()
    assert scoring.model is not first
    np.testing.assert_array_equal(scoring.score_vectors(probe), replacement.score(probe))
    assert not np.array_equal(before, scoring.score_vectors(probe))
    # A corrupt replacement turns scoring off (rules keep running without the score).
    scoring.model_path.write_bytes(b"broken")
    scoring.check_model_file()
    assert scoring.model is None


def test_first_model_trains_at_once_then_every_interval(tmp_path: Path) -> None:
    scoring = AnomalyScoring(settings(tmp_path, train_interval_s=120.0), seed=1)
    gen = TrafficGenerator(scenario="normal", seed=3)
    feed(scoring, gen, 59)
    assert scoring.model is None and scoring.baseline_size == 0  # no window closed yet
    feed(scoring, gen, 1, start=T0 + 59)  # the first window closes: baseline >= min_baseline
    assert scoring.wait_training(30)
    first = scoring.model
    assert first is not None and scoring.model_path.exists() and first.samples == scoring.baseline_size
    assert AnomalyModel.load(scoring.model_path).samples == first.samples
    feed(scoring, gen, 110, start=T0 + 60)  # up to T0 + 170: within the interval
    assert scoring.wait_training(30) and scoring.model is first
    feed(scoring, gen, 20, start=T0 + 170)  # past T0 + 180: retrained on the grown baseline
    assert scoring.wait_training(30)
    second = scoring.model
    assert second is not None and second is not first and second.samples > first.samples
    # The next window is scored with it, and the hook answers for its sources.
    scoring.process(hand_batch([{"src": "198.51.100.1", "at": T0 + 250}, {"src": "198.51.100.2", "at": T0 + 251}]))
    closed = scoring.advance(T0 + 300)
    assert [w.start for w, _ in closed] == [T0 + 180, T0 + 240]
    window, scores = closed[1]
    assert len(window) == 2 and not np.isnan(scores).any()
    assert scoring.score_addresses("src", ["198.51.100.2", "198.51.100.9"]) == [scores[1], None]


def test_detected_sources_stay_out_of_the_baseline(tmp_path: Path) -> None:
    scoring = AnomalyScoring(settings(tmp_path), seed=1)
    rows = [{"src": f"198.51.100.{i}", "at": T0 + 10} for i in range(1, 6)]
    scoring.process(hand_batch(rows))
    scoring.note_detection(Detection(rule="scan", key="src", address="198.51.100.3", detected_at=T0 + 30,
                                     window_s=60, flows=1, packets=1, bytes=1, pps=0, bps=0, syn_ratio=0,
                                     first_seen=T0 + 10, last_seen=T0 + 10, actions=("alert",), blackhole=False))
    scoring.advance(T0 + 60)
    assert scoring.baseline_size == 4


def test_a_scanner_detected_once_trains_none_of_its_windows(tmp_path: Path) -> None:
    """The issue's case: a scanner active in 6 windows is detected once, in its last one
    (the engine reports a source when its rule's window ends); the windows it had before
    were already in the ring when the detection arrived, and must leave it too."""
    scoring = AnomalyScoring(settings(tmp_path, min_baseline=10**6), seed=1)
    scanner = "203.0.113.66"
    scanner_vectors = []
    for w in range(6):
        start = T0 + 60 * w
        probes = [{"src": scanner, "dst": f"84.54.49.{i}", "port": 3389, "flags": 0x02, "packets": 1, "bytes": 44,
                   "at": start + 1 + i % 50} for i in range(1, 40)]
        benign = [{"src": f"198.51.100.{i}", "at": start + 5} for i in range(1, 21)]
        scoring.process(hand_batch(probes + benign))
        [(window, _)] = scoring.advance(start + 60)
        mapped = [ipaddress.IPv6Address(bytes(row)).ipv4_mapped for row in window.sources]
        scanner_vectors.append(window.vectors[mapped.index(ipaddress.IPv4Address(scanner))])
    assert scoring.baseline_size == 6 * 21  # the scanner's windows went in while nobody had named it
    scoring.note_detection(Detection(rule="scan", key="src", address=scanner, detected_at=T0 + 360, window_s=60,
                                     flows=39, packets=39, bytes=1716, pps=0, bps=0, syn_ratio=1,
                                     first_seen=T0 + 301, last_seen=T0 + 350, actions=("alert",), blackhole=False))
    training_set = scoring.baseline()
    assert len(training_set) == 6 * 20 and scoring.baseline_size == 6 * 20
    for vector in scanner_vectors:
        assert not (training_set == vector).all(axis=1).any()
    assert scoring.train_now().samples == 6 * 20
    # Windows of the scanner closing just after the detection stay out as before.
    scoring.process(hand_batch([{"src": scanner, "dst": "84.54.49.1", "flags": 0x02, "at": T0 + 361},
                                {"src": "198.51.100.1", "at": T0 + 361}]))
    scoring.advance(T0 + 420)
    assert scoring.baseline_size == 6 * 20 + 1


def test_scores_reach_the_rules_hook_and_the_store(tmp_path: Path) -> None:
    store = open_store(StoreSettings(path=str(tmp_path / "data")))
    try:
        store.migrate()
        scoring = AnomalyScoring(settings(tmp_path, store_min_score=0.0), seed=1,
                                 execute=lambda sql: store.query(sql, "TSV"))
        feed(scoring, TrafficGenerator(scenario="normal", seed=3), 120)
        scoring.train_now()
        scanner: list[dict[str, Any]] = [
            {"src": "203.0.113.66", "dst": f"84.54.49.{i}", "port": 3389, "flags": 0x02, "packets": 1, "bytes": 44,
             "at": T0 + 180 + i} for i in range(1, 30)]
        scoring.process(hand_batch(scanner))
        feed(scoring, TrafficGenerator(scenario="normal", seed=4), 60, start=T0 + 180)
        scoring.advance(T0 + 241)
        [score] = scoring.score_addresses("src", ["203.0.113.66"])
        assert score is not None and score > 0.6
        assert scoring.score_addresses("dst", ["203.0.113.66"]) == [None]
        assert scoring.flush(10)
        rows = store.query("SELECT toString(src_addr), score, features['unique_dst_ips'], window_s, "
                           "toString(exporter_address) FROM flowenricher.anomaly_scores "
                           "WHERE src_addr = toIPv6('::ffff:203.0.113.66')", "TSV").decode().splitlines()
        [(address, stored, unique, window_s, exporter)] = [tuple(line.split("\t")) for line in rows]
        assert address == "::ffff:203.0.113.66" and float(stored) == pytest.approx(score, abs=1e-6)
        assert (unique, window_s, exporter) == ("29", "60", "::ffff:10.0.0.1")
        total = int(store.query("SELECT count() FROM flowenricher.anomaly_scores", "TSV"))
        assert total > 1000  # every source of the windows scored after training
        scoring.close()
        # By default only the source-windows scoring at least store_min_score are kept.
        store.query("TRUNCATE TABLE flowenricher.anomaly_scores", "TSV")
        picky = AnomalyScoring(settings(tmp_path), seed=1, execute=lambda sql: store.query(sql, "TSV"))
        assert picky.settings.store_min_score == 0.6
        assert scoring.model is not None
        picky.install(scoring.model)
        picky.process(hand_batch([{**row, "at": row["at"] + 120} for row in scanner]))
        feed(picky, TrafficGenerator(scenario="normal", seed=5), 60, start=T0 + 300)
        picky.advance(T0 + 361)
        assert picky.flush(10)
        kept = store.query("SELECT count(), min(score), countIf(src_addr = toIPv6('::ffff:203.0.113.66')) "
                           "FROM flowenricher.anomaly_scores", "TSV").decode().split()
        assert 0 < int(kept[0]) < total / 5 and float(kept[1]) >= 0.6 and kept[2] == "1", kept
        picky.close()
    finally:
        store.close()
