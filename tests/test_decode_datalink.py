"""Packet sections in NetFlow v9/IPFIX records (IE 315, 104, 313): the flow fields read from them.

Packet reports carry a copy of the packet's first bytes instead of address and port
fields.  The golden tests compare what we read from real captures with what tshark, an
independent decoder, reads from the same copies; hand-built datagrams cover what the
captures do not (record fields winning, IP header sections, SRv6 routing headers, MPLS
without control word, NetFlow v9 fixed-length sections, cut and unusual copies).
"""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from appliance.flowenricher.decode.dispatch import FlowDecoder
from appliance.flowenricher.decode.packet_headers import LINK_ETHERNET, parse_ethernet, read_sections
from appliance.flowenricher.pcap import read_udp

PCAPS = Path(__file__).parent / "data" / "pcaps"

# Capture -> extra tshark options.  Label 17 of the pseudowire capture carries Ethernet
# with a control word (RFC 4385); tshark guesses that per packet and misses it where the
# inner destination MAC starts with 0 (record 4), so it is told.
CAPTURES = {
    "datalink": [],
    "ethernet-over-mpls-with-control-word": ["-d", "mpls.label==17,pwethcw"],
    "ipfix-srv6": [],
}


def _files(capture: str) -> list[Path]:
    return [PCAPS / f"akvorado-netflow__{capture}-{part}.pcap" for part in ("template", "data")]


def _decode_rows(capture: str) -> list[dict[str, Any]]:
    decoder = FlowDecoder()
    rows: list[dict[str, Any]] = []
    for path in _files(capture):
        datagrams = [(d.payload, d.src, int(d.timestamp)) for d in read_udp(path)]
        rows.extend(decoder.decode(datagrams).rows())
    assert not decoder.stats.total_dropped()
    return rows


def _one(value: Any) -> Any:
    """The first of a layer tshark lists several times (outer Ethernet of a pseudowire)."""
    return value[0] if isinstance(value, list) else value


def _mac(text: str) -> int:
    return int(text.replace(":", ""), 16)


def _tshark_expectations(capture: str) -> list[dict[str, Any]]:
    """Per flow record, the fields tshark dissects from its dataLinkFrameSection."""
    merged = subprocess.run(["mergecap", "-a", "-F", "pcap", "-w", "-", *map(str, _files(capture))],
                            capture_output=True, check=True).stdout
    out = subprocess.run(["tshark", "-r", "-", "-d", "udp.port==2055,cflow", *CAPTURES[capture],
                          "-T", "json", "--no-duplicate-keys"], input=merged, capture_output=True, check=True).stdout
    expected = []
    for packet in json.loads(out):
        cflow = packet["_source"]["layers"].get("cflow", {})
        for set_key, flowset in cflow.items():
            if not set_key.startswith("Set"):
                continue
            for flow_key, flow in flowset.items():
                if flow_key.startswith("Flow "):
                    expected.append(_from_tree(flow["cflow.data_link_frame_section_tree"]))
    return expected


def _from_tree(tree: dict[str, Any]) -> dict[str, Any]:
    """Our columns from tshark's dissection: outer Ethernet, first IP header, its transport."""
    layers = list(tree)
    eth = _one(tree["eth"])
    want: dict[str, Any] = {"dst_mac": _mac(eth["eth.dst"]), "src_mac": _mac(eth["eth.src"]), "src_vlan": 0,
                            "src_port": 0, "dst_port": 0, "tcpflags": 0, "icmp_type": 0, "icmp_code": 0}
    if "vlan" in tree:
        assert "mpls" not in tree  # no capture has tags both outside and inside a pseudowire
        tags = tree["vlan"]  # with QinQ, the innermost tag is the one reported
        want["src_vlan"] = int((tags[-1] if isinstance(tags, list) else tags)["vlan.id"])
    l3 = next(name for name in layers if name in ("ip", "ipv6"))
    ip = _one(tree[l3])
    if l3 == "ip":
        want.update(ip_version=4, src_addr=ip["ip.src"], dst_addr=ip["ip.dst"], proto=int(ip["ip.proto"]),
                    tos=int(ip["ip.dsfield"], 16), bytes=int(ip["ip.len"]))
    else:
        want.update(ip_version=6, src_addr=ip["ipv6.src"], dst_addr=ip["ipv6.dst"], proto=int(ip["ipv6.nxt"]),
                    tos=int(ip["ipv6.tclass"], 16), bytes=int(ip["ipv6.plen"]) + 40)
    # The layer right after the first IP header; an inner IP header (a tunnel) gives nothing.
    after = layers[layers.index(l3) + 1]
    if after == "tcp":
        tcp = tree["tcp"]
        want.update(src_port=int(tcp["tcp.srcport"]), dst_port=int(tcp["tcp.dstport"]),
                    tcpflags=int(tcp["tcp.flags"], 16) & 0xFF)
    elif after == "udp":
        want.update(src_port=int(tree["udp"]["udp.srcport"]), dst_port=int(tree["udp"]["udp.dstport"]))
    elif after in ("icmp", "icmpv6"):
        want.update(icmp_type=int(tree[after][f"{after}.type"]), icmp_code=int(tree[after][f"{after}.code"]))
    return want


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
@pytest.mark.parametrize("capture", list(CAPTURES))
def test_section_fields_agree_with_tshark(capture: str) -> None:
    rows = _decode_rows(capture)
    expected = _tshark_expectations(capture)
    assert len(rows) == len(expected) > 0
    for i, (row, want) in enumerate(zip(rows, expected, strict=True)):
        got = {key: row[key] for key in want}
        assert got == want, f"record {i + 1}"
        assert row["packets"] == 1  # a packet report: one sampled packet, sampling rate 1 here


