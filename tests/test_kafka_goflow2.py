"""flowenricher reads goflow2's protobuf flows (kafka/goflow2.py).

Real components: goflow2 built from its Go module (tests/support/goflow2.py) and an Apache
Kafka broker from Maven Central jars (tests/support/kafka_lab.py).  The same generated
datagrams go to goflow2 (which decodes them and produces FlowMessages to the broker) and
through flowenricher's own decoder; the FlowMessages read back from Kafka must give the
same flows, column for column, where both collectors carry the field.

The declaration of the FlowMessage in kafka/goflow2.py is held to the ``pb/flow.proto``
the goflow2 binary was built from, so a renumbered or retyped field upstream fails here
rather than silently reading the wrong values.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import goflow2 as goflow2_support
from support.kafka_lab import KafkaLab, topic_name
from support.kafka_lab import kafka_lab as kafka_lab

from appliance.flowenricher.batch import FlowBatch
from appliance.flowenricher.common.addresses import row_text
from appliance.flowenricher.decode.dispatch import FlowDecoder
from appliance.flowenricher.decode.netflow import MAX_SAMPLING_RATE
from appliance.flowenricher.generate.encode import ExporterSettings, make_encoder
from appliance.flowenricher.generate.traffic import TrafficGenerator
from appliance.flowenricher.kafka import goflow2 as g


def _proto_fields(proto: Path, tmp: Path) -> dict[str, tuple[int, int]]:
    """name -> (number, type) of FlowMessage in `proto`, compiled by protoc (grpc_tools)."""
    from google.protobuf import descriptor_pb2

    out = tmp / "flow.desc"
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{proto.parent}", f"--descriptor_set_out={out}",
                    proto.name], check=True, capture_output=True)
    files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    (message,) = [m for f in files.file for m in f.message_type if m.name == "FlowMessage"]
    return {f.name: (f.number, f.type) for f in message.field}


def test_declared_fields_match_goflow2s_proto(tmp_path: Path) -> None:
    upstream = _proto_fields(goflow2_support.flow_proto(), tmp_path)
    enum = 14  # TYPE_ENUM: `type` is an enum upstream, read as its varint here
    for name, number, kind in g.FIELDS:
        assert name in upstream, f"goflow2's FlowMessage has no field {name}"
        up_number, up_kind = upstream[name]
        assert up_number == number, f"{name}: number {number} here, {up_number} in goflow2"
        assert up_kind == kind or (up_kind == enum and name == "type"), f"{name}: type {kind} here, {up_kind} upstream"


# -- hostile records -------------------------------------------------------------------

_u32 = st.integers(0, 2**32 - 1)
_u64 = st.integers(0, 2**64 - 1)
_addr = st.sampled_from([0, 4, 16, 1, 5, 15, 17]).flatmap(lambda n: st.binary(min_size=n, max_size=n))


@st.composite
def flow_messages(draw: st.DrawFn) -> bytes:
    """A FlowMessage of random (often out-of-range) values, framed as goflow2 frames it."""
    message = g.FlowMessage()
    for name, _number, kind in g.FIELDS:
        if not draw(st.booleans()):
            continue
        if kind == g._BYTES:
            setattr(message, name, draw(_addr))
        elif kind == g._U32:
            setattr(message, name, draw(_u32))
        else:
            setattr(message, name, draw(_u64))
    return g.frame(message.SerializeToString())


@st.composite
def damaged(draw: st.DrawFn) -> bytes:
    """A framed message with its prefix or body broken, or bytes that were never one."""
    record = draw(flow_messages())
    how = draw(st.sampled_from(["truncate", "extend", "noprefix", "random", "badprefix"]))
    if how == "truncate" and len(record) > 1:
        return record[: draw(st.integers(0, len(record) - 1))]
    if how == "extend":
        return record + draw(st.binary(min_size=1, max_size=8))
    if how == "noprefix":
        body: bytes = g.FlowMessage.FromString(g.unframe(record)).SerializeToString()
        return body + b"\x00"
    if how == "badprefix":
        return b"\xff" * 11 + record
    return draw(st.binary(max_size=64))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(flow_messages(), damaged()), max_size=40))
def test_hostile_records_are_counted_never_raised(records: list[bytes]) -> None:
    decoder = g.GoFlow2Decoder()
    batch = decoder.decode(records)
    dropped = sum(c for reasons in decoder.stats.dropped.values() for c in reasons.values())
    decoded = sum(int(c[g.S.RECORDS]) for c in decoder.stats.counts.values())
    assert batch.n == decoded
    assert batch.n + dropped == len(records)
    assert (batch["sampling_rate"] >= 1).all() and (batch["sampling_rate"] <= MAX_SAMPLING_RATE).all()
    assert (batch["timestamp_start"] <= 0xFFFFFFFF).all()


def test_values_map_to_columns() -> None:
    now = int(time.time())
    message = g.FlowMessage(type=4, sampling_rate=100, src_addr=bytes([192, 0, 2, 1]),
                            dst_addr=bytes.fromhex("20010db8000000000000000000000001"), bytes=1500, packets=3,
                            sampler_address=bytes([127, 0, 0, 7]), proto=6, src_port=70000, dst_port=443,
                            tcp_flags=0x12, in_if=3, out_if=4, etype=0x86DD,
                            time_received_ns=now * 10**9, time_flow_start_ns=(now - 5) * 10**9,
                            time_flow_end_ns=(now - 1) * 10**9)
    decoder = g.GoFlow2Decoder()
    batch = decoder.decode([g.frame(message.SerializeToString())])
    row = next(batch.rows())
    assert row["flow_protocol"] == "ipfix"
    assert row["bytes"] == 150_000 and row["packets"] == 300 and row["sampling_rate"] == 100
    assert row["src_addr"] == "192.0.2.1" and row["dst_addr"] == "2001:db8::1"
    assert row["exporter_address"] == "127.0.0.7"
    assert row["src_port"] == 65535  # clamped, and counted
    assert decoder.stats.counts["127.0.0.7"][g.S.VALUE_OUT_OF_RANGE] == 1
    assert (row["timestamp_start"], row["timestamp_end"], row["received_at"]) == (now - 5, now - 1, now)
    assert row["input_interface"] == 3 and row["output_interface"] == 4 and row["tcpflags"] == 0x12


# -- goflow2 end to end ------------------------------------------------------------------

_KEY = ("src_addr", "dst_addr", "src_port", "dst_port", "proto", "packets", "bytes", "tcpflags",
        "input_interface", "output_interface", "sampling_rate")
# Flow times are compared apart, within a bound (both collectors turn uptime-relative
# times into seconds, rounding apart), and not for IPFIX: the generator gives IPFIX times
# relative to systemInitTimeMilliseconds announced in options data, which goflow2 does
# not read, so its times there are the reception time (a flow of minutes is off by minutes).
_TIME_SLACK_S = 5


def _keys(batch: FlowBatch) -> Counter[tuple[object, ...]]:
    return Counter(_rendered(batch))


def _rows_with(batch: FlowBatch, column: str) -> list[tuple[object, ...]]:
    """Each flow's key then `column`, sorted: equal keys pair up in the same order."""
    keys = _rendered(batch)
    return sorted((*key, value) for key, value in zip(keys, batch[column].tolist(), strict=True))


