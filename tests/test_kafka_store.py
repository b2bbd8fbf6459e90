"""`flowenricher run` with ``kafka.enabled``: flows consumed from a topic, stored exactly once.

Real components: an Apache Kafka broker (tests/support/kafka_lab.py, KRaft, from Maven
Central jars) and `flowenricher run` as its own process.  The ClickHouse server that two
storers share is the HTTP stand-in on chDB (tests/support/clickhouse_http.py: no
ClickHouse server can be installed here); the single-storer tests use the embedded chDB
store.  Every record carries a unique number (its observation domain), so a lost flow and
a duplicate row are both visible: count() and uniqExact() of that number must both equal
what was produced.

kill -9 is sent to the storer by its PID while it consumes: the commit protocol of
kafka/input.py must leave nothing lost (offsets were only committed after the store had
the rows) and nothing doubled (the ranges in flight are consumed again with the same cuts,
so the same deduplication tokens).
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import FlowenricherProcess, flowenricher_argv, free_port
from support.clickhouse_http import ClickHouseHTTPStandIn
from support.kafka_lab import KafkaLab, topic_name
from support.kafka_lab import kafka_lab as kafka_lab

from appliance.flowenricher.kafka import goflow2 as g


def _produce(bootstrap: str, topic: str, first: int, n: int) -> None:
    """`n` framed FlowMessages numbered first..first+n-1 (observation_domain_id), keyed so
    they spread over the partitions."""
    from confluent_kafka import Producer

    now = time.time_ns()
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                         "linger.ms": 20})
    template = g.FlowMessage(type=4, sampling_rate=1, src_addr=bytes([198, 51, 100, 7]), bytes=1000, packets=2,
                             sampler_address=bytes([127, 0, 0, 9]), proto=6, dst_port=443, etype=0x0800,
                             time_received_ns=now, time_flow_start_ns=now - 2 * 10**9, time_flow_end_ns=now)
    for i in range(first, first + n):
        message = g.FlowMessage()
        message.CopyFrom(template)
        message.observation_domain_id = i
        message.dst_addr = bytes([203, 0, 113, i % 250 + 1])
        message.src_port = 1024 + i % 60000
        while True:
            try:
                producer.produce(topic, g.frame(message.SerializeToString()), key=str(i % 97).encode())
                break
            except BufferError:
                producer.poll(0.05)
    assert producer.flush(60) == 0


def _produce_raw(bootstrap: str, topic: str, values: list[bytes]) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all"})
    for value in values:
        producer.produce(topic, value)
    assert producer.flush(60) == 0


def _metrics(config: Path) -> str:
    import re
    import urllib.request

    listen = re.search(r'listen: "([^"]+)"', config.read_text())
    assert listen is not None
    with urllib.request.urlopen(f"http://{listen.group(1)}/metrics", timeout=10) as answer:
        return str(answer.read().decode())


def _config(workdir: Path, bootstrap: str, topic: str, group: str, store: str, block_records: int = 2000) -> Path:
    path = workdir / "config.yaml"
    brokers = json.dumps(bootstrap.split(","))
    path.write_text(f"""\