def test_pseudowire_control_word_read_by_hand() -> None:
    """Record 4 of the pseudowire capture, read from its hex:
    020000000003 020000000004 8847        outer Ethernet: dst 02:..:03, src 02:..:04, MPLS
    493ec2ff 000113ff                      labels 300012 and 17, bottom of stack on the second
    00000000                               first nibble 0: the pseudowire control word
    020000000005 020000000006 0800         inner Ethernet (its MACs are not reported), IPv4
    452005d4 a04d4000 3e06 2547            IHL 5, tos 0x20, length 1492, DF, TTL 62, TCP
    c6336401 c6336402 01bb d883 ...        198.51.100.1 -> 198.51.100.2, ports 443 -> 55427
    and TCP flags 0x10 (ACK) at byte 13 of the TCP header."""
    row = _decode_rows("ethernet-over-mpls-with-control-word")[3]
    assert (row["src_addr"], row["dst_addr"], row["proto"], row["tos"]) == ("198.51.100.1", "198.51.100.2", 6, 0x20)
    assert (row["src_port"], row["dst_port"], row["tcpflags"]) == (443, 55427, 0x10)
    assert (row["dst_mac"], row["src_mac"], row["src_vlan"]) == (0x020000000003, 0x020000000004, 0)
    assert (row["bytes"], row["packets"], row["input_interface"]) == (1492, 1, 1022)


def test_srv6_reports_the_outer_header() -> None:
    """SRv6 (here the reduced encapsulation: IPv6 next header 4) is a tunnel like the
    others: the outer IPv6 addresses are the ones the exporter routed."""
    (row,) = _decode_rows("ipfix-srv6")
    assert (row["src_addr"], row["dst_addr"], row["proto"]) == ("fc30:2200:1b::f", "fc30:2200:23:e009::", 4)
    assert (row["ip_version"], row["src_port"], row["dst_port"], row["bytes"]) == (6, 0, 0, 104)


# ------------------------------------------------------------------ hand-built packets

MAC_A, MAC_B = bytes.fromhex("00005e005301"), bytes.fromhex("00005e005302")


def ethernet(ethertype: int, payload: bytes, tags: tuple[tuple[int, int], ...] = ()) -> bytes:
    """Ethernet II from MAC_A to MAC_B; `tags` are (tag ethertype, VLAN id), outer first."""
    header = MAC_B + MAC_A
    for tpid, vid in tags:
        header += struct.pack("!HH", tpid, vid)
    return header + struct.pack("!H", ethertype) + payload


def ipv4(src: str, dst: str, proto: int, payload: bytes, tos: int = 0, fragment: int = 0, ihl: int = 5) -> bytes:
    options = bytes(4 * (ihl - 5))
    header = struct.pack("!BBHHHBB2x4s4s", 0x40 | ihl, tos, 20 + len(options) + len(payload), 1, fragment, 64,
                         proto, bytes(map(int, src.split("."))), bytes(map(int, dst.split("."))))
    return header + options + payload


def ipv6(src: bytes, dst: bytes, next_header: int, payload: bytes, tclass: int = 0) -> bytes:
    return struct.pack("!IHBB16s16s", (6 << 28) | (tclass << 20), len(payload), next_header, 64, src, dst) + payload


def tcp(sport: int, dport: int, flags: int) -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 1024, 0, 0)


def udp(sport: int, dport: int) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8, 0)


