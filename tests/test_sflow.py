"""sFlow v5 decoder against real captures, hand-built datagrams and fuzzed copies.

Expected values are what Wireshark's sFlow dissector shows for each capture
(`tshark -r FILE -d udp.port==6343,sflow -V`, tshark 4.0.17).
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.flowenricher.batch import FlowBatch, addr_to_str
from appliance.flowenricher.decode.sflow import (
    BAD_COUNT,
    BAD_LENGTH,
    BAD_VERSION,
    SKIPPED_SAMPLES,
    TRUNCATED,
    SFlowDecoder,
)
from appliance.flowenricher.decode.stats import COUNTER_SAMPLES, DATAGRAMS, RECORDS, DecodeStats
from appliance.flowenricher.pcap import read_udp

PCAPS = Path(__file__).parent / "data" / "pcaps"

# Flow samples per capture, as tshark counts them (none of these captures has counter samples).
EXPECTED_FLOW_SAMPLES = {
    "data-1140": 5,
    "data-discard-interface": 1,
    "data-encap-vxlan": 1,
    "data-icmpv4": 1,
    "data-icmpv6": 1,
    "data-local-interface": 1,
    "data-multiple-interfaces": 1,
    "data-qinq": 1,
    "data-sflow-expanded-sample": 1,
    "data-sflow-ipv4-data": 1,
    "data-sflow-raw-ipv4": 2,
}


def datagrams(name: str) -> list[tuple[bytes, str, int]]:
    return [(d.payload, d.src, int(d.timestamp)) for d in read_udp(PCAPS / f"akvorado-sflow__{name}.pcap")]


def decode(dgrams: list[tuple[bytes, str, int]]) -> tuple[FlowBatch, DecodeStats]:
    stats = DecodeStats()
    return SFlowDecoder(stats).decode(dgrams), stats


def rows(name: str) -> list[dict[str, object]]:
    batch, stats = decode(datagrams(name))
    assert not stats.total_dropped()
    return list(batch.rows())


def test_every_capture_is_in_the_table() -> None:
    on_disk = {p.name.removeprefix("akvorado-sflow__").removesuffix(".pcap")
               for p in PCAPS.glob("akvorado-sflow__*.pcap")}
    assert on_disk == set(EXPECTED_FLOW_SAMPLES)


@pytest.mark.parametrize("name", sorted(EXPECTED_FLOW_SAMPLES))
def test_capture_decodes_to_tshark_sample_count(name: str) -> None:
    """Bytes past the declared samples (see TRAILING_BYTES) are ignored, as tshark does."""
    dgrams = datagrams(name)
    batch, stats = decode(dgrams)
    assert batch.n == EXPECTED_FLOW_SAMPLES[name]
    assert stats.total(RECORDS) == batch.n
    assert stats.total(DATAGRAMS) == len(dgrams)
    assert stats.total(COUNTER_SAMPLES) == 0
    assert not stats.total_dropped()
    assert batch["flow_protocol"].strings() == ["sflow5"] * batch.n
    # One sampled packet stands for `sampling_rate` packets.
    assert (batch["packets"] == batch["sampling_rate"]).all()
    assert (batch["timestamp_start"] == batch["received_at"]).all()
    assert [addr_to_str(a) for a in batch["exporter_address"]] == [dgrams[0][1]] * batch.n


def test_data_1140_fields() -> None:
    got = rows("data-1140")
    # Sample 1 (seq 588827825): IPv6 TCP ssh, raw header behind an extended switch record.
    first = got[0]
    assert (first["src_addr"], first["dst_addr"]) == ("2a0c:8880:2:0:185:21:130:38",
                                                      "2a0c:8880:2:0:185:21:130:39")
    assert (first["src_port"], first["dst_port"], first["proto"]) == (46026, 22, 6)
    assert (first["ip_version"], first["tos"], first["tcpflags"]) == (6, 0x08, 0x10)
    assert (first["input_interface"], first["output_interface"]) == (27, 28)
    assert (first["src_vlan"], first["dst_vlan"]) == (100, 100)
    assert (first["sampling_rate"], first["packets"], first["bytes"]) == (1024, 1024, 1518 * 1024)
    assert (first["src_mac"], first["dst_mac"]) == (0x246E96907A50, 0x246E96043C08)
    assert first["forwarding_status"] == 64
    assert first["observation_domain"] == 0
    # Sample 2 (seq 350388893): IPv4 https; incoming VLAN 0xFFFFFFFF means unknown.
    second = got[1]
    assert (second["src_addr"], second["dst_addr"]) == ("104.26.8.24", "45.90.161.46")
    assert (second["src_port"], second["dst_port"], second["tcpflags"]) == (443, 56876, 0x18)
    assert (second["input_interface"], second["output_interface"]) == (49001, 25)
    assert (second["src_vlan"], second["dst_vlan"]) == (0, 100)
    # Extended router data: next hop and masks.
    assert (second["next_hop"], second["src_mask"], second["dst_mask"]) == ("45.90.161.46", 20, 27)
    assert second["bytes"] == 439 * 1024
    # Sample 4 (seq 588827826): a SYN.
    fourth = got[3]
    assert (fourth["src_addr"], fourth["dst_addr"], fourth["dst_port"]) == ("45.90.161.148",
                                                                            "191.87.91.27", 5555)
    assert (fourth["tcpflags"], fourth["next_hop"], fourth["src_mask"], fourth["dst_mask"]) == (
        0x02, "31.14.69.110", 27, 17)
    assert (fourth["input_interface"], fourth["output_interface"]) == (28, 49001)


def test_qinq_expanded_sample() -> None:
    (flow,) = rows("data-qinq")
    assert (flow["src_addr"], flow["dst_addr"]) == ("49.49.49.2", "49.49.49.109")
    assert (flow["src_port"], flow["dst_port"], flow["proto"]) == (32017, 443, 6)
    # Expanded sample: interfaces are full 32-bit values.
    assert (flow["input_interface"], flow["output_interface"]) == (369098852, 369098851)
    # Tags 1062 (outer) then 1493 (inner): the inner customer VLAN is reported.
    assert flow["src_vlan"] == 1493
    assert (flow["sampling_rate"], flow["bytes"]) == (4096, 106 * 4096)
    assert flow["observation_domain"] == 100
    assert flow["exporter_address"] == "172.17.128.58"


def test_icmpv4_and_icmpv6_type_and_code() -> None:
    (v4,) = rows("data-icmpv4")
    assert (v4["src_addr"], v4["dst_addr"], v4["proto"]) == ("203.0.113.4", "203.0.113.5", 1)
    assert (v4["icmp_type"], v4["icmp_code"], v4["src_port"], v4["dst_port"]) == (8, 0, 0, 0)
    # 0x3FFFFFFF on both sides: traffic from/to the device itself, no interface.
    assert (v4["input_interface"], v4["output_interface"], v4["forwarding_status"]) == (0, 0, 0)
    (v6,) = rows("data-icmpv6")
    assert (v6["src_addr"], v6["dst_addr"], v6["proto"]) == ("fe80::d05b:45ff:feee:5ecf", "2001:db8::", 58)
    assert (v6["icmp_type"], v6["icmp_code"], v6["ip_version"]) == (135, 0, 6)
    assert v6["bytes"] == 90
    raw = rows("data-sflow-raw-ipv4")  # header_protocol 11: the header starts at IPv4
    assert [(r["dst_addr"], r["icmp_type"], r["tos"], r["bytes"]) for r in raw] == [
        ("92.222.186.1", 0, 0x08, 50), ("92.222.184.1", 0, 0x08, 50)]
    assert raw[0]["observation_domain"] == 100000


def test_output_interface_formats() -> None:
    # 0x40000001: discarded, reason 1 (host unreachable) -> RFC 7270 131 "Unroutable".
    (discard,) = rows("data-discard-interface")
    assert (discard["output_interface"], discard["forwarding_status"]) == (0, 131)
    # 0x80000007: sent to 7 interfaces -> no single index, forwarded.
    (multiple,) = rows("data-multiple-interfaces")
    assert (multiple["output_interface"], multiple["forwarding_status"]) == (0, 64)
    # 0x3FFFFFFF: to the device itself.
    (local,) = rows("data-local-interface")
    assert (local["input_interface"], local["output_interface"], local["forwarding_status"]) == (27, 0, 0)


def test_raw_header_wins_over_sampled_ipv4_record() -> None:
    (flow,) = rows("data-sflow-ipv4-data")
    assert (flow["src_addr"], flow["dst_addr"], flow["proto"]) == ("50.50.50.50", "51.51.51.51", 17)
    assert (flow["src_port"], flow["dst_port"]) == (46622, 58631)
    # Raw header frame length 1390, not the sampled IPv4 length 1344.
    assert (flow["sampling_rate"], flow["bytes"]) == (256, 1390 * 256)
    assert (flow["input_interface"], flow["output_interface"], flow["dst_vlan"]) == (0, 182, 3001)
    assert (flow["src_mac"], flow["dst_mac"]) == (0x00FEC8990547, 0x01005E2AAA04)


def test_vxlan_reports_the_outer_header() -> None:
    (flow,) = rows("data-encap-vxlan")
    assert (flow["src_addr"], flow["dst_addr"]) == ("192.168.108.40", "192.168.15.14")
    assert (flow["proto"], flow["src_port"], flow["dst_port"]) == (17, 45833, 4789)


# Hand-built datagrams: a real flow sample with counter samples around it.

def _split_datagram(payload: bytes) -> tuple[bytes, bytes]:
    """(datagram header up to the sample count, the samples), for an IPv4 agent."""
    assert payload[4:8] == b"\x00\x00\x00\x01"
    return payload[:24], payload[28:]


def _sample(data_format: int, body: bytes) -> bytes:
    return struct.pack("!II", data_format, len(body)) + body


def _datagram(header: bytes, samples: list[bytes]) -> bytes:
    return header + struct.pack("!I", len(samples)) + b"".join(samples)


COUNTER_SAMPLE = _sample(2, struct.pack("!III", 7, 3, 0))  # seq, source id, no records
EXPANDED_COUNTER_SAMPLE = _sample(4, struct.pack("!IIII", 8, 0, 3, 0))


def test_counter_samples_are_counted_not_stored() -> None:
    payload, exporter, ts = datagrams("data-icmpv4")[0]
    header, flow_sample = _split_datagram(payload)
    enterprise_sample = _sample((4300 << 12) | 1, b"\x00" * 12)  # unknown: skipped by length
    dgram = _datagram(header, [COUNTER_SAMPLE, flow_sample, enterprise_sample, EXPANDED_COUNTER_SAMPLE])
    batch, stats = decode([(dgram, exporter, ts)])
    assert batch.n == 1
    assert stats.counts[exporter][COUNTER_SAMPLES] == 2
    assert stats.counts[exporter][SKIPPED_SAMPLES] == 1
    assert stats.counts[exporter][RECORDS] == 1
    assert not stats.total_dropped()


def _record(record_format: int, body: bytes) -> bytes:
    return struct.pack("!II", record_format, len(body)) + body + b"\x00" * (-len(body) & 3)


def _flow_sample(records: list[bytes], output: int = 2, rate: int = 100) -> bytes:
    # sequence, source id, sampling rate, pool, drops, input 1, output, records
    return _sample(1, struct.pack("!IIIIIIII", 1, 1, rate, 0, 0, 1, output, len(records)) + b"".join(records))


SYNTHETIC_HEADER = _split_datagram(datagrams("data-icmpv4")[0][0])[0]


def test_sampled_ipv6_record_and_ipv6_next_hop() -> None:
    src, dst, hop = (bytes.fromhex(h) for h in ("20010db8000000000000000000000001",
                                                 "20010db8000000000000000000000002",
                                                 "fe800000000000000000000000000001"))
    # Sampled IPv6 (format 4): length, protocol, src, dst, ports, tcp flags, priority.
    sampled = _record(4, struct.pack("!II16s16sIIII", 1280, 6, src, dst, 443, 50000, 0x12, 0x20))
    router = _record(1002, struct.pack("!I16sII", 2, hop, 48, 64))
    dgram = _datagram(SYNTHETIC_HEADER, [_flow_sample([sampled, router], output=0x40000102)])
    batch, stats = decode([(dgram, "2001:db8::99", 1_700_000_000)])
    (flow,) = batch.rows()
    assert (flow["src_addr"], flow["dst_addr"], flow["ip_version"]) == ("2001:db8::1", "2001:db8::2", 6)
    assert (flow["src_port"], flow["dst_port"], flow["tcpflags"], flow["tos"]) == (443, 50000, 0x12, 0x20)
    assert (flow["bytes"], flow["packets"]) == (1280 * 100, 100)
    assert (flow["next_hop"], flow["src_mask"], flow["dst_mask"]) == ("fe80::1", 48, 64)
    # Output 0x40000102: discarded, reason 258 (ACL) -> RFC 7270 129 "ACL deny".
    assert (flow["output_interface"], flow["forwarding_status"]) == (0, 129)
    assert flow["exporter_address"] == "2001:db8::99"
    assert not stats.total_dropped()


def test_raw_ipv6_header_walks_extension_headers() -> None:
    src, dst = bytes(15) + b"\x01", bytes(15) + b"\x02"
    ipv6 = struct.pack("!IHBB16s16s", (6 << 28) | (0xB8 << 20), 16, 0, 64, src, dst)
    hop_by_hop = bytes([17, 0]) + bytes(6)  # next header UDP, 8 bytes long
    udp = struct.pack("!HHHH", 5353, 53, 8, 0)
    header = ipv6 + hop_by_hop + udp
    raw = _record(1, struct.pack("!IIII", 12, 100, 0, len(header)) + header)
    batch, _stats = decode([(_datagram(SYNTHETIC_HEADER, [_flow_sample([raw])]), "192.0.2.1", 0)])
    (flow,) = batch.rows()
    assert (flow["src_addr"], flow["dst_addr"], flow["proto"], flow["tos"]) == ("::1", "::2", 17, 0xB8)
    assert (flow["src_port"], flow["dst_port"], flow["bytes"]) == (5353, 53, 100 * 100)


def _bad(payload: bytes, reason: str) -> None:
    good = datagrams("data-sflow-raw-ipv4")[0]
    batch, stats = decode([good, (payload, "192.0.2.9", 0), good])
    # The bad datagram is dropped whole; its neighbours are untouched.
    assert batch.n == 2 * EXPECTED_FLOW_SAMPLES["data-sflow-raw-ipv4"]
    assert dict(stats.dropped["192.0.2.9"]) == {reason: 1}
    assert stats.counts["192.0.2.9"][DATAGRAMS] == 1


def test_malformed_datagrams_are_counted_and_skipped() -> None:
    payload = datagrams("data-1140")[0][0]
    header, samples = _split_datagram(payload)
    _bad(b"\x00\x00\x00\x04" + payload[4:], BAD_VERSION)
    _bad(payload[:20], TRUNCATED)
    _bad(payload[:-1], TRUNCATED)  # the last sample is cut
    _bad(header + struct.pack("!I", 0xFFFFFFFF) + samples, BAD_COUNT)
    # A sample claiming 4 GB.
    _bad(header + struct.pack("!III", 1, 1, 0xFFFFFFF0), TRUNCATED)
    # A flow sample whose record claims more bytes than the sample holds.
    flow_header = struct.pack("!IIIIIIII", 1, 1, 1, 1, 0, 1, 2, 1)
    record = struct.pack("!II", 1, 1000) + b"\x00" * 16
    _bad(_datagram(header, [_sample(1, flow_header + record)]), BAD_LENGTH)
    # A flow sample announcing 2^32-1 records: rejected before any looping.
    many = struct.pack("!IIIIIIII", 1, 1, 1, 1, 0, 1, 2, 0xFFFFFFFF)
    _bad(_datagram(header, [_sample(1, many)]), BAD_COUNT)


def test_empty_input_gives_an_empty_batch() -> None:
    batch, _stats = decode([])
    assert batch.n == 0
    assert batch["src_addr"].shape == (0, 16)
    assert batch["bytes"].dtype == np.dtype("<u8")


# Fuzzing: truncated and mutated copies of every real datagram.

# These three are data-1140's datagram with the sample count set to 1 and one field edited:
# the other four samples are still there, as bytes past the declared end.
TRAILING_BYTES = {"data-discard-interface": 964, "data-local-interface": 964, "data-multiple-interfaces": 964}
REAL = [(dg, EXPECTED_FLOW_SAMPLES[name], len(dg[0]) - TRAILING_BYTES.get(name, 0))
        for name in sorted(EXPECTED_FLOW_SAMPLES) for dg in datagrams(name)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzzed_datagrams_never_raise(data: st.DataObject) -> None:
    (payload, exporter, ts), n_flows, declared_end = data.draw(st.sampled_from(REAL))
    if data.draw(st.booleans()):
        cut = data.draw(st.integers(0, len(payload) - 1))
        # Cut before the end of the last sample, the datagram must be refused.
        mutated, must_drop = payload[:cut], cut < declared_end
    else:
        buf = bytearray(payload)
        for pos, value in data.draw(st.lists(st.tuples(st.integers(0, len(buf) - 1),
                                                       st.integers(0, 255)), min_size=1, max_size=8)):
            buf[pos] = value
        mutated, must_drop = bytes(buf), False
    batch, stats = decode([(mutated, "198.51.100.1", ts), (payload, exporter, ts)])
    dropped = sum(stats.dropped["198.51.100.1"].values())
    got = stats.counts["198.51.100.1"][RECORDS]
    assert dropped in (0, 1)
    assert not (dropped and got), "a dropped datagram keeps none of its samples"
    if must_drop:
        assert dropped == 1
    assert batch.n == got + n_flows  # the intact copy always decodes fully
    assert stats.counts[exporter][RECORDS] == n_flows
    for name in ("src_addr", "bytes", "input_interface", "exporter_address"):
        assert len(batch[name]) == batch.n
