"""Exporter encoders: NetFlow v5, NetFlow v9, IPFIX and sFlow v5 datagrams from flow columns.

Each encoder lays the records of many packets out in one numpy structured array whose
big-endian dtype *is* the wire format (packet header, set header, records, padding), fills
it column by column, and slices `.tobytes()` per packet: the cost per record is numpy's,
and Python only runs once per packet.  Encoders keep the exporter's state (boot time,
sequence numbers, when templates were last sent) across calls, like a router does.

Formats, as a MikroTik RouterOS exporter sends them:
- NetFlow v5 (Cisco's documented v5 layout): 24-byte header, 48-byte IPv4 records, at
  most 30 per packet; first/last switched are uptime-relative.  IPv6 rows are skipped.
- NetFlow v9 (RFC 3954): template 256 for IPv4 and 257 for IPv6 (field lists below),
  templates in their own packet first and then every `template_refresh_packets` data
  packets or `template_refresh_s` seconds (RouterOS: v9-template-refresh=20,
  v9-template-timeout=30m); data flowsets padded to 4 bytes (RFC 3954 §5.3).
- IPFIX (RFC 7011): the same information elements (their IANA numbers are the v9 field
  types), times as flowStartSysUpTime(22)/flowEndSysUpTime(21) relative to
  systemInitTimeMilliseconds(160), announced as options data (template 258; the scope,
  observationDomainId, is this generator's choice) in every template packet.  The
  sequence number counts data records, options records included (RFC 7011 §3.1).
- sFlow v5 (sflow.org sflow_version_5.txt): one flow sample per flow row, carrying a raw
  Ethernet/IPv4|IPv6/TCP|UDP|ICMP header built from the row (frame length = the row's
  mean packet size + Ethernet header and FCS) and extended router data (next hop,
  masks).  A collector scales each sample by `sampling_rate`.
"""

from __future__ import annotations

import ipaddress
import struct
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from .flows import Flows

UPTIME_WRAP = 1 << 32

# (column, information element / v9 field type, length): the RouterOS-like templates.
_TIMES_COUNTERS_IFACES: tuple[tuple[str, int, int], ...] = (
    ("first", 22, 4), ("last", 21, 4), ("packets", 2, 4), ("bytes", 1, 4),
    ("input_interface", 10, 4), ("output_interface", 14, 4))
V4_TEMPLATE: tuple[tuple[str, int, int], ...] = (*_TIMES_COUNTERS_IFACES,
    ("next_hop", 15, 4), ("proto", 4, 1), ("tos", 5, 1), ("tcpflags", 6, 1),
    ("src_port", 7, 2), ("src_addr", 8, 4), ("src_mask", 9, 1),
    ("dst_port", 11, 2), ("dst_addr", 12, 4), ("dst_mask", 13, 1),
    ("post_nat_src_addr", 225, 4), ("post_nat_dst_addr", 226, 4),
    ("post_nat_src_port", 227, 2), ("post_nat_dst_port", 228, 2))
V6_TEMPLATE: tuple[tuple[str, int, int], ...] = (*_TIMES_COUNTERS_IFACES,
    ("next_hop", 62, 16), ("proto", 4, 1), ("tos", 5, 1), ("tcpflags", 6, 1),
    ("src_port", 7, 2), ("src_addr", 27, 16), ("src_mask", 29, 1),
    ("dst_port", 11, 2), ("dst_addr", 28, 16), ("dst_mask", 30, 1))
TEMPLATE_V4, TEMPLATE_V6, TEMPLATE_OPTIONS = 256, 257, 258
IE_OBSERVATION_DOMAIN_ID, IE_SYSTEM_INIT_MS = 149, 160

_SCALAR = {1: "u1", 2: ">u2", 4: ">u4", 8: ">u8"}