def mpls(*labels: int) -> bytes:
    return b"".join(struct.pack("!I", (label << 12) | (int(i == len(labels) - 1) << 8) | 64)
                    for i, label in enumerate(labels))


def srh(next_header: int, segments: list[bytes]) -> bytes:
    """Segment routing header (RFC 8754): routing header type 4."""
    return struct.pack("!BBBBBBH", next_header, 2 * len(segments), 4, len(segments) - 1, len(segments) - 1,
                       0, 0) + b"".join(segments)


def variable(data: bytes) -> bytes:
    """An IPFIX variable-length field (RFC 7011 §7): 1-byte length, or 255 and 2 bytes."""
    return (bytes([len(data)]) if len(data) < 255 else b"\xff" + struct.pack("!H", len(data))) + data


def ipfix(template: list[tuple[int, int]], records: list[bytes], tid: int = 300) -> bytes:
    """One IPFIX message: a template set, then a data set of `records`."""
    tset = struct.pack("!HH", tid, len(template)) + b"".join(struct.pack("!HH", ie, ln) for ie, ln in template)
    body = b"".join(records)
    sets = struct.pack("!HH", 2, 4 + len(tset)) + tset + struct.pack("!HH", tid, 4 + len(body)) + body
    return struct.pack("!HHIII", 10, 16 + len(sets), 1_700_000_000, 1, 7) + sets


def netflow9(template: list[tuple[int, int]], records: list[bytes], tid: int = 300) -> bytes:
    tset = struct.pack("!HH", tid, len(template)) + b"".join(struct.pack("!HH", ie, ln) for ie, ln in template)
    body = b"".join(records)
    sets = struct.pack("!HH", 0, 4 + len(tset)) + tset + struct.pack("!HH", tid, 4 + len(body)) + body
    return struct.pack("!HHIIII", 9, 2, 3_600_000, 1_700_000_000, 1, 7) + sets


def decode(payload: bytes) -> list[dict[str, Any]]:
    decoder = FlowDecoder()
    rows = list(decoder.decode([(payload, "192.0.2.10", 1_700_000_000)]).rows())
    assert not decoder.stats.total_dropped()
    return rows


V6_A, V6_B = bytes.fromhex("20010db8" + "00" * 11 + "01"), bytes.fromhex("20010db8" + "00" * 11 + "02")
SEGMENT = bytes.fromhex("fc00" + "00" * 13 + "01")


def test_record_fields_win_over_the_section() -> None:
    """Addresses in the record (IE 8, 12) stay; what only the copy has comes from it, and
    the one packet it reports is scaled by the record's sampling interval (IE 34)."""
    frame = ethernet(0x0800, ipv4("10.0.0.1", "10.0.0.2", 6, tcp(1234, 80, 0x02), tos=0xB8),
                     tags=((0x8100, 42),))
    record = (bytes([192, 0, 2, 1, 192, 0, 2, 2]) + struct.pack("!I", 100) + variable(frame))
    (row,) = decode(ipfix([(8, 4), (12, 4), (34, 4), (315, 65535)], [record]))
    assert (row["src_addr"], row["dst_addr"], row["ip_version"]) == ("192.0.2.1", "192.0.2.2", 4)
    assert (row["proto"], row["src_port"], row["dst_port"], row["tcpflags"], row["tos"]) == (6, 1234, 80, 0x02, 0xB8)
    assert (row["src_vlan"], row["src_mac"], row["dst_mac"]) == (42, 0x00005E005301, 0x00005E005302)
    assert (row["sampling_rate"], row["packets"], row["bytes"]) == (100, 100, 40 * 100)


def test_ip_header_sections_skip_the_srv6_routing_header() -> None:
    """IE 313 starts at the IP header, either version: one set mixing IPv6 + SRH + UDP and
    IPv4 ICMP, so two layouts in one batch."""
    v6 = ipv6(V6_A, V6_B, 43, srh(17, [SEGMENT, V6_B]) + udp(5000, 53), tclass=0x2E)
    v4 = ipv4("198.51.100.7", "203.0.113.9", 1, bytes([3, 1, 0, 0]))
    rows = decode(ipfix([(10, 4), (313, 65535)], [struct.pack("!I", 5) + variable(v6),
                                                 struct.pack("!I", 6) + variable(v4)]))
    assert [(r["src_addr"], r["dst_addr"], r["ip_version"]) for r in rows] == [
        ("2001:db8::1", "2001:db8::2", 6), ("198.51.100.7", "203.0.113.9", 4)]
    assert [(r["proto"], r["src_port"], r["dst_port"], r["tos"]) for r in rows] == [(17, 5000, 53, 0x2E), (1, 0, 0, 0)]
    assert [(r["icmp_type"], r["icmp_code"], r["bytes"]) for r in rows] == [(0, 0, len(v6)), (3, 1, len(v4))]
    assert [(r["src_mac"], r["input_interface"]) for r in rows] == [(0, 5), (0, 6)]  # no link layer in IE 313


