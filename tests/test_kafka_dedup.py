"""A flowenricher collector killed (kill -9) while it replays its spool, restarted: every
flow is stored once, though records reached the topic twice.  And a storer restarted
between a record and its copy knows the record: its window is read back from the topic.

Real components: an Apache Kafka broker (tests/support/kafka_lab.py), `flowenricher run`
as a collector and as an embedded storer (chDB), IPFIX over loopback from the project's
exporter encoder; every flow carries a unique byte count (tests/test_kafka_collect.py).

The crash is made from outside, at points seen on disk: the broker is killed so the
collector spools; its spool files are copied aside; the broker comes back, and the
collector is killed with SIGKILL as soon as the replay has removed a first file.  The
copies are then put back, which is what a crash between a block's acknowledgement and
the removal of its file leaves behind (the same files, byte for byte), for every block
the replay had sent.  The restarted collector sends them all again, with the records'
origins (kafka/blocks.py), and keeps numbering its batches after the last one it
reserved: the storer drops the copies (``kafka.dedup_window_records``) and nothing else.
With the window at 0 the same run stores the copies: the check can fail.
"""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from support import FlowenricherProcess, free_port, sample_batch
from support.kafka_lab import KafkaLab, free_port_tcp, topic_name
from support.kafka_lab import kafka_lab as kafka_lab
from test_kafka_collect import Sender, _collecting, _collector, _embedded_storer, _metric, _metrics, _settled
from test_kafka_store import _started, _wait_count

from appliance.flowenricher.columns import BY_NAME
from appliance.flowenricher.kafka.blocks import Origin, encode_record
from appliance.flowenricher.kafka.output import SPOOL_DIR


def _spooled(spool: Path) -> list[Path]:
    return sorted(spool.glob("*.native.zst"))


