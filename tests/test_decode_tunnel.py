"""Encapsulated flows: a template carrying a tunnel's outer and inner header decodes to one
consistent flow (the inner addresses, protocol and ports together, the outer addresses in
the tunnel columns), checked against tshark on a capture, over every field order, and
through the store."""

from __future__ import annotations

import ipaddress
import json
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.netflow_wire import ipfix_message, ipfix_set, ipfix_template, uint, v9_packet, v9_template
from support.stores import migrated_store

from appliance.flowenricher.batch import FlowBatch
from appliance.flowenricher.columns import NAMES
from appliance.flowenricher.decode.dispatch import FlowDecoder
from appliance.flowenricher.generate.pcapwriter import write_pcap
from appliance.flowenricher.pcap import read_udp
from appliance.flowenricher.storage.embedded import EmbeddedStore
from appliance.flowenricher.storage.settings import StoreSettings

EXPORT_TIME = 1_700_000_000
PORT = 2055
FLOWENRICHER = shutil.which("flowenricher") or "flowenricher"
ADDRESS_IES = {8: 4, 12: 4, 27: 16, 28: 16}  # element id -> length: IPv4 and IPv6 source/destination


def record(fields: Sequence[tuple[int, int]], values: Sequence[int | str]) -> bytes:
    """One data record: addresses given as text, every other field as a number."""
    out = b""
    for (ie, length), value in zip(fields, values, strict=True):
        if ie in ADDRESS_IES:
            packed = ipaddress.ip_address(str(value)).packed
            assert len(packed) == length, f"element {ie} holds {length} bytes, {value} has {len(packed)}"
            out += packed
        else:
            out += uint(int(value), length)
    return out


def export(protocol: str, tid: int, fields: Sequence[tuple[int, int]], records: Sequence[bytes],
           domain: int) -> bytes:
    """One datagram holding the template and its data set, as NetFlow v9 or IPFIX."""
    if protocol == "ipfix":
        tmpl = ipfix_set(2, ipfix_template(tid, [(ie, ln, 0) for ie, ln in fields]))
        return ipfix_message([tmpl, ipfix_set(tid, b"".join(records))], EXPORT_TIME, domain=domain)
    tmpl = ipfix_set(0, v9_template(tid, fields))
    return v9_packet([tmpl, ipfix_set(tid, b"".join(records))], EXPORT_TIME, 60_000, source_id=domain,
                     count=1 + len(records))


# ------------------------------------------------------------------ against tshark
@dataclass(frozen=True)
class Case:
    """An encapsulation template, its records, and where each column's value is in
    tshark's dissection: (tshark field, which occurrence in the record)."""

    name: str
    protocol: str
    fields: tuple[tuple[int, int], ...]
    rows: tuple[tuple[int | str, ...], ...]
    expect: dict[str, tuple[str, int]]
    fixed: dict[str, object] = field(default_factory=dict)  # columns with a known value


def _gre_v4() -> Case:
    fields = ((8, 4), (12, 4), (4, 1), (8, 4), (12, 4), (4, 1), (7, 2), (11, 2), (2, 4), (1, 4))
    rows = tuple((f"198.51.100.{i}", f"203.0.113.{i}", 47, f"10.0.{i}.1", f"10.1.{i}.2", 6 if i % 2 else 17,
                  1024 + i, 443 + i, i, 100 * i) for i in range(1, 9))
    return Case("ipfix GRE, IPv4 in IPv4, ports once", "ipfix", fields, rows, {
        "tunnel_src_addr": ("cflow.srcaddr", 0), "tunnel_dst_addr": ("cflow.dstaddr", 0),
        "src_addr": ("cflow.srcaddr", 1), "dst_addr": ("cflow.dstaddr", 1), "proto": ("cflow.protocol", 1),
        "src_port": ("cflow.srcport", 0), "dst_port": ("cflow.dstport", 0), "packets": ("cflow.packets", 0)},
        {"ip_version": 4})