def test_netflow9_fixed_length_sections_through_mpls() -> None:
    """NetFlow v9 has no variable length: Cisco sends IE 104 at a fixed size, padded.
    The record's own counters stay; MPLS without control word leads straight to IP."""
    size = 96
    frames = [ethernet(0x8847, mpls(16, 17, 18) + ipv4("192.0.2.1", "192.0.2.2", 17, udp(4000, 4001))),
              ethernet(0x8847, mpls(24) + ipv6(V6_A, V6_B, 6, tcp(443, 50000, 0x18)))]
    records = [struct.pack("!II", 7, 3000) + f[:size].ljust(size, b"\x00") for f in frames]
    rows = decode(netflow9([(2, 4), (1, 4), (104, size)], records))
    assert [(r["src_addr"], r["dst_addr"], r["proto"], r["src_port"], r["dst_port"]) for r in rows] == [
        ("192.0.2.1", "192.0.2.2", 17, 4000, 4001), ("2001:db8::1", "2001:db8::2", 6, 443, 50000)]
    assert [(r["packets"], r["bytes"], r["tcpflags"]) for r in rows] == [(7, 3000, 0), (7, 3000, 0x18)]


def test_cut_copies_give_what_they_hold() -> None:
    """A copy cut inside the TCP header keeps the addresses; one cut inside the IP header
    keeps the MACs; one longer than we keep still lets the next record decode."""
    frame = ethernet(0x0800, ipv4("10.1.1.1", "10.2.2.2", 6, tcp(1111, 2222, 0x11) + bytes(1400)))
    records = [variable(frame[:14 + 20 + 3]), variable(frame[:14 + 10]), variable(frame), variable(frame[:60])]
    rows = decode(ipfix([(315, 65535)], records))
    got = [(r["src_addr"], r["src_port"], r["dst_port"], r["tcpflags"], r["dst_mac"]) for r in rows]
    assert got == [("10.1.1.1", 0, 0, 0, 0x00005E005302), ("::", 0, 0, 0, 0x00005E005302),
                   ("10.1.1.1", 1111, 2222, 0x11, 0x00005E005302), ("10.1.1.1", 1111, 2222, 0x11, 0x00005E005302)]


def test_copies_not_from_the_frame_start_or_not_ethernet_are_not_walked() -> None:
    """IE 102 (section offset) other than 0, or IE 408 (frame type) other than Ethernet:
    the bytes are something else than the start of an Ethernet frame."""
    frame = ethernet(0x0800, ipv4("10.1.1.1", "10.2.2.2", 17, udp(1, 2)))
    rows = decode(ipfix([(102, 2), (408, 2), (312, 2), (315, 65535)], [
        struct.pack("!HHH", 0, 1, 200) + variable(frame),
        struct.pack("!HHH", 14, 1, 200) + variable(frame[14:]),
        struct.pack("!HHH", 0, 2, 200) + variable(frame)]))
    assert [(r["src_addr"], r["src_port"]) for r in rows] == [("10.1.1.1", 1), ("::", 0), ("::", 0)]
    assert [r["bytes"] for r in rows] == [28, 200, 200]  # no IP header read: the frame size (IE 312)


# -------------------------------------------------- layouts: grouped reading == per frame

ADDRESSES = st.sampled_from(["10.0.0.1", "192.0.2.77", "198.51.100.200"])
V6_ADDRESSES = st.sampled_from([V6_A, V6_B, SEGMENT])


@st.composite
def transports(draw: st.DrawFn) -> tuple[int, bytes]:
    proto = draw(st.sampled_from([1, 6, 17, 47, 58, 132]))
    payload = {6: tcp(draw(st.integers(0, 65535)), 80, draw(st.integers(0, 255))), 17: udp(53, 5353),
               132: udp(9, 10), 1: bytes([8, 0, 0, 0]), 58: bytes([128, 0, 0, 0])}.get(proto, bytes(8))
    return proto, payload