@dataclass(frozen=True)
class ExporterSettings:
    """How the simulated exporter behaves.

    `source_id` is the v9 source id, the IPFIX observation domain, the v5 engine
    type/id (high/low byte) and the sFlow sub-agent id.  `boot_ms` is when the exporter
    booted (unix ms), the origin of uptime-relative times; default: 3 days before the
    first packet.  `records_per_packet` defaults to 30 (v5/v9/IPFIX) and 8 samples for
    sFlow, which keeps an IPv6 sFlow datagram under a 1500-byte MTU.
    """

    source_id: int = 0
    boot_ms: int | None = None
    records_per_packet: int | None = None
    template_refresh_packets: int = 20
    template_refresh_s: float = 1800.0
    sampling_rate: int = 1024
    agent_address: str = "192.0.2.1"


def _record_dtype(fields: Sequence[tuple[str, int, int]]) -> np.dtype[np.void]:
    """The packed big-endian layout of a template's data record."""
    spec: list[tuple[Any, ...]] = []
    for name, _ie, length in fields:
        if name.endswith(("_addr", "next_hop")):
            spec.append((name, "u1", (length,)))
        else:
            spec.append((name, _SCALAR[length]))
    return np.dtype(spec)


def _frame(records: npt.NDArray[np.void], per_packet: int, header: np.dtype[np.void],
           align: int = 1) -> list[npt.NDArray[np.void]]:
    """Packets as structured arrays: header `h`, `per_packet` records `r`, zero padding.

    Full packets come first (one array), then the partial last one (a second array,
    its own dtype); `np.zeros` leaves headers and padding zero for callers to fill.
    """
    k = len(records)
    full, rem = divmod(k, per_packet)
    out: list[npt.NDArray[np.void]] = []
    start = 0
    for count, n_packets in ((per_packet, full), (rem, 1 if rem else 0)):
        if not n_packets:
            continue
        spec: list[tuple[Any, ...]] = [("h", header), ("r", records.dtype, (count,))]
        pad = -(header.itemsize + records.dtype.itemsize * count) % align
        if pad:
            spec.append(("pad", f"V{pad}"))
        arr = np.zeros(n_packets, dtype=np.dtype(spec))
        arr["r"] = records[start:start + n_packets * count].reshape(n_packets, count)
        start += n_packets * count
        out.append(arr)
    return out


def _counts(frames: Sequence[npt.NDArray[np.void]]) -> npt.NDArray[np.int64]:
    """Records per packet across frames, in packet order."""
    return np.concatenate([np.full(len(f), f.dtype["r"].shape[0], np.int64) for f in frames]) \
        if frames else np.zeros(0, np.int64)


def _set_headers(frames: Sequence[npt.NDArray[np.void]], **values: npt.NDArray[Any] | int) -> None:
    """Assign header fields of all packets of `frames` from per-packet arrays (or scalars)."""
    offset = 0
    for f in frames:
        n = len(f)
        h = f["h"]
        for name, v in values.items():
            h[name] = v if isinstance(v, int) else v[offset:offset + n]
        offset += n


def _to_bytes(frames: Sequence[npt.NDArray[np.void]]) -> list[bytes]:
    out: list[bytes] = []
    for f in frames:
        raw, size = f.tobytes(), f.dtype.itemsize
        out.extend(raw[i * size:(i + 1) * size] for i in range(len(f)))
    return out


def _uptime(ms: npt.NDArray[np.uint64] | int, boot_ms: int) -> npt.NDArray[np.int64]:
    return (np.asarray(ms, dtype=np.int64) - boot_ms) % UPTIME_WRAP


