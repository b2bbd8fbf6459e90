"""Per-source feature vectors: exact values on hand-made flows, and tumbling windows that
give the same vectors however the flows are cut into batches."""

from __future__ import annotations

import math

import numpy as np
import pytest
from support.anomaly import T0, hand_batch

from appliance.flowenricher.batch import FlowBatch, addr_to_str
from appliance.flowenricher.detect.features import FEATURE_NAMES, FeatureWindows, features_of_batch
from appliance.flowenricher.generate.traffic import TrafficGenerator


def by_source(features: object) -> dict[str, dict[str, float]]:
    assert hasattr(features, "sources") and hasattr(features, "vectors")
    return {addr_to_str(row): dict(zip(FEATURE_NAMES, vector.tolist(), strict=True))
            for row, vector in zip(features.sources, features.vectors, strict=True)}


def test_features_are_exact_on_hand_made_flows() -> None:
    scanner = [{"src": "198.51.100.7", "dst": f"84.54.49.{i}", "port": 22, "flags": 0x02, "packets": 1, "bytes": 44}
               for i in (1, 2, 3)]
    client = [
        {"src": "2001:db8::5", "dst": "84.54.49.9", "port": 443, "proto": 6, "flags": 0x1B, "packets": 10,
         "bytes": 6000},
        {"src": "2001:db8::5", "dst": "84.54.49.9", "port": 443, "proto": 17, "flags": 0, "packets": 20,
         "bytes": 24000},
        {"src": "2001:db8::5", "dst": "84.54.49.8", "port": 53, "proto": 17, "flags": 0, "packets": 1, "bytes": 80},
        {"src": "2001:db8::5", "dst": "84.54.49.8", "port": 0, "proto": 58, "flags": 0, "packets": 1, "bytes": 64},
    ]
    features = by_source(features_of_batch(hand_batch(scanner + client), window_s=60))
    assert set(features) == {"198.51.100.7", "2001:db8::5"}
    scan = features["198.51.100.7"]
    assert scan == pytest.approx({
        "flows_per_s": 3 / 60, "packets_per_s": 3 / 60, "bytes_per_s": 132 / 60, "unique_dst_ips": 3,
        "unique_dst_ports": 1, "syn_ratio": 1.0, "dst_port_entropy": 0.0, "dst_ip_entropy": math.log2(3),
        "mean_packet_size": 44.0, "packets_per_flow": 1.0, "tcp_share": 1.0, "udp_share": 0.0, "icmp_share": 0.0,
        "syn_dst_ips": 3, "syn_dst_ports": 1, "syn_dst_ips_history": 3,
        "syn_dst_share_history": 1.0,
    })
    mix = features["2001:db8::5"]
    assert mix == pytest.approx({
        "flows_per_s": 4 / 60, "packets_per_s": 32 / 60, "bytes_per_s": 30144 / 60, "unique_dst_ips": 2,
        "unique_dst_ports": 3, "syn_ratio": 0.0,
        # ports 443, 443, 53, 0: p = 1/2, 1/4, 1/4 -> 1.5 bits; addresses 2 and 2 -> 1 bit
        "dst_port_entropy": 1.5, "dst_ip_entropy": 1.0,
        "mean_packet_size": 30144 / 32, "packets_per_flow": 8.0, "tcp_share": 0.25, "udp_share": 0.5,
        "icmp_share": 0.25, "syn_dst_ips": 0, "syn_dst_ports": 0, "syn_dst_ips_history": 0,
        "syn_dst_share_history": 0.0,
    })


def test_connection_attempts_are_syn_without_ack() -> None:
    # SYN alone (twice, to two hosts and ports), SYN+ACK (an answer), a complete
    # connection, and a UDP flow whose flags field is 2: two attempts in five flows.
    rows = [{"src": "198.51.100.1", "flags": 0x02, "dst": "84.54.49.1", "port": 22},
            {"src": "198.51.100.1", "flags": 0x02, "dst": "84.54.49.2", "port": 23},
            {"src": "198.51.100.1", "flags": 0x12, "dst": "84.54.49.3", "port": 24},
            {"src": "198.51.100.1", "flags": 0x1B, "dst": "84.54.49.4", "port": 25},
            {"src": "198.51.100.1", "flags": 0x02, "dst": "84.54.49.5", "port": 26, "proto": 17}]
    [vector] = by_source(features_of_batch(hand_batch(rows), window_s=10)).values()
    assert vector["syn_ratio"] == pytest.approx(2 / 5)
    assert (vector["syn_dst_ips"], vector["syn_dst_ports"], vector["unique_dst_ips"]) == (2, 2, 5)


