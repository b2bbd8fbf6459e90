"""The storers' detection exchange (``kafka.detection_topic``, kafka/detection.py): every
flow of a rule's key reaches one detection engine, whichever storer read it.

Real components: an Apache Kafka broker (tests/support/kafka_lab.py, KRaft), the
detection engine and the exchange's own producer and consumer group.  Each "storer" here
is a DetectionEngine with its exchange, handed the share of the flows that storer would
have read from the flows topic: split by destination as a flowenricher collector splits
them (kafka/blocks.split_by_partition), or round robin as goflow2 spreads its records,
the goflow2 records going through the storers' own Kafka input.  `flowenricher run`
itself is used for a missing topic and for kill -9 of a storer.
"""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from support import FlowenricherProcess, free_port
from support.detect import Collect
from support.kafka_lab import KafkaLab, topic_name
from support.kafka_lab import kafka_lab as kafka_lab

from appliance.flowenricher.batch import FlowBatch, addr_to_str
from appliance.flowenricher.detect import DetectionEngine, parse_rule_set
from appliance.flowenricher.errors import KafkaTopicError
from appliance.flowenricher.generate.flows import Flows, text_rows
from appliance.flowenricher.kafka import blocks
from appliance.flowenricher.kafka import goflow2 as g
from appliance.flowenricher.kafka.detection import DetectionExchange, DetectionExchangeSettings
from appliance.flowenricher.kafka.input import KafkaInput, KafkaInputSettings

SCAN = {"name": "scan", "key": "src", "proto": "tcp", "unique_dst_ips": 50, "time_window": "60s",
        "action": "alert"}
SWARM = {"name": "swarm", "key": "dst", "proto": "tcp", "unique_src_ips": 50, "time_window": "60s",
         "action": "alert"}
SCANNER, VICTIM = "198.51.100.66", "203.0.113.9"
PARTITIONS = 6


def _flows(src: Sequence[str], dst: Sequence[str], at: int) -> FlowBatch:
    """One SYN to port 22 per pair (src[i], dst[i]), received at `at`."""
    f = Flows.empty(len(src))
    f.src_addr, f.dst_addr = text_rows(list(src)), text_rows(list(dst))
    f.dst_port[:] = 22
    f.src_port[:] = 40000
    f.proto[:] = 6
    f.tcpflags[:] = 0x02
    f.packets[:] = 1
    f.bytes[:] = 44
    f.flow_direction[:] = 1  # inbound: what the rules look at by default
    f.end_ms[:] = f.start_ms[:] = at * 1000
    batch = f.to_flow_batch()
    batch["received_at"] = np.full(batch.n, at, dtype=np.uint32)
    return batch


def _scan(at: int) -> FlowBatch:
    """A port scan: one source, 60 destinations (the rule wants 50)."""
    return _flows([SCANNER] * 60, [f"84.54.49.{i}" for i in range(1, 61)], at)


def _by_collector(batch: FlowBatch) -> tuple[FlowBatch, FlowBatch]:
    """The shares of two storers of a 6-partition topic a collector wrote (by destination):
    partitions 0-2 to one, 3-5 to the other."""
    parts = dict(blocks.split_by_partition(batch, PARTITIONS))
    first = FlowBatch.concat([parts[p] for p in sorted(parts) if p < 3])
    second = FlowBatch.concat([parts[p] for p in sorted(parts) if p >= 3])
    return first, second


class Sources:
    """Where anomaly scoring would be fed (kafka/detection.SourceConsumer): each source
    address and how many of its flows arrived here."""

    def __init__(self) -> None:
        self.flows: dict[str, int] = {}

    def process(self, batch: FlowBatch) -> None:
        for address in (addr_to_str(row) for row in batch["src_addr"]):
            self.flows[address] = self.flows.get(address, 0) + 1