class FlowEncoder(ABC):
    """One exporter: turns flow batches into its datagrams and keeps its own state."""

    protocol: ClassVar[str]
    default_records_per_packet: ClassVar[int] = 30

    def __init__(self, settings: ExporterSettings | None = None) -> None:
        self.settings = settings or ExporterSettings()
        self.records_per_packet = self.settings.records_per_packet or self.default_records_per_packet
        if not 1 <= self.records_per_packet <= 1000:
            raise ValueError(f"records_per_packet {self.records_per_packet}: must be 1..1000")
        self.boot_ms = self.settings.boot_ms
        self.packets_sent = 0  # every packet produced, templates included
        self.records_sent = 0  # data records produced (flow records / samples)
        self.skipped = 0  # rows this format cannot carry (IPv6 in NetFlow v5)
        self.templates_sent = 0  # template packets (v9, IPFIX)
        # Data records in each packet of the last `encode` result (0 for template packets).
        self.last_record_counts: npt.NDArray[np.int64] = np.zeros(0, np.int64)

    def encode(self, flows: Flows, now_ms: int | None = None) -> list[bytes]:
        """Datagrams carrying `flows`, exported at `now_ms` (default: now), in send order."""
        if now_ms is None:
            now_ms = int(time.time() * 1000)
        if self.boot_ms is None:
            self.boot_ms = now_ms - 3 * 86_400_000
        packets, counts = self._encode(flows, now_ms)
        self.last_record_counts = counts
        self.packets_sent += len(packets)
        return packets

    @abstractmethod
    def _encode(self, flows: Flows, now_ms: int) -> tuple[list[bytes], npt.NDArray[np.int64]]:
        """The packets and the data records in each."""


class NetflowV5Encoder(FlowEncoder):
    """NetFlow v5: fixed IPv4 records, sequence = flows exported before this packet."""

    protocol = "v5"
    HEADER = np.dtype([("version", ">u2"), ("count", ">u2"), ("uptime", ">u4"), ("secs", ">u4"),
                       ("nsecs", ">u4"), ("seq", ">u4"), ("engine_type", "u1"), ("engine_id", "u1"),
                       ("sampling", ">u2")])
    RECORD = np.dtype([("src_addr", "u1", (4,)), ("dst_addr", "u1", (4,)), ("next_hop", "u1", (4,)),
                       ("input", ">u2"), ("output", ">u2"), ("packets", ">u4"), ("bytes", ">u4"),
                       ("first", ">u4"), ("last", ">u4"), ("src_port", ">u2"), ("dst_port", ">u2"),
                       ("pad1", "u1"), ("tcpflags", "u1"), ("proto", "u1"), ("tos", "u1"),
                       ("src_as", ">u2"), ("dst_as", ">u2"), ("src_mask", "u1"), ("dst_mask", "u1"),
                       ("pad2", ">u2")])

    def __init__(self, settings: ExporterSettings | None = None) -> None:
        super().__init__(settings)
        if self.records_per_packet > 30:
            raise ValueError("NetFlow v5 carries at most 30 records per packet")

    def _encode(self, flows: Flows, now_ms: int) -> tuple[list[bytes], npt.NDArray[np.int64]]:
        assert self.boot_ms is not None
        v4 = flows.take(~flows.is_v6)
        self.skipped += len(flows) - len(v4)
        k = len(v4)
        if not k:
            return [], np.zeros(0, np.int64)
        rec = np.zeros(k, self.RECORD)
        for name in ("src_addr", "dst_addr", "next_hop"):
            rec[name] = getattr(v4, name)[:, 12:]
        rec["input"] = v4.input_interface & 0xFFFF
        rec["output"] = v4.output_interface & 0xFFFF
        for name in ("packets", "bytes", "src_port", "dst_port", "tcpflags", "proto", "tos",
                     "src_mask", "dst_mask"):
            rec[name] = getattr(v4, name)
        rec["first"] = _uptime(v4.start_ms, self.boot_ms)
        rec["last"] = _uptime(v4.end_ms, self.boot_ms)
        frames = _frame(rec, self.records_per_packet, self.HEADER)
        counts = _counts(frames)
        seq = (self.records_sent + np.cumsum(counts) - counts) % UPTIME_WRAP
        sid = self.settings.source_id
        _set_headers(frames, version=5, count=counts, uptime=int(_uptime(now_ms, self.boot_ms)),
                     secs=now_ms // 1000, nsecs=(now_ms % 1000) * 1_000_000, seq=seq,
                     engine_type=(sid >> 8) & 0xFF, engine_id=sid & 0xFF)
        self.records_sent += k
        return _to_bytes(frames), counts