def _v6_in_v4() -> Case:
    # ipVersion once, at the front: it describes the outer header; the flow is IPv6.
    fields = ((60, 1), (8, 4), (12, 4), (4, 1), (27, 16), (28, 16), (4, 1), (7, 2), (11, 2), (2, 4), (1, 4))
    rows = tuple((4, f"198.51.100.{i}", f"203.0.113.{i}", 41, f"2001:db8:{i}::1", f"2001:db8:{i}::2", 17,
                  5000 + i, 53, i, 80 * i) for i in range(1, 7))
    return Case("ipfix 6in4, ipVersion once", "ipfix", fields, rows, {
        "tunnel_src_addr": ("cflow.srcaddr", 0), "tunnel_dst_addr": ("cflow.dstaddr", 0),
        "src_addr": ("cflow.srcaddrv6", 0), "dst_addr": ("cflow.dstaddrv6", 0), "proto": ("cflow.protocol", 1),
        "src_port": ("cflow.srcport", 0), "dst_port": ("cflow.dstport", 0)},
        {"ip_version": 6})


def _vxlan_v9() -> Case:
    # Outer UDP to 4789 and its ports, then the inner header with its own ports.
    fields = ((8, 4), (12, 4), (4, 1), (7, 2), (11, 2), (8, 4), (12, 4), (4, 1), (7, 2), (11, 2), (2, 4), (1, 4))
    rows = tuple((f"192.0.2.{i}", f"192.0.2.{100 + i}", 17, 49152 + i, 4789, f"172.16.{i}.1", f"172.17.{i}.1",
                  6, 33000 + i, 22, i, 64 * i) for i in range(1, 8))
    return Case("v9 VXLAN, ports twice", "v9", fields, rows, {
        "tunnel_src_addr": ("cflow.srcaddr", 0), "tunnel_dst_addr": ("cflow.dstaddr", 0),
        "src_addr": ("cflow.srcaddr", 1), "dst_addr": ("cflow.dstaddr", 1), "proto": ("cflow.protocol", 1),
        "src_port": ("cflow.srcport", 1), "dst_port": ("cflow.dstport", 1)},
        {"ip_version": 4})


def _v6_in_v6_v9() -> Case:
    fields = ((27, 16), (28, 16), (4, 1), (27, 16), (28, 16), (4, 1), (7, 2), (11, 2), (2, 4), (1, 4))
    rows = tuple((f"2001:db8:ffff::{i}", f"2001:db8:fffe::{i}", 41, f"2001:db8:{i}::10", f"2001:db8:{i}::20",
                  6, 40000 + i, 80, i, 1500 * i) for i in range(1, 6))
    return Case("v9 IPv6 in IPv6", "v9", fields, rows, {
        "tunnel_src_addr": ("cflow.srcaddrv6", 0), "tunnel_dst_addr": ("cflow.dstaddrv6", 0),
        "src_addr": ("cflow.srcaddrv6", 1), "dst_addr": ("cflow.dstaddrv6", 1), "proto": ("cflow.protocol", 1),
        "src_port": ("cflow.srcport", 0), "dst_port": ("cflow.dstport", 0)},
        {"ip_version": 6})


def _plain() -> Case:
    fields = ((8, 4), (12, 4), (4, 1), (7, 2), (11, 2), (2, 4), (1, 4))
    rows = tuple((f"10.9.{i}.1", f"10.8.{i}.1", 6, 2000 + i, 25, i, 40 * i) for i in range(1, 4))
    return Case("ipfix without a tunnel", "ipfix", fields, rows, {
        "src_addr": ("cflow.srcaddr", 0), "dst_addr": ("cflow.dstaddr", 0), "proto": ("cflow.protocol", 0),
        "src_port": ("cflow.srcport", 0), "dst_port": ("cflow.dstport", 0)},
        {"tunnel_src_addr": "::", "tunnel_dst_addr": "::", "ip_version": 4})