kafka: {{enabled: true, brokers: {brokers}, topic: {topic}, group_id: {group}, block_records: {block_records}}}
enrich: none
storage: {{path: {workdir / 'data'}}}
insert: {{batch_size: 5000, flush_interval_ms: 200}}
metrics: {{listen: "127.0.0.1:{free_port_tcp()}"}}
api: {{enabled: false}}
{store}""")
    return path


def free_port_tcp() -> int:
    import socket
    return free_port(socket.SOCK_STREAM)


def _count(config: Path, workdir: Path, tries: int = 30) -> tuple[int, int]:
    """count() and uniqExact(observation_domain) of the flows table, through `sql` (which
    is refused while a starting service holds the embedded store before its control
    socket is up: asked again then)."""
    for _ in range(tries):
        query = "SELECT count(), uniqExact(observation_domain) FROM flowenricher.flows"
        done = subprocess.run([*flowenricher_argv(), "sql", query, "--config", str(config), "--format", "tsv"],
                              capture_output=True, text=True, timeout=120, cwd=workdir)
        if done.returncode == 0:
            total, unique = done.stdout.strip().splitlines()[-1].split("\t")
            return int(total), int(unique)
        assert any(word in done.stderr for word in ("in use by another process", "UNKNOWN_TABLE", "UNKNOWN_DATABASE")), \
            done.stderr
        time.sleep(1.0)
    raise AssertionError(f"sql kept failing: {done.stderr}")


def _started(config: Path, workdir: Path, name: str) -> FlowenricherProcess:
    """`flowenricher run` with `config`, once it consumes (its store open, its control
    socket up)."""
    process = FlowenricherProcess(workdir, name, "run", "--config", str(config))
    process.wait_for(lambda: "consuming topic" in process.output(), 120, "the storer to consume")
    return process


def _wait_count(config: Path, workdir: Path, expected: int, timeout: float,
                process: FlowenricherProcess | None = None) -> tuple[int, int]:
    deadline = time.monotonic() + timeout
    seen = (0, 0)
    while time.monotonic() < deadline:
        if process is not None and process.proc.poll() is not None:
            raise AssertionError(f"the storer exited {process.proc.returncode}:\n{process.output()[-4000:]}")
        seen = _count(config, workdir)
        if seen[0] >= expected:
            return seen
        time.sleep(1.0)
    return seen


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[ClickHouseHTTPStandIn]:
    with ClickHouseHTTPStandIn(str(tmp_path / "server")) as ch:
        yield ch


def test_embedded_storer_killed_mid_stream_stores_each_flow_once(kafka_lab: KafkaLab, tmp_path: Path) -> None:
    topic = topic_name()
    kafka_lab.create_topic(topic, 4)
    total = 60_000
    _produce(kafka_lab.bootstrap, topic, 0, total)
    config = _config(tmp_path, kafka_lab.bootstrap, topic, "storers", "")
    storer = _started(config, tmp_path, "storer")
    try:
        partial = _wait_count(config, tmp_path, 4000, 120, storer)
        assert 0 < partial[0] < total, f"the kill must land mid-stream, stored {partial}"
        storer.proc.send_signal(signal.SIGKILL)
        storer.proc.wait(timeout=30)
    finally:
        storer.stop()
    again = _started(config, tmp_path, "storer-again")
    try:
        _produce(kafka_lab.bootstrap, topic, total, 1000)  # and the stream goes on
        _produce_raw(kafka_lab.bootstrap, topic, [b"", b"\x05abc", b"not a flow message at all"])
        stored = _wait_count(config, tmp_path, total + 1000, 180, again)
        time.sleep(3)  # anything doubled would arrive now
        stored = _count(config, tmp_path)
        metrics = _metrics(config)
    finally:
        assert again.stop() == 0, again.output()[-3000:]
    assert stored == (total + 1000, total + 1000), f"stored (rows, distinct) {stored}: {again.output()[-2000:]}"
    assert 'flowenricher_decoder_dropped_total{exporter="goflow2",reason="goflow2_malformed"} 3.0' in metrics


def test_two_storers_share_partitions_and_survive_a_kill(kafka_lab: KafkaLab, tmp_path: Path,
                                                         standin: ClickHouseHTTPStandIn) -> None:
    topic = topic_name()
    kafka_lab.create_topic(topic, 6)
    server = f"clickhouse: {{host: 127.0.0.1, port: {standin.port}}}\n"
    dirs = [tmp_path / "a", tmp_path / "b"]
    for d in dirs:
        d.mkdir()
    configs = [_config(d, kafka_lab.bootstrap, topic, "shared", server) for d in dirs]
    storers = [_started(c, d, "storer") for d, c in zip(dirs, configs, strict=True)]
    try:
        _produce(kafka_lab.bootstrap, topic, 0, 40_000)
        _wait_count(configs[0], dirs[0], 5000, 120, storers[0])
        storers[0].proc.send_signal(signal.SIGKILL)  # its partitions move to the other storer
        storers[0].proc.wait(timeout=30)
        _produce(kafka_lab.bootstrap, topic, 40_000, 20_000)
        stored = _wait_count(configs[1], dirs[1], 60_000, 240, storers[1])
        time.sleep(3)
        stored = _count(configs[1], dirs[1])
    finally:
        for storer in storers:
            storer.stop()
    assert stored == (60_000, 60_000), f"stored (rows, distinct) {stored}:\n{storers[1].output()[-3000:]}"


def test_close_right_after_the_group_assigned_partitions_raises_nothing(kafka_lab: KafkaLab) -> None:
    """A storer stopped after the group gave it partitions but before it polled: close()
    runs the assignment callback, whose committed() then times out.  Raised from the
    callback, that came out of close() as a bare KafkaError, which `except Exception`
    does not catch (confluent-kafka 2.16); now the callback does nothing while closing."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    from appliance.flowenricher.kafka.input import KafkaInput, KafkaInputSettings

    topic = topic_name()
    kafka_lab.create_topic(topic, 2)
    reader = KafkaInput(KafkaInputSettings((kafka_lab.bootstrap,), topic, "closing", format="flowenricher",
                                           block_records=100, dedup_window_records=10_000))
    admin = AdminClient({"bootstrap.servers": kafka_lab.bootstrap})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the join completes in the client's background thread
        try:
            group = admin.describe_consumer_groups(["closing"])["closing"].result(timeout=10)
        except KafkaException:  # NOT_COORDINATOR while the group's coordinator loads
            group = None
        if group is not None and group.members and group.members[0].assignment.topic_partitions:
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the group never assigned the partitions")
    reader.close()