class _TemplateEncoder(FlowEncoder):
    """What NetFlow v9 and IPFIX share: two data templates, template packets inserted
    before the data packets where a refresh is due, one data set per packet."""

    HEADER: ClassVar[np.dtype[np.void]]
    PAD_TO: ClassVar[int]
    V4 = _record_dtype(V4_TEMPLATE)
    V6 = _record_dtype(V6_TEMPLATE)

    def __init__(self, settings: ExporterSettings | None = None) -> None:
        super().__init__(settings)
        self._since_template = 0
        self._last_template_ms: int | None = None

    def _records(self, flows: Flows, fields: Sequence[tuple[str, int, int]],
                 dtype: np.dtype[np.void], v6: bool) -> npt.NDArray[np.void]:
        assert self.boot_ms is not None
        rec = np.zeros(len(flows), dtype)
        for name, _ie, length in fields:
            if name == "first":
                rec[name] = _uptime(flows.start_ms, self.boot_ms)
            elif name == "last":
                rec[name] = _uptime(flows.end_ms, self.boot_ms)
            elif length in (4, 16) and name.endswith(("_addr", "next_hop")):
                rec[name] = getattr(flows, name)[:, 12:] if not v6 else getattr(flows, name)
            else:
                rec[name] = getattr(flows, name)
        return rec

    def _template_positions(self, n_data: int, now_ms: int) -> npt.NDArray[np.int64]:
        """Indexes of the data packets that get a template packet right before them."""
        s = self.settings
        if n_data == 0:
            return np.zeros(0, np.int64)
        due = (self._last_template_ms is None
               or now_ms - self._last_template_ms >= s.template_refresh_s * 1000
               or (s.template_refresh_packets > 0 and self._since_template >= s.template_refresh_packets))
        if s.template_refresh_packets <= 0:
            pos = np.zeros(1 if due else 0, np.int64)
        else:
            first = 0 if due else s.template_refresh_packets - self._since_template
            pos = np.arange(first, n_data, s.template_refresh_packets, dtype=np.int64)
        if len(pos):
            self._since_template = n_data - int(pos[-1])
            self._last_template_ms = now_ms
        else:
            self._since_template += n_data
        return pos

    def _encode(self, flows: Flows, now_ms: int) -> tuple[list[bytes], npt.NDArray[np.int64]]:
        frames: list[npt.NDArray[np.void]] = []
        set_ids: list[npt.NDArray[np.int64]] = []
        for v6, fields, dtype, tid in ((False, V4_TEMPLATE, self.V4, TEMPLATE_V4),
                                       (True, V6_TEMPLATE, self.V6, TEMPLATE_V6)):
            part = flows.take(flows.is_v6 == v6)
            if len(part):
                fr = _frame(self._records(part, fields, dtype, v6), self.records_per_packet, self.HEADER,
                            self.PAD_TO)
                frames.extend(fr)
                set_ids.append(np.full(sum(len(f) for f in fr), tid, np.int64))
        counts = _counts(frames)
        n_data = len(counts)
        if not n_data:
            return [], counts
        positions = self._template_positions(n_data, now_ms)
        tmpl_before = np.searchsorted(positions, np.arange(n_data), side="right")
        set_len = np.concatenate([np.full(len(f), f.dtype.itemsize - self._message_header_size(), np.int64)
                                  for f in frames])
        self._fill_headers(frames, counts, np.concatenate(set_ids), set_len, tmpl_before, now_ms)
        data = _to_bytes(frames)
        out: list[bytes] = []
        prev = 0
        rec_before = np.cumsum(counts) - counts
        for j in positions.tolist():
            out.extend(data[prev:j])
            out.append(self._template_packet(now_ms, j, int(rec_before[j]), int(tmpl_before[j]) - 1))
            prev = j
        out.extend(data[prev:])
        self._after(n_data, int(counts.sum()), len(positions))
        return out, np.insert(counts, positions, 0)

    @abstractmethod
    def _message_header_size(self) -> int: ...

    @abstractmethod
    def _fill_headers(self, frames: list[npt.NDArray[np.void]], counts: npt.NDArray[np.int64],
                      set_ids: npt.NDArray[np.int64], set_len: npt.NDArray[np.int64],
                      tmpl_before: npt.NDArray[np.int64], now_ms: int) -> None: ...

    @abstractmethod
    def _template_packet(self, now_ms: int, data_before: int, records_before: int,
                         templates_before: int) -> bytes:
        """The template packet sent before data packet `data_before` of this call."""

    @abstractmethod
    def _after(self, n_data: int, n_records: int, n_templates: int) -> None: ...