CASES = (_gre_v4(), _v6_in_v4(), _vxlan_v9(), _v6_in_v6_v9(), _plain())


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every case as one datagram (template and data) in a capture, in CASES order."""
    path = tmp_path_factory.mktemp("tunnel") / "tunnel-templates.pcap"
    payloads = [export(c.protocol, 300 + i, c.fields, [record(c.fields, r) for r in c.rows], domain=i)
                for i, c in enumerate(CASES)]
    write_pcap(path, payloads, dst_port=PORT, start=EXPORT_TIME)
    return path


def _tshark_flows(path: Path) -> list[dict[str, list[str]]]:
    """Per flow record, in capture order: each field tshark dissects, with every
    occurrence in template order (--no-duplicate-keys keeps repeated fields as lists)."""
    out = subprocess.run(["tshark", "-r", str(path), "-d", f"udp.port=={PORT},cflow", "-T", "json",
                          "--no-duplicate-keys"], capture_output=True, check=True, timeout=60).stdout
    flows: list[dict[str, list[str]]] = []
    for packet in json.loads(out):
        for key, node in packet["_source"]["layers"]["cflow"].items():
            if key.startswith(("Set ", "FlowSet ")) and isinstance(node, dict):  # IPFIX, v9
                for flow_key, flow in node.items():
                    if flow_key.startswith("Flow "):
                        flows.append({k: v if isinstance(v, list) else [v] for k, v in flow.items()})
    return flows


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_inner_header_and_tunnel_agree_with_tshark(capture: Path) -> None:
    """`flowenricher decode --format jsonl` on the capture, field by field against tshark."""
    flows = _tshark_flows(capture)
    assert len(flows) == sum(len(c.rows) for c in CASES)
    result = subprocess.run([FLOWENRICHER, "decode", str(capture), "--format", "jsonl"], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(rows) == len(flows)
    assert set(rows[0]) == set(NAMES)  # jsonl keys are the flow columns, tunnel ones included
    at = 0
    for case in CASES:
        for i in range(len(case.rows)):
            ours, theirs = rows[at], flows[at]
            at += 1
            for column, (tshark_field, occurrence) in case.expect.items():
                assert str(ours[column]) == theirs[tshark_field][occurrence], (case.name, i, column)
            for column, value in case.fixed.items():
                assert ours[column] == value, (case.name, i, column)
    # What this fixes, in numbers: GRE records used to carry protocol 47 (the tunnel's)
    # with the inner ports; now every record's protocol is the inner header's.
    gre = rows[: len(CASES[0].rows)]
    assert [r["proto"] for r in gre] == [6, 17, 6, 17, 6, 17, 6, 17]
    assert {r["tunnel_src_addr"] for r in gre} == {f"198.51.100.{i}" for i in range(1, 9)}


# ------------------------------------------- a real exporter's encapsulation templates
CISCO = Path(__file__).parent / "data" / "pcaps" / "pmacct-104-ipfix-ipv6-cisco-sampling-option.pcap"


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_cisco_asr9k_inner_header_templates_agree_with_tshark(tmp_path: Path) -> None:
    """The Cisco ASR 9000 capture defines templates 340 (an IPv6 header, then 8, 12, 7,
    11, 4, 6, 5: an IPv4 one) and 341 (IPv6 twice) but sends no data for them.  Data
    records for both, appended from the same exporter, decode to the second header with
    the first in the tunnel columns, value for value as tshark reads them."""
    real = list(read_udp(CISCO))
    decoder = FlowDecoder()
    decoder.decode([(d.payload, d.src, int(d.timestamp)) for d in real])
    exporter = real[0]
    templates: dict[int, list[tuple[int, int]]] = {}
    for tid in (340, 341):
        tmpl = decoder.netflow.templates.get((exporter.src, 0, tid))
        assert tmpl is not None, f"template {tid} is not in {CISCO.name}"
        templates[tid] = [(f.ie, f.length) for f in tmpl.fields]
    sets = []
    for tid, fields in templates.items():
        rows = []
        for n in range(1, 4):
            seen: dict[int, int] = {}
            values: list[int | str] = []
            for ie, _length in fields:
                depth = seen.get(ie, 0)
                seen[ie] = depth + 1
                by_ie: dict[int, int | str] = {
                    27: f"2001:db8:{depth}:{n}::1", 28: f"2001:db8:{depth}:{n}::2",
                    8: f"10.{tid - 340}.{n}.1", 12: f"10.{tid - 340}.{n}.2",
                    4: (41, 6 if n % 2 else 17)[depth], 7: (0, 50000 + n)[depth], 11: (0, 443 + n)[depth],
                    2: n, 1: 100 * n}
                values.append(by_ie.get(ie, 0))  # everything else, the BGP next hop (63) included: 0
            rows.append(record(fields, values))
        sets.append(ipfix_set(tid, b"".join(rows)))
    data = ipfix_message(sets, int(exporter.timestamp), seq=1000)
    path = tmp_path / "cisco-with-tunnel-data.pcap"
    write_pcap(path, [d.payload for d in real] + [data], src=exporter.src, src_port=exporter.src_port,
               dst=exporter.dst, dst_port=exporter.dst_port, timestamps=[d.timestamp for d in real] + [
                   real[-1].timestamp + 0.001])
    theirs = subprocess.run(["tshark", "-r", str(path), "-d", f"udp.port=={exporter.dst_port},cflow", "-T",
                             "json", "--no-duplicate-keys"], capture_output=True, check=True, timeout=60).stdout
    flows = [{k: v if isinstance(v, list) else [v] for k, v in flow.items()}
             for packet in json.loads(theirs)[len(real):]
             for key, node in packet["_source"]["layers"]["cflow"].items() if key.startswith("Set ")
             for name, flow in node.items() if name.startswith("Flow ")]
    decoder = FlowDecoder()
    ours = list(decoder.decode([(d.payload, d.src, int(d.timestamp)) for d in read_udp(path)]).rows())[-6:]
    assert len(flows) == 6 and not decoder.stats.total_dropped()
    inner_src = ["cflow.srcaddr"] * 3 + ["cflow.srcaddrv6"] * 3  # 340's inner header is IPv4
    inner_dst = ["cflow.dstaddr"] * 3 + ["cflow.dstaddrv6"] * 3
    for i, (got, flow) in enumerate(zip(ours, flows, strict=True)):
        assert got["src_addr"] == flow[inner_src[i]][-1] and got["dst_addr"] == flow[inner_dst[i]][-1]
        assert (got["tunnel_src_addr"], got["tunnel_dst_addr"]) == (flow["cflow.srcaddrv6"][0],
                                                                    flow["cflow.dstaddrv6"][0])
        assert [str(got["proto"]), str(got["src_port"]), str(got["dst_port"])] == [
            flow["cflow.protocol"][-1], flow["cflow.srcport"][-1], flow["cflow.dstport"][-1]]
        assert got["ip_version"] == (4 if i < 3 else 6)
    assert [r["proto"] for r in ours] == [6, 17, 6, 6, 17, 6]  # not 41, the tunnel's


# ------------------------------------------------------------- over every field order
HEADERS = ("outer", "inner")


@dataclass(frozen=True)
class Header:
    """One header's values, each recognisably its own (so any mix shows)."""

    src: str
    dst: str
    proto: int
    src_port: int
    dst_port: int


