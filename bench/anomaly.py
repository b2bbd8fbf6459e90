"""Anomaly scoring costs, one core: scoring 1,000 vectors (target <= 5 ms), scikit-learn's
own scorer on the same model for comparison, training, and feature extraction.

    python bench/anomaly.py [--vectors 1000] [--repeat 200] [--flows 300000]

The model is trained with the shipped settings on the feature vectors of ten minutes of
generated traffic (as the service trains it); the vectors scored are one closed window's.  Times are
medians over `--repeat` runs (the 95th percentile is printed too: the machine is shared).
Feature extraction is timed on `--flows` generated flows in batches of 50,000, the
service's batch size at speed, then one window closed (with the windows of the ten
minutes before it in the history the last feature counts over).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from appliance.flowenricher.config import AnomalySettings
from appliance.flowenricher.detect.anomaly import AnomalyModel, transform
from appliance.flowenricher.detect.features import FeatureWindows
from appliance.flowenricher.generate.traffic import TrafficGenerator

T0 = 1_800_000_000


def timed(fn: object, repeat: int) -> tuple[float, float]:
    assert callable(fn)
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return float(np.median(times)) * 1000, float(np.percentile(times, 95)) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=200)
    parser.add_argument("--flows", type=int, default=300_000)
    args = parser.parse_args()

    gen = TrafficGenerator(scenario="attacks", seed=1)
    defaults = AnomalySettings()  # the shipped history, trees, samples per tree and contamination
    windows = FeatureWindows(60, defaults.history_windows)
    vectors = []
    for second in range(600):
        batch = gen.batch(500, (T0 + second) * 1000, 1000).to_flow_batch()
        batch["received_at"] = np.full(batch.n, T0 + second, dtype=np.uint32)
        windows.add(batch)
        vectors += [w.vectors for w in windows.close(T0 + second + 1)]
    baseline = np.concatenate(vectors)
    began = time.perf_counter()
    model = AnomalyModel.train(baseline, seed=1, trees=defaults.trees, max_samples=defaults.tree_samples,
                               contamination=defaults.contamination)
    train_s = time.perf_counter() - began
    probe = baseline[-args.vectors:]
    model.score(probe)  # build the packed trees once, as loading a model does
    ours = timed(lambda: model.score(probe), args.repeat)
    x = transform(probe)
    theirs = timed(lambda: model.forest.score_samples(x), max(args.repeat // 4, 5))
    print(f"score {len(probe)} vectors ({len(model.forest.estimators_)} trees of {model.forest.max_samples_} "
          f"samples, depth {model._packed.depth if model._packed else '?'}): median {ours[0]:.2f} ms, "
          f"p95 {ours[1]:.2f} ms (scikit-learn's score_samples: median {theirs[0]:.2f} ms)")
    print(f"train on {len(baseline)} source-windows: {train_s:.2f} s")

    batches = []
    per = 50_000
    for i in range(args.flows // per):
        batch = gen.batch(per, (T0 + 1000) * 1000 + i, 1000).to_flow_batch()
        batch["received_at"] = np.full(batch.n, T0 + 1000, dtype=np.uint32)
        batches.append(batch)
    cpu = time.process_time()
    began = time.perf_counter()
    for batch in batches:
        windows.add(batch)
    [closed] = windows.close(T0 + 1200)
    wall = time.perf_counter() - began
    cpu = time.process_time() - cpu
    flows = sum(b.n for b in batches)
    print(f"features: {flows} flows in {len(batches)} batches -> {len(closed)} sources: {flows / cpu:,.0f} flows/s "
          f"(CPU time; wall {flows / wall:,.0f} flows/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