def _rendered(batch: FlowBatch) -> list[tuple[object, ...]]:
    rendered = {name: ([row_text(r) for r in batch[name]] if name.endswith("_addr") else batch[name].tolist())
                for name in _KEY}
    return list(zip(*(rendered[name] for name in _KEY), strict=True))


def _consume(bootstrap: str, topic: str, expected: int, timeout: float) -> list[bytes]:
    from confluent_kafka import Consumer

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"test-{topic}", "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})
    consumer.subscribe([topic])
    values: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while len(values) < expected and time.monotonic() < deadline:
            for message in consumer.consume(10_000, 0.5):
                value = message.value()
                if message.error() is None and value is not None:
                    values.append(value)
        # A little longer: more than expected would be duplicates, which must not exist.
        for message in consumer.consume(10_000, 1.0):
            value = message.value()
            if message.error() is None and value is not None:
                values.append(value)
    finally:
        consumer.close()
    return values


@pytest.mark.parametrize("protocol", ["ipfix", "v9", "v5", "sflow"])
def test_goflow2_flows_equal_flowenrichers_own(kafka_lab: KafkaLab, protocol: str) -> None:
    reason = goflow2_support.unavailable_reason()
    if reason:
        pytest.fail(reason)
    topic = topic_name("goflow2")
    kafka_lab.create_topic(topic, 2)
    collector = goflow2_support.GoFlow2(kafka_lab.bootstrap, topic)
    try:
        generator = TrafficGenerator(None, "attacks", 7)
        encoder = make_encoder(protocol, None)
        now_ms = int(time.time() * 1000)
        datagrams: list[bytes] = []
        for step in range(4):
            datagrams += encoder.encode(generator.batch(500, now_ms - 4000 + step * 1000, 1000), now_ms)
        port = collector.sflow_port if protocol == "sflow" else collector.netflow_port
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
            for datagram in datagrams:
                out.sendto(datagram, ("127.0.0.1", port))
                time.sleep(0.002)  # goflow2's socket buffer is the kernel default; the machine may be busy
        received = int(time.time())
        own = FlowDecoder().decode([(d, "127.0.0.1", received) for d in datagrams])
        values = _consume(kafka_lab.bootstrap, topic, own.n, 60.0)
        goflow2_log = collector.metrics_text() + collector.output()
    finally:
        collector.close()
    decoder = g.GoFlow2Decoder()
    theirs = decoder.decode(values)
    assert not decoder.stats.dropped, dict(decoder.stats.dropped)
    assert theirs.n == own.n > 1000, goflow2_log
    mine, other = _keys(own), _keys(theirs)
    only_mine, only_theirs = sorted(mine - other), sorted(other - mine)
    assert not only_mine and not only_theirs, (f"{len(only_mine)} flows differ; flowenricher's first: {only_mine[:3]}, "
                                               f"goflow2's first: {only_theirs[:3]}; columns {_KEY}")
    for column in ("timestamp_start", "timestamp_end") if protocol != "ipfix" else ():
        paired = zip(_rows_with(own, column), _rows_with(theirs, column), strict=True)
        gaps = [(abs(a[-1] - b[-1]), a, b) for a, b in paired]  # type: ignore[operator]
        gap = max(gaps, key=lambda item: item[0])
        assert gap[0] <= _TIME_SLACK_S, f"{column} differs by up to {gap[0]} s: {gap[1]} here, {gap[2]} in goflow2"
    assert set(np.unique(theirs["flow_protocol"].strings())) == set(own["flow_protocol"].strings())
    # goflow2's sampler address is the datagram's source, except for sFlow: the agent
    # address inside the datagram (flowenricher's own decoder keeps the source).
    agents = {ExporterSettings().agent_address if protocol == "sflow" else "127.0.0.1"}
    assert {row_text(r) for r in theirs["exporter_address"]} == agents