def _header(depth: int, v6: bool, n: int) -> Header:
    if v6:
        src, dst = f"2001:db8:{depth}::{n + 1:x}", f"2001:db8:{depth}:1::{n + 1:x}"
    else:
        src, dst = f"10.{depth}.{n}.1", f"10.{depth}.{n}.2"
    return Header(str(ipaddress.ip_address(src)), str(ipaddress.ip_address(dst)), (47, 6)[depth],
                  4789 + 1000 * depth + n, 80 + 1000 * depth + n)


ROLE_IES = {"src": (8, 27), "dst": (12, 28), "proto": (4, 4), "src_port": (7, 7), "dst_port": (11, 11)}


@st.composite
def encapsulated(draw: st.DrawFn) -> tuple[str, list[tuple[int, int]], list[list[int | str]], list[Header],
                                               list[Header]]:
    """A template with two headers' elements in any order, outer before inner for each
    column (RFC 7011 §8), plus per record the outer and inner header it was built from.

    Ports and the protocol may be reported for the inner header only (a GRE or IP-in-IP
    outer header has no ports); addresses always twice, each header IPv4 or IPv6."""
    protocol = draw(st.sampled_from(("ipfix", "v9")))
    v6 = (draw(st.booleans()), draw(st.booleans()))
    twice = {"src": True, "dst": True, "proto": draw(st.booleans()),
             "src_port": draw(st.booleans()), "dst_port": draw(st.booleans())}
    slots = [role for role, both in twice.items() for _ in range(2 if both else 1)] + ["packets", "bytes"]
    order = draw(st.permutations(slots))
    n_records = draw(st.integers(1, 5))
    outers = [_header(0, v6[0], i) for i in range(n_records)]
    inners = [_header(1, v6[1], i) for i in range(n_records)]
    fields: list[tuple[int, int]] = []
    columns: list[tuple[str, int]] = []  # (role, depth) per field
    seen: dict[str, int] = {}
    for role in order:
        if role in ("packets", "bytes"):
            fields.append((2, 4) if role == "packets" else (1, 8))
            columns.append((role, 1))
            continue
        depth = seen.get(role, 0) if twice[role] else 1  # a single occurrence is the inner header's
        seen[role] = depth + 1
        ie = ROLE_IES[role][1 if v6[depth] else 0]
        fields.append((ie, ADDRESS_IES.get(ie, 1 if role == "proto" else 2)))
        columns.append((role, depth))
    rows: list[list[int | str]] = []
    for i in range(n_records):
        values: list[int | str] = []
        for role, depth in columns:
            if role in ("packets", "bytes"):
                values.append(i + 1 if role == "packets" else 100 * (i + 1))
            else:
                values.append(getattr((outers, inners)[depth][i], role))
        rows.append(values)
    return protocol, fields, rows, outers, inners


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(encapsulated())
def test_addresses_ports_and_protocol_always_come_from_one_header(
        drawn: tuple[str, list[tuple[int, int]], list[list[int | str]], list[Header], list[Header]]) -> None:
    protocol, fields, rows, outers, inners = drawn
    decoder = FlowDecoder()
    payload = export(protocol, 400, fields, [record(fields, r) for r in rows], domain=7)
    batch = decoder.decode([(payload, "127.0.0.1", 0)])
    assert batch.n == len(rows) and not decoder.stats.total_dropped()
    for got, outer, inner in zip(batch.rows(), outers, inners, strict=True):
        flow = (got["src_addr"], got["dst_addr"], got["proto"], got["src_port"], got["dst_port"])
        assert flow == (inner.src, inner.dst, inner.proto, inner.src_port, inner.dst_port), fields
        assert (got["tunnel_src_addr"], got["tunnel_dst_addr"]) == (outer.src, outer.dst), fields
        assert got["ip_version"] == (6 if ":" in inner.src else 4)


