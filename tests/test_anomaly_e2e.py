"""Anomaly scoring end to end with real tools: `flowenricher run` with `anomaly:` enabled
in the attack lab's collector namespace (support.attack_lab), softflowd exporting what
the border router sees, a model installed before the start (trained on the generator's
normal traffic), and a slow nmap scan (one probe a second, `--max-rate 1`, far under
every shipped scan rule) against ordinary web and DNS use.

What it shows, all through the service's own wiring: the model file is loaded at start,
scores of every source-window land in the ``anomaly_scores`` table (migration 3) with
their features, the slow scanner scores above the model's suggested threshold and above
the benign client, a rule with ``min_ml_score`` fires for the scanner with the score
attached (detections.log and the detections table), and the scoring endpoint answers
on the running control plane.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.attack_lab import (
    CLIENT,
    NMAP,
    SCANNER_H,
    UPLINK_IF,
    VICTIM_NET,
    AttackLab,
    Collector,
    collector_config,
)
from support.attack_lab import unavailable_reason as lab_unavailable
from support.netns import TestNetwork, require_netns, sweep_stale

from appliance.flowenricher.config import AnomalySettings
from appliance.flowenricher.detect.anomaly import AnomalyModel
from appliance.flowenricher.detect.features import FeatureWindows
from appliance.flowenricher.generate.traffic import TrafficGenerator

WINDOW_S = 10
T0 = 1_800_000_000


def baseline_model(path: Path) -> AnomalyModel:
    """A model of ordinary traffic (the generator's normal model, ten-second windows),
    saved where the service will load it."""
    gen = TrafficGenerator(scenario="normal", seed=11)
    windows = FeatureWindows(WINDOW_S, AnomalySettings().history_windows)  # as the service counts
    vectors = []
    for second in range(300):
        batch = gen.batch(300, (T0 + second) * 1000, 1000).to_flow_batch()
        batch["received_at"] = np.full(batch.n, T0 + second, dtype=np.uint32)
        windows.add(batch)
        vectors += [w.vectors for w in windows.close(T0 + second + 1)]
    model = AnomalyModel.train(np.concatenate(vectors), seed=1, contamination=0.005, max_samples=1024)
    model.save(path)
    return model


@dataclass
class Setup:
    lab: AttackLab
    collector: Collector
    workdir: Path
    model: AnomalyModel

    def detections(self) -> list[dict[str, Any]]:
        path = self.workdir / "detections.log"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def scores(self, address: str) -> list[dict[str, Any]]:
        return self.collector.sql(
            "SELECT toUnixTimestamp(ts) AS ts, score, features['syn_dst_ips'] AS syn_dst_ips, "
            "features['unique_dst_ips'] AS unique_dst_ips FROM flowenricher.anomaly_scores "
            f"WHERE src_addr = toIPv6('::ffff:{address}') ORDER BY ts")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    require_netns()
    reason = lab_unavailable()
    if reason:
        pytest.skip(reason)
    sweep_stale()
    workdir = tmp_path_factory.mktemp("anomaly-e2e")
    model_path = workdir / "anomaly-model.joblib"
    model = baseline_model(model_path)
    rules = workdir / "detection.yml"
    rules.write_text(
        "- name: ml_scan\n  proto: tcp\n  min_flows: 3\n  min_syn_ratio: 0.8\n"
        f"  min_ml_score: {model.threshold:.4f}\n  time_window: 60s\n  action: alert,clickhouse\n")
    net = TestNetwork(workdir / "net")
    try:
        lab = AttackLab(net, workdir / "lab").start()
        config = collector_config(workdir, port=lab.collector_port, rules=rules) + (
            "anomaly:\n  enabled: true\n"
            f"  window: {WINDOW_S}s\n  model_path: {json.dumps(str(model_path))}\n  train_interval: 1h\n"
            "  store_min_score: 0\n")  # the client's windows are stored however ordinary they score
        collector = Collector(lab, config, workdir)
        yield Setup(lab, collector, workdir, model)
        code = collector.stop()
        log = collector.proc.stderr()
        assert code == 0, f"collector exited {code} on SIGTERM:\n{log[-6000:]}"
        assert "Traceback" not in log, log[-6000:]
        assert f"anomaly: model loaded from {model_path}" in log, log[-6000:]
    finally:
        net.close()


def slow_scan(lab: AttackLab, hosts: int, delay_s: float) -> None:
    """nmap SYN probes to port 3389 of `hosts` own addresses, one every `delay_s` seconds,
    with the exporter flushed every few seconds meanwhile: on the lab's quiet link
    softflowd would otherwise hold the packets until the end (support.attack_lab), and
    the probes would reach the collector as one burst instead of spread over windows."""
    targets = [f"{VICTIM_NET.rsplit('.', 1)[0]}.{100 + i}" for i in range(hosts)]
    argv = [NMAP, "-sS", "-Pn", "-n", "--max-rate", f"{1 / delay_s:g}", "--max-retries", "0", "-S", SCANNER_H,
            "-e", UPLINK_IF, "-p", "3389", *targets]
    nmap = lab.net.spawn(lab.attacker, argv, "slow-nmap")
    deadline = time.monotonic() + hosts * delay_s + 60
    while nmap.alive():
        assert time.monotonic() < deadline, nmap.describe()
        time.sleep(3)
        lab.flush()
    assert nmap.wait(10) == 0, nmap.describe()


def test_slow_scan_scores_high_and_fires_the_ml_rule(setup: Setup) -> None:
    setup.lab.benign(duration=8, web_interval=0.2, dns_interval=0.2)
    slow_scan(setup.lab, hosts=40, delay_s=1.0)
    setup.lab.flush()
    time.sleep(WINDOW_S + 3)  # the last window closes, is scored and stored
    deadline = time.monotonic() + 20
    while not (scanner := setup.scores(SCANNER_H)) and time.monotonic() < deadline:
        time.sleep(0.5)
    client = setup.scores(CLIENT)
    assert scanner and client, (scanner, client)
    assert len(scanner) >= 3, scanner  # the scan spread over windows, as a slow scan does
    best = max(scanner, key=lambda row: float(row["score"]))
    print(f"threshold {setup.model.threshold:.3f}; scanner windows {[round(float(r['score']), 3) for r in scanner]}; "
          f"client windows {[round(float(r['score']), 3) for r in client]}")
    # A window of the scan: several hosts probed with connection attempts alone.
    assert int(float(best["syn_dst_ips"])) >= 5 and best["unique_dst_ips"] == best["syn_dst_ips"], best
    assert float(best["score"]) >= setup.model.threshold, (best, setup.model.threshold)
    assert float(best["score"]) > max(float(row["score"]) for row in client), (scanner, client)
    # The rule with min_ml_score fired for the scanner, score attached; not for the client.
    fired = [d for d in setup.detections() if d["rule"] == "ml_scan"]
    assert {d["address"] for d in fired} == {SCANNER_H}, fired
    assert all(d["anomaly_score"] >= setup.model.threshold for d in fired), fired
    stored = setup.collector.sql("SELECT rule, anomaly_score FROM flowenricher.detections WHERE rule = 'ml_scan'")
    assert stored and all(float(row["anomaly_score"]) >= setup.model.threshold - 1e-6 for row in stored), stored