@pytest.mark.parametrize("window", [None, 0], ids=["default-window", "no-window"])
def test_collector_killed_while_replaying_each_flow_stored_once(kafka_lab: KafkaLab, tmp_path: Path,
                                                                collectors: list[FlowenricherProcess],
                                                                window: int | None) -> None:
    topic = topic_name("dedup")
    kafka_lab.create_topic(topic, 4)
    udp, collector_metrics = free_port(), free_port_tcp()
    config = _collector(tmp_path, kafka_lab, topic, udp, collector_metrics, ", buffer_max_bytes: 65536")
    spool = tmp_path / "data" / SPOOL_DIR
    copies = tmp_path / "spool-copies"
    collector = _collecting(config, tmp_path)
    sender = Sender(udp)
    node = kafka_lab.nodes[0].node_id
    try:
        sender.send(3000)
        kafka_lab.kill(node, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while len(_spooled(spool)) < 10 and time.monotonic() < deadline:
            sender.send(1000, fps=4000)
        time.sleep(1.0)  # the workers' last batches reach the spool
        copies.mkdir()
        for path in _spooled(spool):
            shutil.copy2(path, copies / path.name)
        spooled = len(list(copies.iterdir()))
        assert spooled >= 10, f"only {spooled} spool files:\n{collector.output()[-3000:]}"

        kafka_lab.start_node(node, wait=False)
        deadline = time.monotonic() + 120
        while len(_spooled(spool)) >= spooled and time.monotonic() < deadline:
            time.sleep(0.005)
        collector.proc.send_signal(signal.SIGKILL)  # mid-replay: the first file just removed
        collector.proc.wait(timeout=30)
        left = len(_spooled(spool))
        assert left < spooled, f"the replay never started:\n{collector.output()[-3000:]}"
        for path in copies.iterdir():  # as a crash before each file's removal leaves them
            shutil.copy2(path, spool / path.name)
        kafka_lab.start_node(node)

        collector = _collecting(config, tmp_path)
        deadline = time.monotonic() + 120
        while _spooled(spool) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not _spooled(spool), f"spool not replayed:\n{collector.output()[-3000:]}"
        sender.send(3000)  # new batches after the restart: numbered after the old ones, kept

        storer_metrics = free_port_tcp()
        extra = "" if window is None else f", dedup_window_records: {window}"
        storer_config = _embedded_storer(tmp_path / "storer", kafka_lab, topic, storer_metrics, extra)
        storer = _started(storer_config, storer_config.parent, "storer")
        collectors.append(storer)  # stopped by the fixture whatever happens
        _wait_count(storer_config, storer_config.parent, sender.sent, 180, storer)
        time.sleep(3)  # anything doubled would arrive now
        storer_seen = _metrics(storer_metrics)
        stored = _settled(storer_config, storer, sender.sent)
    finally:
        sender.close()
        code = collector.stop()
    assert code == 0, collector.output()[-3000:]
    copies_dropped = _metric(storer_seen, "flowenricher_kafka_duplicate_records_total")
    where = f"killed with {left} of {spooled} spool files left; {copies_dropped:.0f} records dropped as copies"
    print(where, "stored (rows, distinct):", stored, "sent:", sender.sent)
    if window == 0:  # the same run without the window: the copies are stored
        assert stored[0] > sender.sent and stored[1] == sender.sent, (where, stored, sender.sent)
        assert copies_dropped == 0
    else:
        assert stored == (sender.sent, sender.sent), (where, stored, sender.sent, storer_seen[-2000:])
        assert copies_dropped > 0, where
        assert _metric(storer_seen, "flowenricher_kafka_duplicate_flows_total") > 0


def _records(first: int, count: int, origin: bool = True) -> list[tuple[int, bytes]]:
    """Records of 100 flows each (bytes = the flow's number, from 100 * first), numbered as
    batches first.. of one collector, alternately on partitions 0 and 1."""
    out = []
    for number in range(first, first + count):
        batch = sample_batch(100, seed=number)
        batch["bytes"] = np.arange(number * 100, number * 100 + 100, dtype=BY_NAME["bytes"].np_dtype)
        made = Origin(b"c" * 16, number, 2, number % 2) if origin else None
        out.append((number % 2, encode_record(batch, made)))
    return out


def _produce(lab: KafkaLab, topic: str, records: list[tuple[int, bytes]]) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": lab.bootstrap, "enable.idempotence": True, "acks": "all"})
    for partition, value in records:
        producer.produce(topic, value, partition=partition)
    assert producer.flush(60) == 0


def test_restarted_storer_reads_its_window_back(kafka_lab: KafkaLab, tmp_path: Path,
                                                 collectors: list[FlowenricherProcess]) -> None:
    """20 records stored, the storer stopped, then the same 20 again (a collector's copies),
    5 new ones and 2 of version 1: the restarted storer drops exactly the 20 copies."""
    topic = topic_name("window")
    kafka_lab.create_topic(topic, 2)
    metrics_port = free_port_tcp()
    config = _embedded_storer(tmp_path / "storer", kafka_lab, topic, metrics_port)
    _produce(kafka_lab, topic, _records(0, 20))
    storer = _started(config, config.parent, "storer")
    collectors.append(storer)
    assert _settled(config, storer, 2000) == (2000, 2000)
    _produce(kafka_lab, topic, _records(0, 20) + _records(20, 5) + _records(25, 2, origin=False))
    again = _started(config, config.parent, "storer-again")
    collectors.append(again)
    _wait_count(config, config.parent, 2700, 120, again)
    time.sleep(3)  # anything doubled would arrive now
    seen = _metrics(metrics_port)
    stored = _settled(config, again, 2700)
    assert stored == (2700, 2700), again.output()[-3000:]
    assert _metric(seen, "flowenricher_kafka_duplicate_records_total") == 20
    assert _metric(seen, "flowenricher_kafka_duplicate_flows_total") == 2000
    assert "deduplication windows of partitions [0, 1] read back: 20 records" in again.output()