# ------------------------------------------------------------------------ the store
def _decode_capture(path: Path) -> FlowBatch:
    decoder = FlowDecoder()
    batch = decoder.decode([(d.payload, d.src, int(d.timestamp)) for d in read_udp(path)])
    assert not decoder.stats.total_dropped()
    return batch


def test_tunnel_columns_round_trip_through_chdb(capture: Path, tmp_path: Path) -> None:
    batch = _decode_capture(capture)
    with migrated_store("embedded", tmp_path, ttl_days=0) as store:  # the capture's flows are from 2023
        store.insert(batch)
        text = store.query(
            "SELECT replaceRegexpOne(IPv6NumToString(tunnel_src_addr), '^::ffff:', ''),"
            " replaceRegexpOne(IPv6NumToString(tunnel_dst_addr), '^::ffff:', ''), src_host, proto, dst_port"
            " FROM flowenricher.flows", "TSV").decode()
    stored = {tuple(line.split("\t")) for line in text.splitlines()}
    expected = {(r["tunnel_src_addr"], r["tunnel_dst_addr"], r["src_addr"], str(r["proto"]), str(r["dst_port"]))
                for r in batch.rows()}
    assert len(stored) == batch.n == sum(len(c.rows) for c in CASES)
    assert stored == expected
    assert ("192.0.2.1", "192.0.2.101", "172.16.1.1", "6", "22") in stored  # a VXLAN record, inner ports


