"""`flowenricher run` with ``kafka.role: collect``: UDP export in, decoded flows to Kafka, two
storers (``format: flowenricher``) storing every flow exactly once.

Real components: an Apache Kafka broker (tests/support/kafka_lab.py, KRaft, Maven Central
jars), `flowenricher run` as separate processes (one collector, two storers), IPFIX
datagrams from the project's exporter encoder (generate/encode.py, what `flowenricher
generate` sends) over loopback.  The ClickHouse server the storers share is the HTTP
stand-in on chDB (tests/support/clickhouse_http.py: no ClickHouse server can be installed
here).  Every flow carries a unique byte count (its number; the exporter's sampling rate
is 1), so a lost flow and a doubled row are both visible: count() and uniqExact(bytes)
must both equal what was sent.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from support import FlowenricherProcess, free_port
from support.clickhouse_http import ClickHouseHTTPStandIn
from support.kafka_lab import KafkaLab, free_port_tcp, topic_name
from support.kafka_lab import kafka_lab as kafka_lab
from test_kafka_store import _started, _wait_count

from appliance.flowenricher.generate.encode import ExporterSettings, make_encoder
from appliance.flowenricher.generate.traffic import TrafficGenerator


class Sender:
    """IPFIX datagrams of numbered flows (bytes = 1000 + number) to one UDP port, paced."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.generator = TrafficGenerator(None, "normal", 3)
        self.encoder = make_encoder("ipfix", ExporterSettings(sampling_rate=1))
        self.sent = 0
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def send(self, n: int, fps: float = 20_000) -> None:
        started = time.monotonic()
        while n > 0:
            k = min(n, 500)
            now_ms = int(time.time() * 1000)
            flows = self.generator.batch(k, now_ms - 1000, 1000)
            flows.bytes = (1000 + self.sent + np.arange(k)).astype(flows.bytes.dtype)
            for datagram in self.encoder.encode(flows, now_ms):
                self.socket.sendto(datagram, ("127.0.0.1", self.port))
            self.sent += k
            n -= k
            ahead = self.sent / fps - (time.monotonic() - started)
            if ahead > 0:
                time.sleep(ahead)

    def close(self) -> None:
        self.socket.close()


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return str(answer.read().decode())


def _metric(text: str, name: str) -> float:
    found = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def _collector(workdir: Path, lab: KafkaLab, topic: str, udp: int, metrics: int, extra: str = "") -> Path:
    path = workdir / "collector.yaml"
    path.write_text(f"""\
collectors: {{listeners: [{{address: 127.0.0.1, port: {udp}}}], workers: 1, receive_buffer_bytes: 8388608}}
kafka: {{enabled: true, role: collect, brokers: {json.dumps(lab.brokers)}, topic: {topic}{extra}}}
storage: {{path: {workdir / 'data'}}}
metrics: {{listen: "127.0.0.1:{metrics}"}}
api: {{enabled: false}}
""")
    return path


def _storer(workdir: Path, lab: KafkaLab, topic: str, ch_port: int) -> Path:
    workdir.mkdir(exist_ok=True)
    path = workdir / "config.yaml"
    path.write_text(f"""\
kafka: {{enabled: true, brokers: {json.dumps(lab.brokers)}, topic: {topic}, group_id: storers, format: flowenricher,
         block_records: 20}}
enrich: none
storage: {{path: {workdir / 'data'}}}
insert: {{batch_size: 5000, flush_interval_ms: 200}}
metrics: {{listen: "127.0.0.1:{free_port_tcp()}"}}
api: {{enabled: false}}
clickhouse: {{host: 127.0.0.1, port: {ch_port}}}
""")
    return path


def _embedded_storer(workdir: Path, lab: KafkaLab, topic: str, metrics_port: int, extra: str = "") -> Path:
    """The config of a storer of `topic` (group s, format flowenricher, `extra` kafka keys)
    into the embedded store in `workdir`."""
    workdir.mkdir()
    path = workdir / "config.yaml"
    path.write_text(f"""\
kafka: {{enabled: true, brokers: {json.dumps(lab.brokers)}, topic: {topic}, group_id: s, format: flowenricher{extra}}}
enrich: none
storage: {{path: {workdir / 'data'}}}
insert: {{batch_size: 5000, flush_interval_ms: 200}}
metrics: {{listen: "127.0.0.1:{metrics_port}"}}
api: {{enabled: false}}
""")
    return path


def _settled(config: Path, storer: FlowenricherProcess, expected: int, timeout: float = 180) -> tuple[int, int]:
    """Once the storer has `expected` rows, and 3 s more for anything doubled, the storer
    stopped: count() and uniqExact(bytes) of what it stored."""
    _wait_count(config, config.parent, expected, timeout, storer)
    time.sleep(3)
    storer.stop()
    return _count_bytes(config, config.parent)


def _count_bytes(config: Path, workdir: Path) -> tuple[int, int]:
    """count() and uniqExact(bytes) of the stored flows (the flow numbers)."""
    import subprocess

    from support import flowenricher_argv

    query = "SELECT count(), uniqExact(bytes) FROM flowenricher.flows"
    done = subprocess.run([*flowenricher_argv(), "sql", query, "--config", str(config), "--format", "tsv"],
                          capture_output=True, text=True, timeout=120, cwd=workdir)
    assert done.returncode == 0, done.stderr
    total, unique = done.stdout.strip().splitlines()[-1].split("\t")
    return int(total), int(unique)