class Storer:
    """A storer's detection side: its engine, its sink and (with a topic) its exchange."""

    def __init__(self, lab: KafkaLab | None, topic: str | None, group: str,
                 rules: Sequence[dict[str, object]] = (SCAN, SWARM), sources: Sources | None = None) -> None:
        self.sink = Collect()
        self.registry = CollectorRegistry()
        self.engine = DetectionEngine(parse_rule_set(list(rules)), [self.sink], self.registry)
        self.exchange: DetectionExchange | None = None
        if lab is not None and topic is not None:
            self.exchange = DetectionExchange(DetectionExchangeSettings(tuple(lab.brokers), topic, group),
                                              self.engine, CollectorRegistry(), sources=sources).start()

    def process(self, batch: FlowBatch) -> None:
        """What the service's consumers thread does with an enriched batch."""
        (self.exchange or self.engine).process(batch)

    def consumed(self) -> float:
        assert self.exchange is not None
        return sum(s.value for m in self.exchange.consumed.collect() for s in m.samples
                   if s.name.endswith("_total"))

    def counted(self, rule: str) -> float:
        """Flows `rule` looked at (flowenricher_detection_flows)."""
        return self.registry.get_sample_value("flowenricher_detection_flows_total", {"rule": rule}) or 0.0

    def close(self) -> None:
        if self.exchange is not None:
            self.exchange.close()


@pytest.fixture
def storers(kafka_lab: KafkaLab) -> Iterator[tuple[Storer, Storer]]:
    topic = topic_name("detection")
    kafka_lab.create_topic(topic, PARTITIONS)
    group = topic_name("group")
    pair = (Storer(kafka_lab, topic, group), Storer(kafka_lab, topic, group))
    try:
        yield pair
    finally:
        for storer in pair:
            storer.close()