def test_history_counts_distinct_attempt_destinations_over_the_last_windows() -> None:
    # Three windows of 60 s, history of two: a scanner probing new hosts each minute, a
    # client retrying the same blocked server, and a source whose only attempt is old.
    windows = FeatureWindows(60, history_windows=2)
    rows = []
    for minute in range(3):
        at = T0 + 60 * minute + 5
        rows += [{"src": "198.51.100.7", "dst": f"84.54.49.{10 * minute + i}", "flags": 0x02, "at": at + i}
                 for i in range(3)]
        rows += [{"src": "192.0.2.20", "dst": "203.0.113.9", "flags": 0x02, "at": at + i} for i in range(4)]
    rows.append({"src": "192.0.2.30", "dst": "203.0.113.1", "flags": 0x02, "at": T0 + 1})
    rows.append({"src": "192.0.2.30", "dst": "203.0.113.1", "flags": 0x1B, "at": T0 + 125})
    windows.add(hand_batch(rows))
    closed = [by_source(w) for w in windows.close(T0 + 180)]
    assert [w["198.51.100.7"]["syn_dst_ips_history"] for w in closed] == [3, 6, 6]
    assert [w["198.51.100.7"]["syn_dst_ips"] for w in closed] == [3, 3, 3]
    assert [w["192.0.2.20"]["syn_dst_ips_history"] for w in closed] == [1, 1, 1]
    # Per flow over the same windows: every scanner flow a new host; the retrying client
    # one host in its 4, then 8 flows of two windows.
    assert [w["198.51.100.7"]["syn_dst_share_history"] for w in closed] == [1.0, 1.0, 1.0]
    assert [w["192.0.2.20"]["syn_dst_share_history"] for w in closed] == [0.25, 0.125, 0.125]
    # Two windows back is beyond a history of two: the old attempt no longer counts.
    assert closed[2]["192.0.2.30"]["syn_dst_ips_history"] == 0
    assert closed[2]["192.0.2.30"]["syn_dst_share_history"] == 0.0
    with pytest.raises(ValueError, match="history_windows"):
        FeatureWindows(60, history_windows=0)


def test_windows_split_by_time_and_close_when_they_end() -> None:
    windows = FeatureWindows(60)
    first = [{"src": "198.51.100.1", "dst": f"84.54.49.{i}", "at": T0 + i} for i in range(10)]
    second = [{"src": "198.51.100.1", "dst": "84.54.49.99", "at": T0 + 65}]
    windows.add(hand_batch(first + second))
    assert windows.close(T0 + 59) == [] and windows.pending == 2
    [closed] = windows.close(T0 + 60)
    assert closed.start == T0 and closed.flows.tolist() == [10]
    assert by_source(closed)["198.51.100.1"]["unique_dst_ips"] == 10
    assert addr_to_str(closed.exporters[0]) == "10.0.0.1"
    # A flow of the closed window arriving late is refused and counted.
    windows.add(hand_batch([{"src": "198.51.100.2", "at": T0 + 30}]))
    assert windows.late == 1
    [later] = windows.close(T0 + 120)
    assert later.start == T0 + 60 and [addr_to_str(row) for row in later.sources] == ["198.51.100.1"]


def test_batches_give_the_vectors_of_the_whole_window() -> None:
    """Many partials (more than are kept before merging) add up to the one-batch result."""
    gen = TrafficGenerator(scenario="attacks", seed=5)
    batches = []
    for second in range(40):
        batch = gen.batch(300, (T0 + second) * 1000, 1000).to_flow_batch()
        batch["received_at"] = np.full(batch.n, T0 + second, dtype=np.uint32)
        batches.append(batch)
    windows = FeatureWindows(60)
    for batch in batches:
        windows.add(batch)
    [incremental] = windows.close(T0 + 60)
    whole = features_of_batch(FlowBatch.concat(batches), window_s=60, start=T0)
    assert len(incremental) == len(whole) > 1000
    assert np.array_equal(incremental.sources, whole.sources)
    np.testing.assert_allclose(incremental.vectors, whole.vectors, rtol=1e-12)
    assert incremental.flows.sum() == sum(batch.n for batch in batches)


def test_bad_windows_are_refused() -> None:
    with pytest.raises(ValueError, match="window_s"):
        FeatureWindows(0)
    with pytest.raises(ValueError, match="window_s"):
        features_of_batch(hand_batch([{"src": "198.51.100.1"}]), window_s=0)