@st.composite
def ip_packets(draw: st.DrawFn) -> tuple[int, bytes]:
    proto, payload = draw(transports())
    if draw(st.booleans()):
        fragment = draw(st.sampled_from([0, 0, 0x2000, 0x0010]))
        packet = ipv4(draw(ADDRESSES), draw(ADDRESSES), proto, payload, tos=draw(st.integers(0, 255)),
                      fragment=fragment, ihl=draw(st.integers(5, 7)))
        return 0x0800, packet
    for ext in draw(st.lists(st.sampled_from([0, 43, 60, 44, 51]), max_size=3)):
        if ext == 44:
            payload = struct.pack("!BBHI", proto, 0, draw(st.sampled_from([0, 8])), 1) + payload
        elif ext == 51:
            payload = bytes([proto, 2]) + bytes(14) + payload  # AH: (2 + 2) * 4 bytes
        elif ext == 43:
            payload = srh(proto, [SEGMENT] * draw(st.integers(1, 3))) + payload
        else:
            payload = bytes([proto, 1]) + bytes(14) + payload
        proto = ext
    return 0x86DD, ipv6(draw(V6_ADDRESSES), draw(V6_ADDRESSES), proto, payload, tclass=draw(st.integers(0, 255)))


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    tags = tuple((draw(st.sampled_from([0x8100, 0x88A8, 0x9100])), draw(st.integers(0, 4095)))
                 for _ in range(draw(st.integers(0, 2))))
    ethertype, packet = draw(ip_packets())
    shape = draw(st.sampled_from(["ip", "mpls", "pw_cw", "pw", "arp"]))
    if shape == "arp":
        ethertype, packet = 0x0806, bytes(28)
    elif shape != "ip":
        inner = ethernet(ethertype, packet, tags=((0x8100, 7),) if draw(st.booleans()) else ())
        payload = {"mpls": packet, "pw_cw": bytes(4) + inner, "pw": inner}[shape]
        ethertype, packet = 0x8847, mpls(*draw(st.lists(st.integers(16, 1 << 19), min_size=1, max_size=3))) + payload
    return ethernet(ethertype, packet, tags=tags)


@st.composite
def frame_batches(draw: st.DrawFn) -> list[bytes]:
    """Variants of a few frames: cut at various lengths, one byte changed.  Frames that
    differ in one test only are what a layout missing that test would mix up."""
    bases = draw(st.lists(frames(), min_size=1, max_size=4))
    batch = []
    for _ in range(draw(st.integers(1, 24))):
        frame = draw(st.sampled_from(bases))
        if draw(st.booleans()):
            frame = frame[: draw(st.integers(0, len(frame)))]
        if frame and draw(st.booleans()):
            at = draw(st.integers(0, min(len(frame), 96) - 1))
            frame = frame[:at] + bytes([draw(st.integers(0, 255))]) + frame[at + 1 :]
        batch.append(frame)
    return batch


COLUMNS = ("ip_version", "src_addr", "dst_addr", "proto", "tos", "tcpflags", "src_port", "dst_port",
           "icmp_type", "icmp_code", "ip_length", "src_mac", "dst_mac", "vlan")


@settings(max_examples=200, deadline=None)
@given(frame_batches())
def test_grouped_reading_matches_walking_each_frame(batch: list[bytes]) -> None:
    """Frames grouped by layout read the same as frames walked one by one, which read the
    same as the sFlow parser: a test missing from a layout would mix frames up."""
    width = 256
    table = np.zeros((len(batch), width), dtype=np.uint8)
    lengths = np.array([min(len(f), width) for f in batch], dtype=np.uint16)
    for i, f in enumerate(batch):
        table[i, : lengths[i]] = np.frombuffer(f[:width], np.uint8)
    grouped = read_sections(table, lengths, LINK_ETHERNET)
    one_by_one = read_sections(table, lengths, LINK_ETHERNET, max_layouts=0)
    for name in COLUMNS:
        assert np.array_equal(getattr(grouped, name), getattr(one_by_one, name)), name
    for i, f in enumerate(batch):
        f = f[:width]
        parsed = parse_ethernet(f, 0, len(f))
        if parsed is None:
            assert grouped.dst_mac[i] == 0 and grouped.ip_version[i] == 0
            continue
        src_mac, dst_mac, vlan, l3 = parsed
        assert (int(grouped.src_mac[i]), int(grouped.dst_mac[i]), int(grouped.vlan[i])) == (src_mac, dst_mac, vlan)
        if l3 is None:
            assert grouped.ip_version[i] == 0
            continue
        version, src, dst, *numbers = l3
        assert (int(grouped.ip_version[i]), grouped.src_addr[i].tobytes(), grouped.dst_addr[i].tobytes()) == (
            version, src, dst)
        assert [int(getattr(grouped, name)[i]) for name in COLUMNS[3:10]] == numbers