def _wait_consumed(pair: Sequence[Storer], rows: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(s.consumed() for s in pair) >= rows:
            return
        time.sleep(0.1)
    raise AssertionError(f"the exchange handed over {sum(s.consumed() for s in pair)} rows, not {rows}")


def _ticks(pair: Sequence[Storer]) -> None:
    """What the service's ticker does once a second, for two seconds."""
    for _ in range(2):
        time.sleep(1.0)
        for storer in pair:
            storer.engine.tick()


def _detections(pair: Sequence[Storer]) -> list[tuple[str, str, str]]:
    return sorted((d.rule, d.key, d.address) for s in pair for d in s.sink.detections)


def test_without_the_topic_a_scan_split_over_two_storers_is_missed() -> None:
    first, second = _by_collector(_scan(int(time.time())))
    # The scan's destinations are split: each storer sees fewer than the rule's 50.
    assert 0 < first.n < 50 and 0 < second.n < 50
    pair = (Storer(None, None, ""), Storer(None, None, ""))
    pair[0].process(first)
    pair[1].process(second)
    _ticks(pair)
    assert _detections(pair) == []


def test_with_the_topic_a_scan_split_over_two_storers_is_detected_once(storers: tuple[Storer, Storer]) -> None:
    first, second = _by_collector(_scan(int(time.time())))
    storers[0].process(first)
    storers[1].process(second)
    # Each flow once per key the rules use (src and dst).
    _wait_consumed(storers, 2 * 60)
    _ticks(storers)
    assert _detections(storers) == [("scan", "src", SCANNER)]
    # Every flow counted once by each rule, on the storer that holds its key.
    assert [sum(s.counted(rule) for s in storers) for rule in ("scan", "swarm")] == [60, 60]
    assert sorted(s.counted("scan") for s in storers) == [0, 60]


def _goflow2_records(batch: FlowBatch) -> list[bytes]:
    """Each flow of `batch` as goflow2 publishes it (a framed FlowMessage)."""
    now = time.time_ns()
    records = []
    for src, dst in zip(batch["src_addr"], batch["dst_addr"], strict=True):
        message = g.FlowMessage(type=4, sampling_rate=1, src_addr=bytes(src[12:]), dst_addr=bytes(dst[12:]),
                                bytes=44, packets=1, sampler_address=bytes([127, 0, 0, 9]), proto=6, dst_port=22,
                                tcp_flags=0x02, etype=0x0800, time_received_ns=now, time_flow_start_ns=now,
                                time_flow_end_ns=now)
        records.append(g.frame(message.SerializeToString()))
    return records


def _goflow2_inputs(lab: KafkaLab, topic: str) -> tuple[KafkaInput, KafkaInput]:
    """Two storers' Kafka inputs (format goflow2) in one group, once each holds a partition."""
    settings = KafkaInputSettings(brokers=tuple(lab.brokers), topic=topic, group_id=topic_name("flows-group"),
                                  block_records=50_000, dedup_window_records=0)
    inputs = (KafkaInput(settings), KafkaInput(settings))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for kafka_input in inputs:
            assert kafka_input.poll() == []
        if all(kafka_input._consumer.assignment() for kafka_input in inputs):
            return inputs
    raise AssertionError("the two inputs did not share the partitions")


def test_goflow2_round_robin_is_detected_once_per_key(kafka_lab: KafkaLab, storers: tuple[Storer, Storer]) -> None:
    """goflow2 spreads records over the partitions whatever their addresses: without the
    exchange even a rule keyed by destination sees a share.  A swarm (60 sources at one
    destination) and a scan, round robin over two partitions read by two storers' Kafka
    inputs: each found once."""
    from confluent_kafka import Producer

    flows_topic = topic_name("goflow2")
    kafka_lab.create_topic(flows_topic, 2)
    inputs = _goflow2_inputs(kafka_lab, flows_topic)
    now = int(time.time())
    swarm = _flows([f"192.0.2.{i}" for i in range(1, 61)], [VICTIM] * 60, now)
    producer = Producer({"bootstrap.servers": kafka_lab.bootstrap})
    for i, record in enumerate(_goflow2_records(FlowBatch.concat([_scan(now), swarm]))):
        producer.produce(flows_topic, record, partition=i % 2)
    assert producer.flush(30) == 0
    read = [0, 0]
    deadline = time.monotonic() + 60
    while sum(read) < 120 and time.monotonic() < deadline:
        for i, (kafka_input, storer) in enumerate(zip(inputs, storers, strict=True)):
            for block in kafka_input.poll():
                read[i] += block.batch.n
                # What enrichment sets with my_prefixes covering the destinations.
                block.batch["flow_direction"] = np.ones(block.batch.n, dtype=np.uint8)
                storer.process(block.batch)
    try:
        assert read == [60, 60]
        _wait_consumed(storers, 2 * 120)
        _ticks(storers)
        assert _detections(storers) == [("scan", "src", SCANNER), ("swarm", "dst", VICTIM)]
    finally:
        for kafka_input in inputs:
            kafka_input.close()


def test_a_missing_topic_is_refused_with_its_name(kafka_lab: KafkaLab) -> None:
    settings = DetectionExchangeSettings(tuple(kafka_lab.brokers), "no-such-topic", "g", metadata_timeout_s=20)
    with pytest.raises(KafkaTopicError, match=r"kafka.detection_topic: topic 'no-such-topic' is not usable"):
        DetectionExchange(settings, DetectionEngine([], []))


# ----------------------------------------------------------------- `flowenricher run`


def _storer_config(workdir: Path, lab: KafkaLab, flows: str, detection: str | None, group: str) -> Path:
    workdir.mkdir()
    (workdir / "rules.yml").write_text(json.dumps([SCAN]))
    exchange = f", detection_topic: {detection}" if detection else ""
    path = workdir / "config.yaml"
    path.write_text(f"""\
kafka: {{enabled: true, brokers: {json.dumps(lab.brokers)}, topic: {flows}, group_id: {group},
        format: flowenricher{exchange}}}
enrich: none
my_prefixes: ["84.54.49.0/24"]
detection: {{alerts_log: {workdir / 'detections.log'}}}
storage: {{path: {workdir / 'data'}}}
insert: {{batch_size: 5000, flush_interval_ms: 200}}
metrics: {{listen: "127.0.0.1:{free_port(socket.SOCK_STREAM)}"}}
api: {{enabled: false}}
""")
    return path


def _run(workdir: Path) -> FlowenricherProcess:
    return FlowenricherProcess(workdir, "storer", "run", "--config", str(workdir / "config.yaml"), "--rules",
                               str(workdir / "rules.yml"))


def _wait_consuming(storer: FlowenricherProcess) -> None:
    storer.wait_for(lambda: "consuming topic" in storer.output(), 120, "the storer to consume")


def _produce_as_collector(lab: KafkaLab, topic: str, batch: FlowBatch) -> None:
    """`batch` as a flowenricher collector produces it: split by destination, one record
    per partition's rows."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": lab.bootstrap, "enable.idempotence": True, "acks": "all"})
    for partition, rows in blocks.split_by_partition(batch, PARTITIONS):
        for record in blocks.encode_records(rows):
            producer.produce(topic, record, partition=partition)
    assert producer.flush(30) == 0


def _alerts(workdir: Path) -> list[tuple[str, str]]:
    path = workdir / "detections.log"
    if not path.exists():
        return []
    return [(d["rule"], d["address"]) for d in map(json.loads, path.read_text().splitlines())]


def test_a_storer_killed_leaves_detection_to_the_other(kafka_lab: KafkaLab, tmp_path: Path) -> None:
    """Two `flowenricher run` storers with the exchange; one is killed with SIGKILL; a scan
    whose flows land on both storers' former partitions is then detected once, by the
    survivor (which took over the dead one's partitions of both topics)."""
    flows, detection, group = topic_name("flows"), topic_name("detection"), topic_name("group")
    kafka_lab.create_topic(flows, PARTITIONS)
    kafka_lab.create_topic(detection, PARTITIONS)
    dirs = [tmp_path / "a", tmp_path / "b"]
    for workdir in dirs:
        _storer_config(workdir, kafka_lab, flows, detection, group)
    storers = [_run(workdir) for workdir in dirs]
    try:
        for storer in storers:
            _wait_consuming(storer)
        # Both in both groups before one dies (each holds partitions of both topics).
        _produce_as_collector(kafka_lab, flows, _flows(["192.0.2.1"] * 12, [f"84.54.49.{i}" for i in range(200, 212)],
                                                       int(time.time())))
        time.sleep(10)
        storers[0].proc.send_signal(signal.SIGKILL)
        storers[0].proc.wait(timeout=30)
        _produce_as_collector(kafka_lab, flows, _scan(int(time.time())))
        # The group notices the dead member after its session timeout (45 s by default).
        deadline = time.monotonic() + 150
        while not _alerts(dirs[1]) and time.monotonic() < deadline:
            assert storers[1].proc.poll() is None, storers[1].output()[-3000:]
            time.sleep(1.0)
        time.sleep(3.0)
        assert _alerts(dirs[1]) == [("scan", SCANNER)], storers[1].output()[-3000:]
        assert _alerts(dirs[0]) == []
    finally:
        for storer in storers:
            if storer.proc.poll() is None:
                storer.stop()


def test_a_missing_detection_topic_stops_the_storer_with_its_name(kafka_lab: KafkaLab, tmp_path: Path) -> None:
    flows = topic_name("flows")
    kafka_lab.create_topic(flows, PARTITIONS)
    _storer_config(tmp_path / "a", kafka_lab, flows, "no-such-detection-topic", topic_name("group"))
    storer = _run(tmp_path / "a")
    try:
        code = storer.proc.wait(timeout=120)
    finally:
        if storer.proc.poll() is None:
            storer.stop()
    assert code != 0
    assert "kafka.detection_topic: topic 'no-such-detection-topic' is not usable" in storer.output()


def test_brokers_away_at_start_start_anyway_and_count_what_is_not_detected_on() -> None:
    """No broker answers: the storer is not refused (it stores meanwhile); the rows it
    cannot route are counted, not raised."""
    registry = CollectorRegistry()
    settings = DetectionExchangeSettings((f"127.0.0.1:{free_port(socket.SOCK_STREAM)}",), "detection", "g",
                                         metadata_timeout_s=1)
    exchange = DetectionExchange(settings, DetectionEngine(parse_rule_set([SCAN, SWARM]), []), registry)
    try:
        exchange.process(_scan(int(time.time())))
    finally:
        exchange.close()
    assert registry.get_sample_value("flowenricher_kafka_detection_rows_dropped_total",
                                     {"reason": "no_metadata"}) == 2 * 60


def test_anomaly_scoring_gets_every_flow_of_a_source_on_one_storer(kafka_lab: KafkaLab) -> None:
    """Anomaly scoring reduces flows per source: through the exchange each source's flows
    all reach one storer's scoring, even when no rule is keyed by source (the exchange
    then produces the ``src`` records for the scoring alone)."""
    topic, group = topic_name("detection"), topic_name("group")
    kafka_lab.create_topic(topic, PARTITIONS)
    fed = (Sources(), Sources())
    pair = [Storer(kafka_lab, topic, group, rules=[SWARM], sources=s) for s in fed]
    try:
        at = int(time.time())
        second_source = _flows(["192.0.2.77"] * 40, [f"84.54.50.{i}" for i in range(1, 41)], at)
        for storer, share in zip(pair, _by_collector(FlowBatch.concat([_scan(at), second_source])), strict=True):
            assert 0 < share.n < 100  # each storer read a share of both sources
            storer.process(share)
        _wait_consumed(pair, 2 * 100)  # every flow once per key: dst for the rule, src for the scoring
    finally:
        for storer in pair:
            storer.close()
    for source, flows in ((SCANNER, 60), ("192.0.2.77", 40)):
        counts = sorted(s.flows.get(source, 0) for s in fed)
        assert counts == [0, flows], (source, counts)