def _collecting(config: Path, workdir: Path) -> FlowenricherProcess:
    process = FlowenricherProcess(workdir, "collector", "run", "--config", str(config))
    process.wait_for(lambda: "listening:" in process.output(), 120, "the collector to listen")
    return process


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[ClickHouseHTTPStandIn]:
    with ClickHouseHTTPStandIn(str(tmp_path / "server")) as ch:
        yield ch


def test_collector_to_two_storers_one_killed_each_flow_once(kafka_lab: KafkaLab, tmp_path: Path,
                                                            standin: ClickHouseHTTPStandIn) -> None:
    topic = topic_name("collected")
    kafka_lab.create_topic(topic, 6)
    udp, metrics_port = free_port(), free_port_tcp()
    collector = _collecting(_collector(tmp_path, kafka_lab, topic, udp, metrics_port), tmp_path)
    configs = [_storer(tmp_path / name, kafka_lab, topic, standin.port) for name in ("a", "b")]
    storers = [_started(c, c.parent, "storer") for c in configs]
    sender = Sender(udp)
    try:
        sender.send(20_000)
        _wait_count(configs[0], configs[0].parent, 4000, 120, storers[0])
        storers[0].proc.send_signal(signal.SIGKILL)  # mid-stream: its partitions move to the other
        storers[0].proc.wait(timeout=30)
        sender.send(20_000)
        stored = _wait_count(configs[1], configs[1].parent, sender.sent, 240, storers[1])
        time.sleep(3)  # anything doubled would arrive now
        stored = _count_bytes(configs[1], configs[1].parent)
        collected = _metrics(metrics_port)
    finally:
        sender.close()
        for storer in storers:
            storer.stop()
        assert collector.stop() == 0, collector.output()[-3000:]
    produced = _metric(collected, "flowenricher_kafka_produced_flows_total")
    assert stored == (sender.sent, sender.sent), (
        f"stored (rows, distinct) {stored} of {sender.sent} sent, {produced:.0f} produced:\n"
        f"{storers[1].output()[-2000:]}\n{collector.output()[-2000:]}")


def test_broker_away_30s_collector_spools_and_replays(kafka_lab: KafkaLab, tmp_path: Path) -> None:
    """The only broker stopped for 30 s while the collector receives: the producer's memory
    (64 KiB here) fills, the rest goes to the spool, and once the broker is back every
    flow reaches the (embedded) storer exactly once."""
    topic = topic_name("spooled")
    kafka_lab.create_topic(topic, 4)
    udp, metrics_port = free_port(), free_port_tcp()
    collector = _collecting(_collector(tmp_path, kafka_lab, topic, udp, metrics_port, ", buffer_max_bytes: 65536"),
                            tmp_path)
    storer_dir = tmp_path / "storer"
    storer_config = _embedded_storer(storer_dir, kafka_lab, topic, free_port_tcp())
    sender = Sender(udp)
    storer: FlowenricherProcess | None = None
    try:
        sender.send(5000)
        node = kafka_lab.nodes[0].node_id
        kafka_lab.kill(node, signal.SIGKILL)
        away_until = time.monotonic() + 30
        while time.monotonic() < away_until:
            sender.send(1000, fps=2000)
        during = _metrics(metrics_port)
        kafka_lab.start_node(node)
        sender.send(5000)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            after = _metrics(metrics_port)
            if _metric(after, "flowenricher_kafka_produced_flows_total") >= sender.sent:
                break
            time.sleep(1)
        storer = _started(storer_config, storer_dir, "storer")
        stored = _settled(storer_config, storer, sender.sent)
    finally:
        sender.close()
        if storer is not None:
            storer.stop()
        code = collector.stop()
    assert code == 0, collector.output()[-3000:]
    assert _metric(during, "flowenricher_kafka_spooled_flows_total") > 0, during
    assert _metric(after, "flowenricher_kafka_replayed_flows_total") > 0, after
    assert 'flowenricher_kafka_rows_dropped_total{reason=' not in after  # nothing dropped from the spool
    assert stored == (sender.sent, sender.sent), f"stored (rows, distinct) {stored} of {sender.sent}:\n" \
                                                 f"{collector.output()[-3000:]}"


def test_three_brokers_one_killed_mid_stream_nothing_lost(tmp_path: Path) -> None:
    """Three brokers, replication factor 3 and min.insync.replicas 2 (tests/support/kafka_lab.py):
    one broker killed (kill -9) while the collector produces and a storer consumes; every
    flow stored exactly once."""
    lab = KafkaLab(3)
    try:
        lab.start()
        topic = topic_name("replicated")
        lab.create_topic(topic, 6, replication=3)
        udp, metrics_port = free_port(), free_port_tcp()
        collector = _collecting(_collector(tmp_path, lab, topic, udp, metrics_port), tmp_path)
        storer_dir = tmp_path / "storer"
        storer_config = _embedded_storer(storer_dir, lab, topic, free_port_tcp())
        storer = _started(storer_config, storer_dir, "storer")
        sender = Sender(udp)
        try:
            sender.send(10_000)
            lab.kill(2, signal.SIGKILL)
            sender.send(20_000)
            stored = _settled(storer_config, storer, sender.sent, 240)
        finally:
            sender.close()
            storer.stop()
            code = collector.stop()
        assert code == 0, collector.output()[-3000:]
        assert stored == (sender.sent, sender.sent), f"stored (rows, distinct) {stored} of {sender.sent}:\n" \
                                                     f"{collector.output()[-3000:]}"
    finally:
        lab.close()
