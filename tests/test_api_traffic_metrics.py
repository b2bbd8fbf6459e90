"""Prometheus traffic counters by configured labels, and their cardinality caps."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from support import sample_batch

from appliance.flowenricher.batch import DictColumn, FlowBatch
from appliance.flowenricher.columns import DIRECTION_NAMES
from appliance.flowenricher.errors import ConfigError
from appliance.flowenricher.traffic_metrics import TrafficMetrics

LABELS = ["src_host_country", "proto", "flow_direction"]


def scrape(registry: CollectorRegistry) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Metric samples by name and label set, as Prometheus would read them."""
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def expected(batches: list[FlowBatch], labels: list[str]) -> dict[tuple[tuple[str, str], ...], list[int]]:
    """Totals per label combination, computed row by row in Python."""
    totals: dict[tuple[tuple[str, str], ...], list[int]] = {}
    for batch in batches:
        for row in batch.rows():
            values = []
            for name in labels:
                value = row[name]
                if name == "flow_direction":
                    value = DIRECTION_NAMES[value]
                values.append((name, str(value) or "unknown"))
            entry = totals.setdefault(tuple(sorted(values)), [0, 0, 0])
            entry[0] += row["bytes"]
            entry[1] += row["packets"]
            entry[2] += 1
    return totals


def test_counts_by_labels_match_the_flows() -> None:
    registry = CollectorRegistry()
    metrics = TrafficMetrics(LABELS, max_series=1000, registry=registry)
    batches = [sample_batch(2000, seed=s) for s in range(3)]
    for batch in batches:
        metrics.observe(batch)
    metrics.observe(FlowBatch(0))
    samples = scrape(registry)
    want = expected(batches, LABELS)
    assert samples["flowenricher_traffic_bytes_total"] == {k: float(v[0]) for k, v in want.items()}
    assert samples["flowenricher_traffic_packets_total"] == {k: float(v[1]) for k, v in want.items()}
    assert samples["flowenricher_traffic_flows_total"] == {k: float(v[2]) for k, v in want.items()}
    assert samples["flowenricher_traffic_capped_flows_total"] == {(): 0.0}
    assert samples["flowenricher_traffic_series"] == {(): float(len(want))}
    assert (("flow_direction", "inbound"), ("proto", "6"), ("src_host_country", "unknown")) in want


def test_a_scan_cannot_explode_the_series() -> None:
    """A port scan: every flow a new destination port; ports beyond the cap read "other"."""
    registry = CollectorRegistry()
    metrics = TrafficMetrics(["dst_port", "proto"], max_series=50, registry=registry)
    n = 5000
    scan = FlowBatch(n, {"dst_port": np.arange(n, dtype=np.uint16), "proto": np.full(n, 6, np.uint8),
                         "bytes": np.full(n, 60, np.uint64), "packets": np.ones(n, np.uint64)})
    metrics.observe(scan)
    metrics.observe(scan)
    flows = scrape(registry)["flowenricher_traffic_flows_total"]
    assert len(flows) == 51  # 50 series, plus the one where every label reads "other"
    assert sum(flows.values()) == 2 * n  # nothing is lost, only grouped
    named = {dict(k)["dst_port"] for k in flows} - {"other"}
    assert len(named) == 49 and named <= {str(p) for p in range(50)}
    other = sum(v for k, v in flows.items() if dict(k)["dst_port"] == "other")
    assert other == 2 * (n - 49)
    assert scrape(registry)["flowenricher_traffic_capped_flows_total"][()] == other


def test_label_value_cap_keeps_other_labels() -> None:
    registry = CollectorRegistry()
    metrics = TrafficMetrics(["src_as_name", "flow_direction"], max_series=4, registry=registry)
    names = DictColumn(np.arange(6, dtype=np.uint32), ["a", "b", "c", "d", "e", "f"])
    batch = FlowBatch(6, {"src_as_name": names, "flow_direction": np.full(6, 1, np.uint8),
                          "bytes": np.full(6, 10, np.uint64)})
    metrics.observe(batch)
    flows = scrape(registry)["flowenricher_traffic_flows_total"]
    as_names = Counter(dict(k)["src_as_name"] for k in flows)
    assert set(as_names) <= {"a", "b", "c", "d", "other"} and sum(flows.values()) == 6


@pytest.mark.parametrize(("labels", "max_series", "words"), [
    (["src_addr"], 10, "is an address"),
    (["bytes"], 10, "not a flow column that can be a label"),
    (["dst_as_path"], 10, "not a flow column"),
    (["proto", "proto"], 10, "listed twice"),
    (["proto"], 0, "at least 1"),
    (["proto", "dst_port", "src_port", "src_as", "dst_as", "input_interface", "output_interface"], 1000,
     "too many combinations"),
])
def test_bad_labels_are_config_errors(labels: list[str], max_series: int, words: str) -> None:
    with pytest.raises(ConfigError) as err:
        TrafficMetrics(labels, max_series)
    assert any(words in line and line.startswith("config: $.metrics.traffic") for line in err.value.problems)