def _template_record(tid: int, fields: Sequence[tuple[str, int, int]]) -> bytes:
    body = b"".join(struct.pack("!HH", ie, length) for _n, ie, length in fields)
    return struct.pack("!HH", tid, len(fields)) + body


class NetflowV9Encoder(_TemplateEncoder):
    """NetFlow v9 (RFC 3954 §5): package_sequence counts every packet, templates included."""

    protocol = "v9"
    HEADER = np.dtype([("version", ">u2"), ("count", ">u2"), ("uptime", ">u4"), ("secs", ">u4"),
                       ("seq", ">u4"), ("source_id", ">u4"), ("set_id", ">u2"), ("set_len", ">u2")])
    PAD_TO = 4

    def __init__(self, settings: ExporterSettings | None = None) -> None:
        super().__init__(settings)
        self._packet_seq = 0
        body = _template_record(TEMPLATE_V4, V4_TEMPLATE) + _template_record(TEMPLATE_V6, V6_TEMPLATE)
        self._template_flowset = struct.pack("!HH", 0, 4 + len(body)) + body

    def _message_header_size(self) -> int:
        return 20

    def _fill_headers(self, frames: list[npt.NDArray[np.void]], counts: npt.NDArray[np.int64],
                      set_ids: npt.NDArray[np.int64], set_len: npt.NDArray[np.int64],
                      tmpl_before: npt.NDArray[np.int64], now_ms: int) -> None:
        assert self.boot_ms is not None
        seq = (self._packet_seq + np.arange(len(counts)) + tmpl_before) % UPTIME_WRAP
        _set_headers(frames, version=9, count=counts, uptime=int(_uptime(now_ms, self.boot_ms)),
                     secs=now_ms // 1000, seq=seq, source_id=self.settings.source_id,
                     set_id=set_ids, set_len=set_len)

    def _template_packet(self, now_ms: int, data_before: int, records_before: int,
                         templates_before: int) -> bytes:
        assert self.boot_ms is not None
        seq = (self._packet_seq + data_before + templates_before) % UPTIME_WRAP
        header = struct.pack("!HHIIII", 9, 2, int(_uptime(now_ms, self.boot_ms)), now_ms // 1000, seq,
                             self.settings.source_id)
        return header + self._template_flowset

    def _after(self, n_data: int, n_records: int, n_templates: int) -> None:
        self._packet_seq += n_data + n_templates
        self.records_sent += n_records
        self.templates_sent += n_templates