def test_migration_adds_tunnel_columns_to_an_older_table(tmp_path: Path, capture: Path) -> None:
    """An installation migrated before the tunnel columns existed gets them (migration 7),
    in place after the post-NAT columns; its old rows read them as ::."""
    settings = StoreSettings(path=str(tmp_path), ttl_days=0)
    store = EmbeddedStore.open(settings)
    try:
        store.migrate()
        for name in ("tunnel_src_addr", "tunnel_dst_addr"):
            store.query(f"ALTER TABLE flowenricher.flows DROP COLUMN {name}")
        store.query("ALTER TABLE flowenricher.schema_migrations DELETE WHERE version = 7 SETTINGS mutations_sync = 1")
        store.query("INSERT INTO flowenricher.flows (timestamp_start, received_at, src_addr)"  # an older collector's
                    " SELECT now(), now(), toIPv6('::ffff:10.0.0.1') FROM numbers(3)")
    finally:
        store.close()
    store = EmbeddedStore.open(settings)
    try:
        assert store.migrate() == [7]
        names = store.query("SELECT name FROM system.columns WHERE database = 'flowenricher' AND table = 'flows'"
                            " ORDER BY position", "TSV").decode().split()
        at = names.index("post_nat_dst_port")
        assert names[at + 1 : at + 3] == ["tunnel_src_addr", "tunnel_dst_addr"]
        store.insert(_decode_capture(capture))
        counts = store.query("SELECT countIf(tunnel_src_addr = toIPv6('::')), countIf(tunnel_src_addr != toIPv6('::'))"
                             " FROM flowenricher.flows", "TSV").decode().split()
        tunnelled = sum(len(c.rows) for c in CASES if "tunnel_src_addr" in c.expect)
        assert counts == [str(3 + len(CASES[-1].rows)), str(tunnelled)]
        assert store.migrate() == []
    finally:
        store.close()


def test_dual_stack_template_decides_per_record() -> None:
    """A template with both address forms once each: a record with one form set is a
    plain flow of that version (dual-stack templates), a record with both is a tunnel of
    one version carrying the other, its first form the outer header."""
    fields = [(8, 4), (12, 4), (27, 16), (28, 16), (4, 1), (7, 2), (11, 2)]
    records: list[list[int | str]] = [["10.0.0.1", "10.0.0.2", "::", "::", 6, 1234, 80],
               ["0.0.0.0", "0.0.0.0", "2001:db8::1", "2001:db8::2", 17, 5353, 53],
               ["198.51.100.7", "203.0.113.7", "2001:db8:7::1", "2001:db8:7::2", 6, 4000, 443]]
    payload = export("ipfix", 500, fields, [record(fields, r) for r in records], 1)
    rows = list(FlowDecoder().decode([(payload, "127.0.0.1", 0)]).rows())
    got = [(r["src_addr"], r["dst_addr"], r["ip_version"], r["tunnel_src_addr"], r["tunnel_dst_addr"]) for r in rows]
    assert got == [("10.0.0.1", "10.0.0.2", 4, "::", "::"),
                   ("2001:db8::1", "2001:db8::2", 6, "::", "::"),
                   ("2001:db8:7::1", "2001:db8:7::2", 6, "198.51.100.7", "203.0.113.7")]


def test_plain_template_fills_no_tunnel_column() -> None:
    fields = [(8, 4), (12, 4), (4, 1), (7, 2), (11, 2), (60, 1)]
    payload = export("v9", 501, fields, [record(fields, ["10.0.0.1", "10.0.0.2", 6, 1234, 80, 4])], 1)
    batch = FlowDecoder().decode([(payload, "127.0.0.1", 0)])
    assert "tunnel_src_addr" not in batch and "tunnel_dst_addr" not in batch  # nothing made per record
    row: dict[str, Any] = next(iter(batch.rows()))
    assert (row["src_addr"], row["dst_addr"], row["ip_version"], row["proto"]) == ("10.0.0.1", "10.0.0.2", 4, 6)
    assert (row["tunnel_src_addr"], row["tunnel_dst_addr"]) == ("::", "::")
