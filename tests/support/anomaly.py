"""Shared parts of the anomaly tests (no tests here): hand-made flow batches, and
anomaly scoring trained on the generator's normal traffic, time driven explicitly."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from appliance.flowenricher.batch import FlowBatch
from appliance.flowenricher.config import AnomalySettings
from appliance.flowenricher.detect.anomaly import AnomalyScoring
from appliance.flowenricher.generate.flows import text_rows
from appliance.flowenricher.generate.traffic import TrafficGenerator

T0 = 1_800_000_000  # unix seconds, a multiple of 60


def hand_batch(rows: Sequence[dict[str, Any]], at: int = T0) -> FlowBatch:
    """One flow per dict (src, dst, port, proto, flags, packets, bytes, exporter, at)."""
    n = len(rows)

    def column(name: str, default: Any, dtype: Any) -> Any:
        return np.array([row.get(name, default) for row in rows], dtype=dtype)

    return FlowBatch(n, {
        "src_addr": text_rows([row["src"] for row in rows]),
        "dst_addr": text_rows([row.get("dst", "84.54.49.10") for row in rows]),
        "exporter_address": text_rows([row.get("exporter", "10.0.0.1") for row in rows]),
        "dst_port": column("port", 443, np.uint16),
        "proto": column("proto", 6, np.uint8),
        "tcpflags": column("flags", 0x1B, np.uint8),
        "packets": column("packets", 10, np.uint64),
        "bytes": column("bytes", 5000, np.uint64),
        "received_at": column("at", at, np.uint32),
        "timestamp_end": column("at", at, np.uint32),
        "flow_direction": column("direction", 1, np.uint8),
    })


def settings(path: Path, **overrides: Any) -> AnomalySettings:
    values: dict[str, Any] = {"enabled": True, "model_path": path / "anomaly-model.joblib", "min_baseline": 200,
                              "train_interval_s": 600.0}
    values.update(overrides)
    return AnomalySettings(**values)


def feed(target: Any, gen: TrafficGenerator, seconds: int, fps: int = 500, start: int = T0,
         advance: Any = None) -> None:
    """`seconds` of generated traffic into `target.process`, one batch a second received at
    the end of its second; `advance(now)` (default target.advance or target.tick) after each."""
    step = advance or getattr(target, "advance", None) or target.tick
    for offset in range(seconds):
        at = start + offset
        batch = gen.batch(fps, at * 1000, 1000).to_flow_batch()
        batch["received_at"] = np.full(batch.n, at, dtype=np.uint32)
        target.process(batch)
        step(at + 1)


def trained(path: Path, seconds: int = 300, seed: int = 7, **overrides: Any) -> AnomalyScoring:
    """Scoring whose model was trained on `seconds` of normal generated traffic (and that
    trains no other on its own: the interval is set beyond any test)."""
    scoring = AnomalyScoring(settings(path, **{"train_interval_s": 1e9, **overrides}), seed=1)
    feed(scoring, TrafficGenerator(scenario="normal", seed=seed), seconds)
    scoring.train_now()
    return scoring