class IpfixEncoder(_TemplateEncoder):
    """IPFIX (RFC 7011 §3): sequence = data records before the message, options included."""

    protocol = "ipfix"
    HEADER = np.dtype([("version", ">u2"), ("length", ">u2"), ("export", ">u4"), ("seq", ">u4"),
                       ("domain", ">u4"), ("set_id", ">u2"), ("set_len", ">u2")])
    PAD_TO = 1  # RFC 7011 §3.3.1: padding is optional; none is sent

    def __init__(self, settings: ExporterSettings | None = None) -> None:
        super().__init__(settings)
        self._record_seq = 0
        body = _template_record(TEMPLATE_V4, V4_TEMPLATE) + _template_record(TEMPLATE_V6, V6_TEMPLATE)
        self._template_set = struct.pack("!HH", 2, 4 + len(body)) + body
        # Options template (RFC 7011 §3.4.2.2): id, field count, scope field count, fields.
        opt = struct.pack("!HHHHHHH", TEMPLATE_OPTIONS, 2, 1, IE_OBSERVATION_DOMAIN_ID, 4,
                          IE_SYSTEM_INIT_MS, 8)
        self._options_set = struct.pack("!HH", 3, 4 + len(opt)) + opt

    def _message_header_size(self) -> int:
        return 16

    def _fill_headers(self, frames: list[npt.NDArray[np.void]], counts: npt.NDArray[np.int64],
                      set_ids: npt.NDArray[np.int64], set_len: npt.NDArray[np.int64],
                      tmpl_before: npt.NDArray[np.int64], now_ms: int) -> None:
        seq = (self._record_seq + np.cumsum(counts) - counts + tmpl_before) % UPTIME_WRAP
        _set_headers(frames, version=10, length=set_len + 16, export=now_ms // 1000, seq=seq,
                     domain=self.settings.source_id, set_id=set_ids, set_len=set_len)

    def _template_packet(self, now_ms: int, data_before: int, records_before: int,
                         templates_before: int) -> bytes:
        assert self.boot_ms is not None
        seq = (self._record_seq + records_before + templates_before) % UPTIME_WRAP
        options_data = struct.pack("!HHIQ", TEMPLATE_OPTIONS, 16, self.settings.source_id, self.boot_ms)
        body = self._template_set + self._options_set + options_data
        header = struct.pack("!HHIII", 10, 16 + len(body), now_ms // 1000, seq, self.settings.source_id)
        return header + body

    def _after(self, n_data: int, n_records: int, n_templates: int) -> None:
        # Each template packet carries one options data record, which IPFIX counts.
        self._record_seq += n_records + n_templates
        self.records_sent += n_records
        self.templates_sent += n_templates


# ----------------------------------------------------------------------------- sFlow
_ETH_SRC = np.array([0x02, 0x4D, 0x54, 0x00, 0x00, 0x01], np.uint8)  # locally administered
_ETH_DST = np.array([0x02, 0x4D, 0x54, 0x00, 0x00, 0x02], np.uint8)


def _sflow_sample_dtype(v6: bool, tcp: bool) -> tuple[np.dtype[np.void], int]:
    """A flow sample (format 1) with a raw header record (1) and extended router data
    (1002), for one address family and L4 header size; returns it and the header length."""
    addr = 16 if v6 else 4
    ip: list[tuple[Any, ...]] = (
        [("ip6_vtf", ">u4"), ("ip_len", ">u2"), ("ip_proto", "u1"), ("ip_ttl", "u1")] if v6 else
        [("ip_vihl", "u1"), ("ip_tos", "u1"), ("ip_len", ">u2"), ("ip_id", ">u2"), ("ip_frag", ">u2"),
         ("ip_ttl", "u1"), ("ip_proto", "u1"), ("ip_csum", ">u2")])
    l4: list[tuple[Any, ...]] = (
        [("sport", ">u2"), ("dport", ">u2"), ("tcp_seq", ">u4"), ("tcp_ack", ">u4"), ("tcp_off", "u1"),
         ("tcp_flags", "u1"), ("tcp_win", ">u2"), ("l4_csum", ">u2"), ("tcp_urg", ">u2")] if tcp else
        [("sport", ">u2"), ("dport", ">u2"), ("l4_len", ">u2"), ("l4_csum", ">u2")])
    header_len = 14 + (40 if v6 else 20) + (20 if tcp else 8)
    pad = -header_len % 4
    spec: list[tuple[Any, ...]] = [
        ("fmt", ">u4"), ("slen", ">u4"), ("seq", ">u4"), ("source_id", ">u4"), ("rate", ">u4"),
        ("pool", ">u4"), ("drops", ">u4"), ("input", ">u4"), ("output", ">u4"), ("nrec", ">u4"),
        ("r1_fmt", ">u4"), ("r1_len", ">u4"), ("hproto", ">u4"), ("frame_len", ">u4"),
        ("stripped", ">u4"), ("hlen", ">u4"),
        ("eth_dst", "u1", (6,)), ("eth_src", "u1", (6,)), ("ethertype", ">u2"),
        *ip, ("ip_src", "u1", (addr,)), ("ip_dst", "u1", (addr,)), *l4]
    if pad:
        spec.append(("hpad", f"V{pad}"))
    spec += [("r2_fmt", ">u4"), ("r2_len", ">u4"), ("nh_type", ">u4"), ("nh", "u1", (addr,)),
             ("src_mask", ">u4"), ("dst_mask", ">u4")]
    return np.dtype(spec), header_len


def _offset(dtype: np.dtype[np.void], name: str) -> int:
    """Byte offset of field `name` in a structured dtype."""
    assert dtype.fields is not None
    offset: int = dtype.fields[name][1]
    return offset


class SflowEncoder(FlowEncoder):
    """sFlow v5 agent: one flow sample per row, grouped by header layout into datagrams."""

    protocol = "sflow"
    default_records_per_packet = 8

    def __init__(self, settings: ExporterSettings | None = None) -> None:
        super().__init__(settings)
        agent = ipaddress.ip_address(self.settings.agent_address)
        self._agent = np.frombuffer(agent.packed, np.uint8)
        self.HEADER = np.dtype([("version", ">u4"), ("agent_type", ">u4"),
                                ("agent", "u1", (len(agent.packed),)), ("sub_agent", ">u4"),
                                ("seq", ">u4"), ("uptime", ">u4"), ("nsamples", ">u4")])
        self._agent_type = 1 if agent.version == 4 else 2
        self._datagram_seq = 0
        self._sample_seq: dict[int, int] = {}

    def _sequence(self, source_ids: npt.NDArray[np.uint32]) -> npt.NDArray[np.int64]:
        """Per-source sample sequence numbers (sFlow counts samples per data source)."""
        uniq, inv = np.unique(source_ids, return_inverse=True)
        counts = np.bincount(inv)
        order = np.argsort(inv, kind="stable")
        rank = np.empty(len(inv), np.int64)
        rank[order] = np.arange(len(inv)) - np.repeat(np.cumsum(counts) - counts, counts)
        base = np.array([self._sample_seq.get(int(u), 0) for u in uniq], np.int64)
        for u, b, c in zip(uniq.tolist(), base.tolist(), counts.tolist(), strict=True):
            self._sample_seq[u] = b + c
        return (base[inv] + rank + 1) % UPTIME_WRAP

    def _samples(self, f: Flows, v6: bool, tcp: bool) -> npt.NDArray[np.void]:
        dtype, header_len = _sflow_sample_dtype(v6, tcp)
        k, rate = len(f), self.settings.sampling_rate
        s = np.zeros(k, dtype)
        s["fmt"], s["slen"] = 1, dtype.itemsize - 8
        s["source_id"] = f.input_interface & 0xFFFFFF
        seq = self._sequence(s["source_id"].astype(np.uint32))
        s["seq"], s["rate"], s["pool"] = seq, rate, (seq * rate) % UPTIME_WRAP
        s["input"], s["output"], s["nrec"] = f.input_interface, f.output_interface, 2
        s["r1_fmt"], s["r1_len"] = 1, _offset(dtype, "r2_fmt") - _offset(dtype, "hproto")
        s["hproto"], s["stripped"], s["hlen"] = 1, 4, header_len  # 1: Ethernet (ISO 8802-3)
        ip_hdr, l4_hdr = (40 if v6 else 20), (20 if tcp else 8)
        mean = f.bytes // np.maximum(f.packets, 1)
        ip_len = np.clip(mean, ip_hdr + l4_hdr, 1500).astype(np.int64)
        s["frame_len"] = ip_len + 18  # Ethernet header and FCS (stripped: 4)
        s["eth_dst"], s["eth_src"] = _ETH_DST, _ETH_SRC
        s["ethertype"] = 0x86DD if v6 else 0x0800
        addr = slice(None) if v6 else slice(12, None)
        s["ip_src"], s["ip_dst"] = f.src_addr[:, addr], f.dst_addr[:, addr]
        s["ip_proto"], s["ip_ttl"] = f.proto, 60
        if v6:
            s["ip6_vtf"] = (6 << 28) | (f.tos.astype(np.uint32) << 20)
            s["ip_len"] = ip_len - 40
        else:
            s["ip_vihl"], s["ip_tos"], s["ip_len"], s["ip_frag"] = 0x45, f.tos, ip_len, 0x4000
            s["ip_id"] = (seq * 7919) & 0xFFFF
            raw = s.view(np.uint8).reshape(k, dtype.itemsize)
            off = _offset(dtype, "ip_vihl")
            words = raw[:, off:off + 20].astype(np.uint32).reshape(k, 10, 2)
            total = (words[:, :, 0] << 8 | words[:, :, 1]).sum(axis=1)
            total = (total & 0xFFFF) + (total >> 16)
            total = (total & 0xFFFF) + (total >> 16)
            s["ip_csum"] = ~total & 0xFFFF  # RFC 791 header checksum
        icmp = (f.proto == 1) | (f.proto == 58)
        s["sport"] = np.where(icmp, f.dst_port, f.src_port)  # ICMP: type, code
        s["dport"] = np.where(icmp, 0, f.dst_port)
        if tcp:
            s["tcp_seq"] = (seq * 2654435761) & 0xFFFFFFFF
            s["tcp_off"], s["tcp_flags"], s["tcp_win"] = 0x50, f.tcpflags, 64240
        else:
            s["l4_len"] = np.where(icmp, 0, ip_len - ip_hdr)
        s["r2_fmt"], s["r2_len"] = 1002, 4 + (16 if v6 else 4) + 8
        s["nh_type"] = 2 if v6 else 1
        s["nh"] = f.next_hop[:, addr]
        s["src_mask"], s["dst_mask"] = f.src_mask, f.dst_mask
        return s

    def _encode(self, flows: Flows, now_ms: int) -> tuple[list[bytes], npt.NDArray[np.int64]]:
        assert self.boot_ms is not None
        frames: list[npt.NDArray[np.void]] = []
        tcp_rows = flows.proto == 6
        for v6 in (False, True):
            for tcp in (True, False):
                part = flows.take((flows.is_v6 == v6) & (tcp_rows == tcp))
                if len(part):
                    frames.extend(_frame(self._samples(part, v6, tcp), self.records_per_packet, self.HEADER))
        counts = _counts(frames)
        if not len(counts):
            return [], counts
        seq = (self._datagram_seq + np.arange(len(counts)) + 1) % UPTIME_WRAP
        _set_headers(frames, version=5, agent_type=self._agent_type, sub_agent=self.settings.source_id,
                     seq=seq, uptime=int(_uptime(now_ms, self.boot_ms)), nsamples=counts)
        for f in frames:
            f["h"]["agent"] = self._agent
        self._datagram_seq += len(counts)
        self.records_sent += int(counts.sum())
        return _to_bytes(frames), counts


ENCODERS: dict[str, Callable[[ExporterSettings | None], FlowEncoder]] = {
    "v5": NetflowV5Encoder, "v9": NetflowV9Encoder, "ipfix": IpfixEncoder, "sflow": SflowEncoder,
}
PROTOCOLS = tuple(ENCODERS)


def make_encoder(protocol: str, settings: ExporterSettings | None = None) -> FlowEncoder:
    """The encoder for `protocol` (v5, v9, ipfix or sflow)."""
    try:
        return ENCODERS[protocol](settings)
    except KeyError:
        raise ValueError(f"unknown export protocol {protocol!r}; known: {', '.join(PROTOCOLS)}") from None


def build_packets(protocol: str, n_flows: int, records_per_packet: int | None = 30, seed: int = 1,
                  scenario: str = "normal", now_ms: int | None = None,
                  settings: ExporterSettings | None = None) -> list[bytes]:
    """`n_flows` flows of the default profile as ready datagrams, templates first.

    For benchmarks and tests: the same seed gives the same packets (given `now_ms`).
    Template refresh is off, so the list is one template packet (v9/IPFIX) then data.
    `records_per_packet=None` takes the protocol's default (8 samples for sFlow).
    """
    from .traffic import TrafficGenerator

    if now_ms is None:
        now_ms = int(time.time() * 1000)
    settings = replace(settings or ExporterSettings(), records_per_packet=records_per_packet,
                       template_refresh_packets=0, template_refresh_s=float("inf"))
    flows = TrafficGenerator(scenario=scenario, seed=seed).batch(n_flows, now_ms - 1000, 1000)
    return make_encoder(protocol, settings).encode(flows, now_ms)
